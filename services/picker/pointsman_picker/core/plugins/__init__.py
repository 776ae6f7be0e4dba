"""The built-in plugins, one small module per concern; :mod:`..registry` names them."""
