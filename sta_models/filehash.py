"""SHA-256 of a file, read in chunks: source videos (extraction's reuse check) and artefact rows.

Torch-free and import-light, so the worker's parent process and the dashboard can use it too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["sha256_file"]
