"""Results files: one JSON document per evaluation run, written atomically.

Layout::

    {"meta": {...}, "aggregate": {"forget/probability": ..., "forget_quality": ..., ...},
     "per_item": {"forget": {"index": [...], "truth_ratio": [...], ...}, ...}}

A file is written to a temporary name in the same folder and renamed, so a crash never leaves half
a file, and an existing file is replaced only when the caller allows it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


class ResultsError(ValueError):
    """A results file that is missing, unreadable or lacks what is needed."""


def _clean(value: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value


def write_json_atomic(path: str | os.PathLike[str], document: Any, overwrite: bool = False) -> Path:
    """Write ``document`` as JSON to ``path`` through a temporary file and a rename."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (or --model.overwrite_results true) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(_clean(document), stream, indent=1, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    source = Path(path)
    if not source.is_file():
        raise ResultsError(f"results file {source} not found; run `eua test` on that model first")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ResultsError(f"{source}:{error.lineno}: invalid JSON ({error.msg})") from error


def forget_truth_ratios(path: str | os.PathLike[str]) -> list[float]:
    """Per-item forget truth ratios of a results file (the retain model's, for forget quality)."""
    document = read_results(path)
    try:
        ratios = document["per_item"]["forget"]["truth_ratio"]
    except (KeyError, TypeError) as error:
        raise ResultsError(
            f"{path} has no per_item.forget.truth_ratio; evaluate the retain model on the forget set first"
        ) from error
    return [float(value) for value in ratios if value is not None]
