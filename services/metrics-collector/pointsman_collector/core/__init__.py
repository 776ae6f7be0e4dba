"""The collector's pure core: parsing, engine readings, snapshots and shard assignment.

Nothing here does I/O or reads a clock; adapters pass times and texts in.
"""
