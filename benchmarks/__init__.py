"""Benchmarks: throughput.py, time_to_accuracy.py and report.py, with shared helpers in common.py.

The scripts run from the repository root (``python benchmarks/throughput.py``); this package is not
installed, so each script puts the repository root on sys.path itself.
"""
