"""What a split holds, checked before any training: counts, the D_u anomaly rate, pixel duplicates.

A split file can look right and still be wrong for an experiment: the Brain Tumor reference
split, for example, lists test images whose pixels are identical to training images, so the
test set partly measures memorisation. :func:`audit_split` decodes every image of a
:class:`~scripts.data.splits.Split`, hashes the decoded pixels (not the file bytes: the same
pixels saved twice, or under two names, are the same image), and reports

- the counts per set (D_n, validation, D_u, test normal / abnormal) and the anomaly rate of D_u
  the run will actually train with;
- groups of pixel-identical images that sit in different sets, counted per pair of sets and
  with the first few file names, and how many identical images repeat within one set.

With ``drop_duplicates=True`` every image of such a group is kept only in the earliest set in
the order ``normal``, ``validation``, ``unlabeled``, ``test`` and removed from the later ones (a
test image identical to a training image leaves the test set; a D_u image identical to a D_n
image leaves D_u), and the counts are reported again.

The report goes to the ``ddad`` logger and to ``<report_dir>/split_report.json``; the hashes are
cached in ``<report_dir>/pixel_hashes.json`` (keyed by path, size and modification time), so the
three workflows of one run decode each image once.

Example::

    split = load_split("data/split.json")
    split, report = audit_split(split, report_dir="runs/x", drop_duplicates=True)
    report["duplicates"]["across_sets"]      # {'normal/test': 3, ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from ..runtime.files import write_json_atomic
from .readers import read_image_array
from .splits import SETS, Split, SplitError

LOG = logging.getLogger("ddad.split")
MAX_NAMES = 5  # file names quoted per pair of sets
HASH_CACHE = "pixel_hashes.json"
REPORT_FILE = "split_report.json"
MIN_VALIDATION = 2  # held-out normals: below two, selection compares one image with its own copy


def pixel_hash(path) -> str:
    """Hash of the decoded pixels (and their shape), independent of file format and name."""
    array, _ = read_image_array(path)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def pixel_hashes(paths: list[str], cache_file=None, workers: int = 2) -> dict[str, str]:
    """``{path: pixel hash}``, reusing ``cache_file`` entries whose size and mtime still match."""
    cache = _read_cache(cache_file)
    out, todo = {}, []
    for path in dict.fromkeys(paths):
        stat = os.stat(path)
        hit = cache.get(path)
        if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            out[path] = hit[2]
        else:
            todo.append((path, stat))
    # decoding is mostly in C (PIL, zlib), so threads overlap usefully
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (path, stat), digest in zip(todo, pool.map(lambda item: pixel_hash(item[0]), todo)):
            out[path] = digest
            cache[path] = [stat.st_size, stat.st_mtime_ns, digest]
    if cache_file is not None and todo:
        write_json_atomic(cache, cache_file, indent=None)
    return out


def _read_cache(cache_file) -> dict:
    if cache_file is None or not os.path.isfile(cache_file):
        return {}
    try:
        with open(cache_file, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):  # a damaged cache is only a cache: hash again
        return {}


def duplicate_groups(split: Split, hashes: dict[str, str]) -> list[list[tuple[str, dict]]]:
    """Groups of (set name, entry) with identical pixels, two or more entries each, in set order."""
    groups: dict[str, list] = {}
    for name in SETS:
        for entry in getattr(split, name):
            groups.setdefault(hashes[entry["image"]], []).append((name, entry))
    return [members for members in groups.values() if len(members) > 1]


def drop_duplicates(split: Split, groups) -> tuple[Split, list[dict]]:
    """The split without the later-set copies of each group; returns (split, dropped entries)."""
    drop = set()
    for members in groups:
        first = members[0][0]  # members are in SETS order, so this is the earliest set
        drop.update(id(entry) for name, entry in members if name != first)
    kept = {name: [e for e in getattr(split, name) if id(e) not in drop] for name in SETS}
    removed = [dict(e, set=name) for name in SETS for e in getattr(split, name) if id(e) in drop]
    for name in ("normal", "test"):
        if not kept[name]:
            raise ValueError(f"{split.source}: dropping duplicates would empty {name!r}; fix the split instead")
    return replace(split, **kept), removed


def summarize(split: Split, groups) -> dict:
    """Counts, the D_u anomaly rate and the duplicate statistics, as a JSON-ready dict."""
    across, names, within = {}, {}, 0
    for members in groups:
        sets = list(dict.fromkeys(name for name, _ in members))
        first = {}  # the first file name of the group in each set
        for name, entry in members:
            first.setdefault(name, os.path.basename(entry["image"]))
        within += len(members) - len(sets)
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                pair = f"{a}/{b}"
                across[pair] = across.get(pair, 0) + 1
                if len(names.setdefault(pair, [])) < MAX_NAMES:
                    names[pair].append(f"{first[a]} = {first[b]}")
    rate = split.anomaly_rate()
    return {
        "source": split.source,
        "counts": split.counts(),
        "unlabeled_anomaly_rate": None if rate is None else round(rate, 6),
        "duplicates": {"across_sets": across, "examples": names, "within_sets": within, "groups": len(groups)},
    }


def format_report(report: dict) -> list[str]:
    """The report as log lines, one fact per line."""
    c = report["counts"]
    lines = [
        f"split {report['source']}",
        f"  D_n {c['normal']}, validation {c['validation']}, D_u {c['unlabeled']}, "
        f"test {c['test']} ({c['test_normal']} normal + {c['test_abnormal']} abnormal)",
    ]
    rate = report["unlabeled_anomaly_rate"]
    if c["unlabeled"]:
        lines.append(f"  D_u anomaly rate used: {'unknown (unlabeled entries)' if rate is None else rate}")
    dup = report["duplicates"]
    for pair, n in dup["across_sets"].items():
        lines.append(
            f"  WARNING {n} pixel-identical image(s) in both {pair.replace('/', ' and ')}, e.g. "
            + "; ".join(dup["examples"][pair])
        )
    if dup["within_sets"]:
        lines.append(f"  {dup['within_sets']} image(s) repeat the pixels of another image of the same set")
    return lines


def audit_split(split: Split, report_dir=None, drop: bool = False, workers: int = 2) -> tuple[Split, dict]:
    """Hash, report and (with ``drop``) remove cross-set duplicates; returns (split, report)."""
    cache = None if report_dir is None else Path(report_dir) / HASH_CACHE
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    images = [e["image"] for name in SETS for e in getattr(split, name)]
    hashes = pixel_hashes(images, cache, workers)
    groups = duplicate_groups(split, hashes)
    report = summarize(split, groups)
    for line in format_report(report):
        LOG.info(line)
    if drop and report["duplicates"]["across_sets"]:
        cross = [g for g in groups if len({name for name, _ in g}) > 1]
        split, removed = drop_duplicates(split, cross)
        report = dict(
            summarize(split, duplicate_groups(split, hashes)),
            dropped=[{"set": e["set"], "image": e["image"]} for e in removed],
        )
        LOG.info(
            f"  drop_duplicates: removed {len(removed)} later-set copies; now D_n {len(split.normal)}, "
            f"validation {len(split.validation)}, D_u {len(split.unlabeled)}, test {len(split.test)}, "
            f"D_u anomaly rate {report['unlabeled_anomaly_rate']}"
        )
    elif report["duplicates"]["across_sets"]:
        LOG.info("  (give --drop_duplicates true to keep each such image only in its earliest set)")
    if report_dir is not None:
        write_json_atomic(report, Path(report_dir) / REPORT_FILE, indent=1)
    return split, report


def checked_split(split: Split, report_dir=None, drop_duplicates: bool = False) -> Split:
    """:func:`audit_split` for the configs: the (possibly de-duplicated) split only.

    A validation set too small to select on is refused here, before stage 1, rather than by
    stage 2 after the ensembles have trained.
    """
    split = audit_split(split, report_dir, bool(drop_duplicates))[0]
    check_validation_size(split)
    return split


def check_validation_size(split: Split) -> None:
    """Refuse a validation set below :data:`MIN_VALIDATION` images, naming the keys that set it."""
    n_val = len(split.validation)
    if n_val < MIN_VALIDATION:
        raise SplitError(
            f"{split.source}: the validation set holds {n_val} image(s) ({len(split.normal)} normal images "
            f"left for training); the ASR-Net selection and the decision threshold need at least "
            f"{MIN_VALIDATION}: add known-normal images, list a 'validation' set in the split file, or "
            f"raise config key 'val_fraction'"
        )
