"""Pure decisions of the shim: parsing, rewriting, usage accounting. No I/O here."""
