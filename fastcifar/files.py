"""Files: their digests, and writing them so that a crash or a kill never leaves half of one behind."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Temporary file in the same folder, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
