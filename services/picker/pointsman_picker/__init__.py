"""Pointsman's endpoint picker: chooses which engine replica of a pool serves each request.

Layout: ``app`` wires NATS, Redis and HTTP; ``handlers`` decode bus messages and call the
``scheduler``, which holds the in-memory state and runs the pure ``core`` for each pick.
"""

__all__: list[str] = []
