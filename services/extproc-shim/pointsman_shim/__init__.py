"""extproc-shim: the thin Envoy ext_proc adapter of Pointsman.

It parses the OpenAI body once, asks the classifier and the picker over NATS, and turns their
decisions into ext_proc header and body mutations, dynamic metadata or immediate responses. It
holds no routing logic and no model: everything it decides on its own is in :mod:`.core`.
"""
