"""Chaos: single faults under a steady load through Envoy (``python -m bench.chaos``)."""
