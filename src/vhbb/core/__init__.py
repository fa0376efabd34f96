"""Base layer: errors, atomic I/O, logging, provenance, the shared check record."""
