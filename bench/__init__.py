"""Benchmarks of pith-mirror. Run each module with ``python -m bench.<name>``."""
