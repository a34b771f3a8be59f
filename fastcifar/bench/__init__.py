"""The benchmark scripts and their shared helpers (common.py), installed with the project."""
