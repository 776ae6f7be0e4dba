"""API dialects: one module per HTTP API the shim routes, behind one interface.

:mod:`.base` is the interface (:class:`~.base.Dialect`) and the values it speaks in;
:mod:`.registry` maps request paths to dialects. OpenAI chat completions (:mod:`.openai_chat`)
and completions (:mod:`.openai_completions`) share :mod:`.openai` and its response readers
(:mod:`.openai_usage`, :mod:`.openai_fill`). A new API is one module and one registry line.
"""
