"""Reading TOFU splits from a folder of JSON Lines files, or from the Hugging Face hub.

A split named ``forget10`` is the file ``<data_dir>/forget10.jsonl``, one JSON object per line,
with the same fields as the hub config of that name (``locuslab/TOFU``). Every row is checked for
the fields its split needs, and an error names the file, the line and the field.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOFU_HUB_ID = "locuslab/TOFU"
DATA_DIR_ENV = "EUA_TOFU_DIR"

# Fields every row of a split must have, by split-name prefix (longest prefix wins).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "": ("question", "answer"),
    "idontknow": ("text",),
    "forget01_perturbed": ("question", "answer", "paraphrased_answer", "perturbed_answer"),
    "forget05_perturbed": ("question", "answer", "paraphrased_answer", "perturbed_answer"),
    "forget10_perturbed": ("question", "answer", "paraphrased_answer", "perturbed_answer"),
    "retain_perturbed": ("question", "answer", "paraphrased_answer", "perturbed_answer"),
    "real_authors_perturbed": ("question", "answer", "perturbed_answer"),
    "world_facts_perturbed": ("question", "answer", "perturbed_answer"),
}


class DataError(ValueError):
    """Invalid or missing TOFU data, with the file and line in the message."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """Return ``data_dir``, else ``$EUA_TOFU_DIR``, else None (load from the hub)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV)
    if chosen in (None, ""):
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(
            f"TOFU data folder {str(path)!r} does not exist; pass data_dir (or set {DATA_DIR_ENV}) "
            f"to a folder of <split>.jsonl files, or leave both unset to load {TOFU_HUB_ID} from the hub"
        )
    return path


def load_split(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Load the TOFU split ``name`` as a list of row dicts, checked for its required fields."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        rows = _load_from_hub(name)
        source = f"{TOFU_HUB_ID}:{name}"
        for index, row in enumerate(rows):
            _check_row(row, name, source, index + 1)
    else:
        rows = read_jsonl(folder / f"{name}.jsonl", split=name)

    if not rows:
        raise DataError(f"split {name!r} is empty ({folder or TOFU_HUB_ID}); an unlearning run needs at least one row")
    return rows


def read_jsonl(path: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Read and check a JSON Lines file; ``split`` selects which fields are required."""
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.jsonl")) if path.parent.is_dir() else []
        raise DataError(
            f"split file {str(path)!r} not found; "
            f"files in that folder: {', '.join(available) or 'none'}"
        )

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not valid UTF-8 at byte {error.start}; re-save the file as UTF-8"
        ) from error

    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{line_number}: invalid JSON at column {error.colno} ({error.msg}); "
                f"each line must be one JSON object"
            ) from error
        if not isinstance(row, dict):
            raise DataError(
                f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}; "
                "each line must be one object with the split's fields"
            )
        _check_row(row, split, str(path), line_number)
        rows.append(row)
    return rows


def _required_fields(split: str | None) -> tuple[str, ...]:
    if split is None:
        return ()
    prefix = max((p for p in REQUIRED_FIELDS if split.startswith(p)), key=len)
    return REQUIRED_FIELDS[prefix]


def _check_row(row: dict[str, Any], split: str | None, source: str, line_number: int) -> None:
    for field in _required_fields(split):
        value = row.get(field)
        if value is None:
            raise DataError(
                f"{source}:{line_number}: missing field {field!r} "
                f"(split {split!r} needs {', '.join(_required_fields(split))})"
            )
        if field == "perturbed_answer":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise DataError(
                    f"{source}:{line_number}: field 'perturbed_answer' must be a non-empty list of strings, "
                    f"got {value!r:.80}"
                )
        elif not isinstance(value, str) or not value.strip():
            raise DataError(
                f"{source}:{line_number}: field {field!r} must be a non-empty string, got {value!r:.80}; "
                "fill it in or remove the row"
            )


def _load_from_hub(name: str) -> list[dict[str, Any]]:
    if name == "idontknow":
        raise DataError(
            "the 'idontknow' refusal answers are not a hub config of locuslab/TOFU; "
            "set data_dir to a folder with idontknow.jsonl (one {\"text\": ...} object per line)"
        )
    from datasets import load_dataset

    log.info("Loading TOFU split %r from the hub (%s)", name, TOFU_HUB_ID)
    return [dict(row) for row in load_dataset(TOFU_HUB_ID, name, split="train")]


def split_percentage(forget_split: str) -> int:
    """Return the percentage in a forget split name: ``forget05`` gives 5."""
    digits = forget_split.removeprefix("forget")
    if not forget_split.startswith("forget") or not digits.isdigit():
        raise DataError(f"forget split must be named forgetNN (forget01, forget05, forget10), got {forget_split!r}")
    return int(digits)


def retain_split_for(forget_split: str) -> str:
    """Return the retain split that complements ``forget_split``: forget05 gives retain95."""
    return f"retain{100 - split_percentage(forget_split):02d}"


def holdout_split_for(forget_split: str) -> str:
    """Return the holdout split as large as ``forget_split``: forget05 gives holdout05."""
    return f"holdout{split_percentage(forget_split):02d}"
