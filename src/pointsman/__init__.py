"""Pointsman: a semantic router and endpoint picker for LLM inference fleets.

This distribution holds the shared contracts (:mod:`pointsman.v1`), the ``pointsman`` CLI and the
vLLM simulator. The services live in their own packages (``pointsman_shim``, ``pointsman_picker``,
``pointsman_collector``, ``pointsman_classifier``) and share nothing but the contracts.
"""

__version__ = "0.1.0"
