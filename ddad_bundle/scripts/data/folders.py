"""A split file from a plain folder tree, for users with their own images.

Expected layout under ``root`` (any supported format, searched recursively in each folder)::

    normal/           known-normal images (D_n); a seeded 10% is held out for validation
    unlabeled/        optional: images of unknown status (D_u); without it only R_intra and the
                      one-class scores are available
    test/normal/      labeled test images
    test/abnormal/
    test/masks/       optional: lesion masks named like the abnormal test images

Example::

    >>> split_from_folders("/data/my_cxr", "runs/my_cxr/split.json")
"""

from __future__ import annotations

from pathlib import Path

from .splits import FORMAT, SplitError, save_split
from .readers import SUPPORTED_EXTENSIONS

FOLDERS = {"normal": "normal", "unlabeled": "unlabeled", "test_normal": "test/normal", "test_abnormal": "test/abnormal"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(tuple(SUPPORTED_EXTENSIONS)))


def _required(root: Path, key: str) -> list[Path]:
    folder = root / FOLDERS[key]
    if not folder.is_dir():
        raise SplitError(
            f"{root}: the folder {FOLDERS[key]}/ is missing (expected: normal/, test/normal/, "
            f"test/abnormal/, optionally unlabeled/)"
        )
    images = _images(folder)
    if not images:
        raise SplitError(f"{folder}: no images found (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})")
    return images


def _mask_for(image: Path, masks: Path) -> str | None:
    stem = image.name.split(".")[0]
    found = [p for p in _images(masks) if p.name.split(".")[0] == stem] if masks.is_dir() else []
    return str(found[0]) if found else None


def split_from_folders(root, split_path) -> str:
    """Write a ``ddad-split/1`` file for the folder tree at ``root``; returns its path."""
    root = Path(root)
    if not root.is_dir():
        raise SplitError(f"{root}: not a folder (config key 'data_dir')")
    normal = _required(root, "normal")
    unlabeled = _images(root / FOLDERS["unlabeled"]) if (root / FOLDERS["unlabeled"]).is_dir() else []
    test = [(p, 0) for p in _required(root, "test_normal")] + [(p, 1) for p in _required(root, "test_abnormal")]
    masks = root / "test" / "masks"
    test_entries = []
    for path, label in test:
        entry = {"image": str(path), "label": label}
        mask = _mask_for(path, masks) if label == 1 else None
        if mask:
            entry["mask"] = mask
        test_entries.append(entry)
    split = {
        "format": FORMAT,
        "description": f"made by scripts.data.folders from {root}",
        "normal": [{"image": str(p)} for p in normal],
        "unlabeled": [{"image": str(p)} for p in unlabeled],
        "test": test_entries,
    }
    return str(save_split(split, split_path))
