"""Reading the bundle's weight files, with an error that tells a corrupt file from a mismatched one.

Every file the bundle writes is written atomically (``files.py``), so a half-written checkpoint
only appears when something outside the bundle cuts it short: a full disk under another program,
a copy interrupted half-way, a file damaged in transfer. ``torch.load`` then fails deep inside its
unpickler with a message that names neither the file nor the fix. ``load_checkpoint`` names both,
and raises ``CheckpointError`` (a ``ValueError``, which the command line reports in one line with
exit status 2), so the cause is not mistaken for "does not fit the configured network".

Example::

    >>> state = load_checkpoint("runs/x/models/ndm_member0.pt")
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

# What a cut-short or overwritten torch file raises, depending on where the damage is.
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError)


class CheckpointError(ValueError):
    """A weight or checkpoint file is missing, cut short or corrupt."""

    def __init__(self, path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{self.path}: {problem}")


def first_line(error: BaseException) -> str:
    """The first line of an error message (torch's are often pages long)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_checkpoint(path, map_location="cpu", weights_only: bool = True):
    """``torch.load`` of ``path``; a missing or unreadable file raises ``CheckpointError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except _UNREADABLE as error:
        raise CheckpointError(
            path,
            f"unreadable ({path.stat().st_size} bytes): the file is cut short or corrupt "
            f"({first_line(error)}); restore it or retrain",
        ) from error
