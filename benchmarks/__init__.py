"""The benchmark scripts (throughput, time to accuracy, the paper reproduction, weight export, the
report) and their few shared helpers (common.py). Installed with the project, so the scripts and the
tests import them without path edits."""
