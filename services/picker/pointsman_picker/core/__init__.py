"""The scheduling core: pure decisions over plain data, no I/O, no clocks, no global state."""
