"""Strict JSON for records and reports, written atomically.

NaN and infinity (a diverged loss, an undefined metric) become ``null``: PostgreSQL's ``json`` type,
browsers' ``JSON.parse`` and other strict readers reject them. Torch-free, so the Celery parent
process can use it too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite_json(obj: Any) -> Any:
    """NaN/inf → None and keys → str, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)
