"""Pure decisions of the shim: the routing policy and the API dialects. No I/O here."""
