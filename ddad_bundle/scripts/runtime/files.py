"""Atomic file writes: every file the bundle writes appears whole or not at all.

Each writer fills a temporary file in the target's folder and renames it over the target
(``os.replace`` is atomic on one file system), so an interrupted run never leaves a half-written
checkpoint, split file or report that a later run would trust.

Example::

    >>> write_json_atomic({"auc": 0.9}, "runs/x/metrics.json")
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence


@contextmanager
def atomic_target(path) -> Iterator[Path]:
    """A temporary path to write; renamed to ``path`` when the block succeeds, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(obj, path, indent: int = 2, default=None) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=default) + "\n")


def write_csv_atomic(
    rows: Sequence[dict], path, fields: Sequence[str] | None = None, extrasaction: str = "raise"
) -> Path:
    """Rows as CSV; the columns are ``fields`` or the first row's keys."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fields or rows[0].keys()), extrasaction=extrasaction)
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def torch_save_atomic(obj, path) -> Path:
    import torch

    with atomic_target(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
