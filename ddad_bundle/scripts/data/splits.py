"""Split files: which image plays which role (D_n, validation, D_u, test) in a DDAD run.

A split file (format ``ddad-split/1``, specified in ``docs/split_format.md``) lists every image a
run uses. This module reads, checks, writes and draws such files, and reads the reference
implementation's ``data.json`` format.

- :func:`load_split` reads a ``ddad-split/1`` file into a :class:`Split` (absolute paths), refusing
  anything inconsistent: missing files, an image listed twice, a patient in two sets, empty sets,
  bad labels, unknown keys, a declared anomaly rate the labels contradict. When the file has no
  validation set, a seeded fraction of ``normal`` is held out.
- :func:`save_split` writes one atomically, with paths relative to the file's folder, so a data
  folder can be moved as a whole.
- :func:`build_split` draws disjoint sets of exact sizes and exact anomaly rate from labeled pools,
  by patient when entries carry ``patient_id``.
- :func:`read_reference_split` reads the reference format, either as the file lists it, with the
  reference code's (D_u size, AR) head-of-list selection, or resampled with a seed.
- :func:`datalist` turns entries into MONAI dataset dicts.

Example::

    from scripts.data.splits import build_split, save_split, load_split, datalist
    d = build_split(normals, abnormals, n_normal=800, n_unlabeled=500, anomaly_rate=0.6,
                    n_test_normal=100, n_test_abnormal=100, n_validation=50, seed=0)
    save_split(d, "data/split.json")
    split = load_split("data/split.json")
    split.counts(), split.anomaly_rate()     # {..., 'unlabeled': 500, ...}, 0.6
    train_files = datalist(split.normal)     # [{"image": "/abs/...png", "label": 0}, ...]

Two flaws of the reference implementation (DESIGN.md section 3) are avoided here: it takes D_u
as the head of a list and silently shrinks it when the list is short, so the AR it reports is not
the AR it used (here every size is exact or the request is refused, and a declared AR is checked
against the labels); and its draws are unseeded (here every random choice comes from
``numpy.random.default_rng(seed)`` after sorting, so the same files and seed give the same sets).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.files import write_json_atomic

FORMAT = "ddad-split/1"
SETS = ("normal", "validation", "unlabeled", "test")
META_KEYS = ("format", "description", "seed", "anomaly_rate", "generator")  # generator: how the data were made
TOP_LEVEL_KEYS = META_KEYS + SETS
AR_TOLERANCE = 1e-9
MAX_LISTED = 5  # how many offending entries an error message quotes before "and N more"


class SplitError(ValueError):
    """A split file, split request or pool that cannot be used; the message says where and why."""


@dataclass
class Split:
    """The sets of one run, every path absolute.

    ``normal`` is D_n (training known normals), ``validation`` held-out known normals (never
    trained on), ``unlabeled`` D_u (``label`` may be present, for bookkeeping only), ``test``
    labeled entries (``label`` 0/1, optional ``mask``). ``meta`` keeps the file's description, seed
    and declared anomaly rate; ``dropped`` lists normal images left out of both ``normal`` and
    ``validation`` because the validation holdout took part of their patient (see
    :func:`hold_out_validation`).
    """

    normal: list[dict]
    validation: list[dict]
    unlabeled: list[dict]
    test: list[dict]
    source: str
    meta: dict = field(default_factory=dict)
    dropped: list[dict] = field(default_factory=list)

    def counts(self) -> dict:
        """Set sizes; label breakdowns of ``unlabeled`` only when every entry carries a label."""
        out = {name: len(getattr(self, name)) for name in SETS}
        out["test_normal"] = sum(e["label"] == 0 for e in self.test)
        out["test_abnormal"] = sum(e["label"] == 1 for e in self.test)
        if self.unlabeled and all("label" in e for e in self.unlabeled):
            out["unlabeled_normal"] = sum(e["label"] == 0 for e in self.unlabeled)
            out["unlabeled_abnormal"] = sum(e["label"] == 1 for e in self.unlabeled)
        if self.dropped:
            out["dropped"] = len(self.dropped)
        return out

    def anomaly_rate(self) -> float | None:
        """Fraction of abnormal images in D_u from its labels; None when D_u is empty or unlabeled."""
        if not self.unlabeled or not all("label" in e for e in self.unlabeled):
            return None
        return sum(e["label"] == 1 for e in self.unlabeled) / len(self.unlabeled)

    def to_dict(self) -> dict:
        """The ``ddad-split/1`` dict of this split (absolute paths; :func:`save_split` relativises)."""
        d = {"format": FORMAT}
        d.update({k: v for k, v in self.meta.items() if k in META_KEYS and k != "format"})
        for name in SETS:
            d[name] = [dict(e) for e in getattr(self, name)]
        return d


# ----------------------------------------------------------------------------------------------
# reading and checking


def load_split(path, val_fraction: float = 0.1, seed: int = 0, check_files: bool = True) -> Split:
    """Read and check a ``ddad-split/1`` file.

    Relative paths are taken relative to the split file's folder and returned absolute. When the
    file has no (or an empty) ``validation`` list, ``max(1, round(val_fraction * len(normal)))``
    normal images are held out with ``seed`` (see :func:`hold_out_validation`).
    Raises :class:`SplitError` naming the file, the key or entry, and the problem.
    """
    path = Path(os.path.abspath(path))
    where = f"split file {path}"
    data = _read_json(path, where)
    _check_top_level(data, where)
    base = path.parent
    sets, raw = {}, {}
    for name in SETS:
        sets[name], raw[name] = _parse_set(data.get(name), name, base, where)
    describe = {name: [f"{name!r} entry {i}" for i in range(len(sets[name]))] for name in SETS}
    meta = {k: data[k] for k in META_KEYS if k in data}
    return _finish(sets, raw, describe, meta, str(path), where, base, val_fraction, seed, check_files)


def _finish(sets, raw, describe, meta, source, where, base, val_fraction, seed, check_files) -> Split:
    """Checks shared by both file formats, then the validation holdout when needed."""
    _check_sets(sets, describe, where)
    _check_declared_rate(meta.get("anomaly_rate"), sets["unlabeled"], where)
    if check_files:
        _check_files_exist(sets, raw, describe, where, base)
    normal, validation, dropped = sets["normal"], sets["validation"], []
    if not validation:
        normal, validation, dropped = hold_out_validation(normal, val_fraction, seed, where)
    return Split(normal, validation, sets["unlabeled"], sets["test"], source, meta, dropped)


def _read_json(path: Path, where: str):
    if not path.is_file():
        raise SplitError(f"{where}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SplitError(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def _check_top_level(data, where: str) -> None:
    if not isinstance(data, dict):
        raise SplitError(f"{where}: expected a JSON object at the top level, found {type(data).__name__}")
    if "format" not in data and "train" in data:
        # the most likely mix-up: handing the reference implementation's data.json to load_split
        raise SplitError(
            f"{where}: has 'train'/'test' keys but no 'format': this looks like the reference "
            "implementation's format; read it with read_reference_split(path, image_dir)"
        )
    if data.get("format") != FORMAT:
        found = repr(data["format"]) if "format" in data else "no 'format' key"
        raise SplitError(f"{where}: 'format' must be {FORMAT!r}, found {found}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SplitError(
                f"{where}: unknown top-level key {key!r}{hint}; allowed keys: " + ", ".join(TOP_LEVEL_KEYS)
            )
    rate = data.get("anomaly_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
        raise SplitError(f"{where}: 'anomaly_rate' must be a number in [0, 1] or null, found {rate!r}")


def _parse_set(items, name: str, base: Path, where: str) -> tuple[list[dict], list[str]]:
    """Entries of one set with absolute paths, and the image paths as written (for messages)."""
    if items is None:
        return [], []
    if not isinstance(items, list):
        raise SplitError(f"{where}: {name!r} must be a list of entries, found {type(items).__name__}")
    entries, raw = [], []
    for i, item in enumerate(items):
        ctx = f"{where}: {name!r} entry {i}"
        entries.append(_parse_entry(item, name, base, ctx))
        raw.append(item["image"])
    return entries, raw


def _parse_entry(item, name: str, base: Path, ctx: str) -> dict:
    if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"]:
        raise SplitError(f"{ctx}: expected an object with a non-empty 'image' path, found {item!r}")
    entry = dict(item)
    entry["image"] = _absolute(item["image"], base)
    if "mask" in entry:
        if not isinstance(entry["mask"], str) or not entry["mask"]:
            raise SplitError(f"{ctx}: 'mask' must be a path string, found {entry['mask']!r}")
        entry["mask"] = _absolute(entry["mask"], base)
    if "patient_id" in entry:
        pid = entry["patient_id"]
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or pid == "":
            raise SplitError(f"{ctx}: 'patient_id' must be a non-empty string, found {pid!r}")
        entry["patient_id"] = str(pid)  # 17 and "17" are the same patient
    _check_label(entry, name, ctx)
    return entry


def _check_label(entry: dict, name: str, ctx: str) -> None:
    if "label" not in entry:
        if name == "test":
            raise SplitError(f"{ctx} ({entry['image']}): test entries need a 'label' (0 normal, 1 abnormal)")
        return
    label = entry["label"]
    if isinstance(label, bool) or label not in (0, 1) or not isinstance(label, (int, float)):
        raise SplitError(f"{ctx} ({entry['image']}): 'label' must be 0 or 1, found {label!r}")
    entry["label"] = int(label)
    if name in ("normal", "validation") and entry["label"] != 0:
        raise SplitError(f"{ctx} ({entry['image']}): a {name!r} image is a known normal, but its label is 1")


def _absolute(p: str, base: Path) -> str:
    return os.path.normpath(os.path.join(base, p))


def _check_sets(sets: dict, describe: dict, where: str) -> None:
    for name in ("normal", "test"):
        if not sets[name]:
            raise SplitError(f"{where}: {name!r} is missing or empty; it needs at least one entry")
    _check_no_duplicates(sets, describe, where)
    _check_patients_disjoint(sets, describe, where)


def _check_no_duplicates(sets: dict, describe: dict, where: str) -> None:
    first, problems = {}, []
    for name in SETS:
        for i, e in enumerate(sets[name]):
            here = describe[name][i]
            if e["image"] in first:
                problems.append(f"{first[e['image']]} and {here} both list {e['image']}")
            else:
                first[e["image"]] = here
    if problems:
        raise SplitError(
            f"{where}: {len(problems)} image(s) listed twice (an image may appear once, "
            f"in one set): " + some_of(problems)
        )


def _check_patients_disjoint(sets: dict, describe: dict, where: str) -> None:
    home, problems, reported = {}, [], set()
    for name in SETS:
        for i, e in enumerate(sets[name]):
            pid = e.get("patient_id")
            if pid is None:
                continue
            if pid not in home:
                home[pid] = (name, f"{describe[name][i]}, {e['image']}")
            elif home[pid][0] != name and (pid, name) not in reported:
                reported.add((pid, name))
                problems.append(
                    f"patient_id {pid!r} is in {home[pid][0]!r} ({home[pid][1]}) and in "
                    f"{name!r} ({describe[name][i]}, {e['image']})"
                )
    if problems:
        raise SplitError(
            f"{where}: {len(problems)} patient(s) in two sets (a patient's images must all "
            f"be in one set): " + some_of(problems)
        )


def _check_declared_rate(declared, unlabeled: list[dict], where: str) -> None:
    """A declared anomaly rate must be the rate the labels give (the reference code's flaw was
    reporting one AR and training with another)."""
    if declared is None or not unlabeled or not all("label" in e for e in unlabeled):
        return
    n_abn = sum(e["label"] for e in unlabeled)
    actual = n_abn / len(unlabeled)
    if abs(declared - actual) > AR_TOLERANCE:
        raise SplitError(
            f"{where}: 'anomaly_rate' is {declared!r} but the labels of 'unlabeled' give "
            f"{n_abn}/{len(unlabeled)} = {actual!r}; correct the value or remove the key"
        )


def _check_files_exist(sets: dict, raw: dict, describe: dict, where: str, base: Path) -> None:
    missing = []
    for name in SETS:
        for i, e in enumerate(sets[name]):
            if not os.path.isfile(e["image"]):
                missing.append(
                    f"{describe[name][i]} lists {raw[name][i]}, which does not exist (looked for {e['image']})"
                )
            if "mask" in e and not os.path.isfile(e["mask"]):
                missing.append(f"{describe[name][i]} has mask {e['mask']}, which does not exist")
    if len(missing) == 1:
        raise SplitError(f"{where}: {missing[0]}")
    if missing:
        raise SplitError(
            f"{where}: {len(missing)} listed files do not exist (relative paths are "
            f"relative to {base}): " + some_of(missing)
        )


def some_of(items: list, n: int = MAX_LISTED) -> str:
    """The first ``n`` problems and how many more, so one message describes a widespread fault."""
    items = [str(i) for i in items]
    text = "; ".join(items[:n])
    return text + (f"; and {len(items) - n} more" if len(items) > n else "")


# ----------------------------------------------------------------------------------------------
# validation holdout


def hold_out_validation(
    normal: list[dict], val_fraction: float = 0.1, seed: int = 0, where: str = "normal set"
) -> tuple[list[dict], list[dict], list[dict]]:
    """Split known normals into (training, validation, dropped), seeded and exact in size.

    ``max(1, round(val_fraction * len(normal)))`` images (Python's round, half to even), at most
    ``len(normal) - 1``, go to validation. Entries are sorted by image path before the seeded draw,
    so the same files give the same validation set whatever their order. Patients are never split
    between training and validation: whole patients are drawn (see :func:`_draw_sets`); when the
    exact count needs part of one patient, that patient's other images are ``dropped``.
    """
    if not 0 <= val_fraction < 1:
        raise SplitError(f"{where}: val_fraction must be in [0, 1), got {val_fraction!r}")
    if len(normal) < 2:
        raise SplitError(
            f"{where}: 'normal' has {len(normal)} image(s); holding out a validation set "
            "needs at least 2 (or list a 'validation' set explicitly)"
        )
    n_val = min(len(normal) - 1, max(1, round(val_fraction * len(normal))))
    rng = np.random.default_rng(seed)
    groups = _group_by_patient(normal)
    drawn, used = _draw_sets(groups, [("validation", n_val)], rng, {}, "normal", where)
    validation = drawn["validation"]
    chosen = {e["image"] for e in validation}
    partial = {key for key, entries in used if len(entries) > sum(e["image"] in chosen for e in entries)}
    training, dropped = [], []
    for e in normal:
        if e["image"] in chosen:
            continue
        (dropped if _group_key(e) in partial else training).append(e)
    if not training:
        raise SplitError(
            f"{where}: all {len(normal)} 'normal' images belong to one patient, so no "
            "validation image can be held out without emptying D_n; list a 'validation' "
            "set explicitly"
        )
    return training, sorted(validation, key=_image_key), dropped


# ----------------------------------------------------------------------------------------------
# drawing from pools


def build_split(
    normal_pool: list[dict],
    abnormal_pool: list[dict],
    n_normal: int,
    n_unlabeled: int,
    anomaly_rate: float,
    n_test_normal: int,
    n_test_abnormal: int,
    n_validation: int = 0,
    seed: int = 0,
    description: str = "",
) -> dict:
    """Draw a ``ddad-split/1`` dict of exact sizes and exact anomaly rate from labeled pools.

    From ``normal_pool``: test normals, validation, D_n (``normal``), the unlabeled normals; from
    ``abnormal_pool``: test abnormals, the unlabeled abnormals; all disjoint, drawn with
    ``numpy.random.default_rng(seed)`` after sorting, so the same pools and seed give the same split.
    D_u has exactly ``anomaly_rate * n_unlabeled`` abnormal images; that product must be an integer
    (within 1e-9), otherwise the request is refused with the nearest feasible rates. A pool too small
    for the request is refused, never shrunk. With ``n_validation=0`` no validation list is written
    and :func:`load_split` holds out a seeded fraction of ``normal``.

    Entries with a ``patient_id`` are drawn by patient (rule in :func:`_draw_sets`): no patient ends
    up in two sets, counts stay exact, and a few images of partially used patients may be left out.
    Unlabeled and test entries get ``label`` (0/1); the returned paths are the pools' paths.
    """
    where = "build_split"
    sizes = dict(
        n_normal=n_normal,
        n_unlabeled=n_unlabeled,
        n_test_normal=n_test_normal,
        n_test_abnormal=n_test_abnormal,
        n_validation=n_validation,
    )
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SplitError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    if n_normal < 1:
        raise SplitError(f"{where}: n_normal must be at least 1 (D_n cannot be empty)")
    if n_test_normal + n_test_abnormal < 1:
        raise SplitError(f"{where}: the test set cannot be empty (n_test_normal + n_test_abnormal = 0)")
    n_abn_u = unlabeled_abnormal_count(anomaly_rate, n_unlabeled, where)
    normal_pool = _check_pool(normal_pool, "normal_pool", 0)
    abnormal_pool = _check_pool(abnormal_pool, "abnormal_pool", 1)
    _check_pools_disjoint(normal_pool, abnormal_pool)

    normal_needs = [
        ("test", n_test_normal),
        ("validation", n_validation),
        ("normal", n_normal),
        ("unlabeled", n_unlabeled - n_abn_u),
    ]
    abnormal_needs = [("test", n_test_abnormal), ("unlabeled", n_abn_u)]
    _check_pool_size(
        normal_pool, "normal_pool", normal_needs, ("test normals", "validation", "normal (D_n)", "unlabeled normals")
    )
    _check_pool_size(abnormal_pool, "abnormal_pool", abnormal_needs, ("test abnormals", "unlabeled abnormals"))

    rng = np.random.default_rng(seed)
    taken: dict[str, str] = {}  # patient_id -> set, shared so a patient in both pools stays in one set
    drawn_n, _ = _draw_sets(_group_by_patient(normal_pool), normal_needs, rng, taken, "normal_pool", where)
    drawn_a, _ = _draw_sets(_group_by_patient(abnormal_pool), abnormal_needs, rng, taken, "abnormal_pool", where)

    def labeled(entries, label):
        return [{**e, "label": label} for e in entries]

    out = {
        "format": FORMAT,
        "description": description,
        "seed": int(seed),
        "anomaly_rate": float(anomaly_rate) if n_unlabeled else None,
        "normal": _strip_labels(drawn_n["normal"]),
    }
    if n_validation:
        out["validation"] = _strip_labels(drawn_n["validation"])
    out["unlabeled"] = labeled(drawn_n["unlabeled"], 0) + labeled(drawn_a["unlabeled"], 1)
    out["test"] = labeled(drawn_n["test"], 0) + labeled(drawn_a["test"], 1)
    for name in SETS:
        if name in out:
            out[name].sort(key=_image_key)
    return out


def unlabeled_abnormal_count(anomaly_rate: float, n_unlabeled: int, where: str = "build_split") -> int:
    """``anomaly_rate * n_unlabeled`` as an exact integer, or a SplitError with the nearest feasible rates."""
    if isinstance(anomaly_rate, bool) or not isinstance(anomaly_rate, (int, float)) or not 0 <= anomaly_rate <= 1:
        raise SplitError(f"{where}: anomaly_rate must be a number in [0, 1], got {anomaly_rate!r}")
    if n_unlabeled == 0:
        return 0
    x = anomaly_rate * n_unlabeled
    if abs(x - round(x)) > AR_TOLERANCE:
        lo, hi = math.floor(x), math.ceil(x)
        raise SplitError(
            f"{where}: anomaly_rate {anomaly_rate!r} with n_unlabeled {n_unlabeled} asks for "
            f"{x:g} abnormal unlabeled images, which is not a whole number; the nearest "
            f"feasible rates are {lo}/{n_unlabeled} = {lo / n_unlabeled:g} and "
            f"{hi}/{n_unlabeled} = {hi / n_unlabeled:g}"
        )
    return int(round(x))


def _check_pool(pool, name: str, label: int) -> list[dict]:
    if not isinstance(pool, (list, tuple)):
        raise SplitError(f"build_split: {name} must be a list of entries, got {type(pool).__name__}")
    seen, out = {}, []
    for i, e in enumerate(pool):
        if not isinstance(e, dict) or not isinstance(e.get("image"), str) or not e["image"]:
            raise SplitError(f"build_split: {name} entry {i}: expected a dict with an 'image' path, found {e!r}")
        if "label" in e and e["label"] != label:
            raise SplitError(
                f"build_split: {name} entry {i} ({e['image']}) has label {e['label']!r}, "
                f"but every entry of {name} is label {label}"
            )
        if e["image"] in seen:
            raise SplitError(f"build_split: {name} entries {seen[e['image']]} and {i} are the same image {e['image']}")
        seen[e["image"]] = i
        e = dict(e)
        if "patient_id" in e:
            e["patient_id"] = str(e["patient_id"])
        out.append(e)
    return out


def _check_pools_disjoint(normal_pool: list[dict], abnormal_pool: list[dict]) -> None:
    both = sorted({e["image"] for e in normal_pool} & {e["image"] for e in abnormal_pool})
    if both:
        raise SplitError(
            f"build_split: {len(both)} image(s) are in both normal_pool and abnormal_pool: " + some_of(both)
        )


def _check_pool_size(pool: list[dict], name: str, needs, labels) -> None:
    needed = sum(n for _, n in needs)
    if needed > len(pool):
        parts = " + ".join(f"{n} {label}" for (_, n), label in zip(needs, labels))
        raise SplitError(
            f"build_split: {name} is too small: the request needs {needed} images "
            f"({parts}) and the pool has {len(pool)}; nothing was drawn (lower the sizes "
            "or add images; a pool is never silently shrunk)"
        )


def _group_key(e: dict) -> tuple:
    # entries without a patient id are their own group; the tag keeps the two kinds of key apart
    pid = e.get("patient_id")
    return ("p", str(pid)) if pid is not None else ("i", e["image"])


def _image_key(e: dict) -> str:
    return e["image"]


def _group_by_patient(entries: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """(key, entries) per patient, both levels sorted, so the draw does not depend on list order."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault(_group_key(e), []).append(e)
    return [(key, sorted(groups[key], key=_image_key)) for key in sorted(groups)]


def _draw_sets(groups, needs, rng, taken: dict, pool_name: str, where: str):
    """Fill sets of exact sizes with whole patients, in random (seeded) patient order.

    Rule, set by set in the order given: walk the shuffled patients not used yet and take every
    patient whose images all fit in what the set still needs; if the set is still short, take the
    first remaining patient that has more images than needed, draw the needed number of its images
    at random, and leave its other images out (they go to no set, so no patient is in two sets).
    A patient already placed in a set by another pool (``taken``) only goes to the same set.
    Returns ({set: entries}, [(key, entries) of every patient used]); raises SplitError when the
    patients run out before a set is full.
    """
    queue = [groups[i] for i in rng.permutation(len(groups))]
    free = [True] * len(queue)
    out, used = {}, []

    def allowed(key, name):
        return key[0] != "p" or taken.get(key[1], name) == name

    def take(i, name, entries):
        free[i] = False
        used.append(queue[i])
        out[name].extend(entries)
        if queue[i][0][0] == "p":
            taken[queue[i][0][1]] = name

    for name, n in needs:
        out[name] = []
        for i, (key, entries) in enumerate(queue):
            if len(out[name]) == n:
                break
            if free[i] and len(entries) <= n - len(out[name]) and allowed(key, name):
                take(i, name, entries)
        short = n - len(out[name])
        if short:
            i = next((i for i, (key, entries) in enumerate(queue) if free[i] and allowed(key, name)), None)
            if i is None:
                n_img = sum(len(g[1]) for g in groups)
                raise SplitError(
                    f"{where}: {pool_name} cannot fill {name!r} ({n} images, {len(out[name])} "
                    f"drawn) with whole patients: the pool has {n_img} images in {len(groups)} "
                    "patient groups and patients are never split across sets; add images "
                    "or lower the sizes"
                )
            entries = queue[i][1]
            pick = sorted(rng.choice(len(entries), size=short, replace=False))
            take(i, name, [entries[j] for j in pick])
    return out, used


def _strip_labels(entries: list[dict]) -> list[dict]:
    # known normals need no label; a stale label field would only invite confusion
    return [{k: v for k, v in e.items() if k != "label"} for e in entries]


# ----------------------------------------------------------------------------------------------
# writing


def save_split(split, path) -> Path:
    """Write a :class:`Split` or a ``ddad-split/1`` dict as JSON, atomically; returns the path.

    Absolute paths are written relative to the split file's folder (``../`` where needed), so the
    folder holding split file and images can be moved as a whole. Relative paths in a dict are
    taken relative to the current working directory, like any path handed to a Python function.
    The dict is checked (keys, labels, duplicates, patients; not file existence) before anything
    is written, and the file appears only complete (temporary file, then ``os.replace``).
    """
    path = Path(os.path.abspath(path))
    data = split.to_dict() if isinstance(split, Split) else dict(split)
    data.setdefault("format", FORMAT)
    where = f"save_split to {path}"
    _check_top_level(data, where)
    out = {k: data[k] for k in TOP_LEVEL_KEYS if k in data and k not in SETS}
    sets, describe = {}, {}
    for name in SETS:
        if name not in data or data[name] is None:
            continue
        sets[name], _ = _parse_set(data[name], name, Path.cwd(), where)
        describe[name] = [f"{name!r} entry {i}" for i in range(len(sets[name]))]
        out[name] = [_relative_entry(e, path.parent) for e in sets[name]]
    for name in SETS:
        sets.setdefault(name, [])
        describe.setdefault(name, [])
    _check_sets(sets, describe, where)
    _check_declared_rate(data.get("anomaly_rate"), sets["unlabeled"], where)
    write_json_atomic(out, path, indent=1)
    return path


def _relative_entry(e: dict, folder: Path) -> dict:
    e = dict(e)
    for key in ("image", "mask"):
        if key in e:
            try:
                e[key] = Path(os.path.relpath(e[key], folder)).as_posix()
            except ValueError:  # another drive on Windows: no relative path exists
                pass
    return e


# ----------------------------------------------------------------------------------------------
# the reference implementation's format

REFERENCE_LISTS = (
    ("train/0", ("train", "0")),
    ("train/unlabeled/0", ("train", "unlabeled", "0")),
    ("train/unlabeled/1", ("train", "unlabeled", "1")),
    ("test/0", ("test", "0")),
    ("test/1", ("test", "1")),
)


def read_reference_split(
    path,
    image_dir,
    resample_seed: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    check_files: bool = True,
    *,
    n_unlabeled: int | None = None,
    anomaly_rate: float | None = None,
) -> Split:
    """Read the reference implementation's ``data.json``.

    Format: ``{"train": {"0": [...], "unlabeled": {"0": [...], "1": [...]}}, "test": {"0": [...],
    "1": [...]}}``, file names relative to ``image_dir``. D_n = ``train/0``; test = ``test/0``
    (label 0) + ``test/1`` (label 1); validation = a seeded ``val_fraction`` of D_n
    (:func:`hold_out_validation`), since the reference has none. D_u depends on the arguments:

    - neither ``n_unlabeled`` nor ``anomaly_rate``: all of ``train/unlabeled/0`` and ``/1``, labels
      kept for bookkeeping. The official files list larger unlabeled pools than the paper's D_u, so
      this is the file's content, not the paper's D_u.
    - both given: the reference code's selection, the first ``n_unlabeled - k`` names of
      ``unlabeled/0`` and the first ``k = anomaly_rate * n_unlabeled`` of ``unlabeled/1`` (the
      paper's D_u: e.g. 4000 at 0.6 for RSNA). ``k`` must be a whole number and the lists long
      enough; unlike the reference code, nothing is shrunk silently.
    - ``resample_seed`` given: all normals (``train/0``, ``unlabeled/0``, ``test/0``) and all
      abnormals (``unlabeled/1``, ``test/1``) are pooled and :func:`build_split` draws sets of the
      same sizes and the same AR (the selected D_u's when ``n_unlabeled`` is given) with that seed.
    """
    path = Path(os.path.abspath(path))
    image_dir = Path(os.path.abspath(image_dir))
    where = f"reference split file {path}"
    lists = _reference_lists(_read_json(path, where), where)
    if (n_unlabeled is None) != (anomaly_rate is None):
        raise SplitError(
            f"{where}: give n_unlabeled and anomaly_rate together (the reference's extra_data and ar), or neither"
        )
    if n_unlabeled is not None:
        lists = _reference_head(lists, n_unlabeled, anomaly_rate, where)
    roles = (
        ("normal", "train/0", None),
        ("unlabeled", "train/unlabeled/0", 0),
        ("unlabeled", "train/unlabeled/1", 1),
        ("test", "test/0", 0),
        ("test", "test/1", 1),
    )
    sets = {name: [] for name in SETS}
    raw = {name: [] for name in SETS}
    describe = {name: [] for name in SETS}
    for name, key, label in roles:
        for i, fname in enumerate(lists[key]):
            entry = {"image": _absolute(fname, image_dir)}
            if label is not None:
                entry["label"] = label
            sets[name].append(entry)
            raw[name].append(fname)
            describe[name].append(f"{key!r} entry {i}")
    n_u = len(sets["unlabeled"])
    rate = sum(e["label"] for e in sets["unlabeled"]) / n_u if n_u else None
    source = f"{path} (reference format, images in {image_dir})"
    meta = {"description": f"read from {source}", "anomaly_rate": rate}
    if resample_seed is None:
        return _finish(sets, raw, describe, meta, source, where, image_dir, val_fraction, seed, check_files)
    _check_sets(sets, describe, where)  # duplicates are reported against the file's own keys
    return _resample_reference(sets, rate, resample_seed, val_fraction, seed, check_files, source, image_dir)


def _reference_lists(data, where: str) -> dict[str, list[str]]:
    if not isinstance(data, dict) or set(data) != {"train", "test"}:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise SplitError(f"{where}: expected top-level keys 'train' and 'test', found {found}")
    lists = {}
    for key, steps in REFERENCE_LISTS:
        node = data
        for step in steps:
            if not isinstance(node, dict) or step not in node:
                raise SplitError(f"{where}: key {key!r} is missing")
            node = node[step]
        if not isinstance(node, list) or not all(isinstance(n, str) and n for n in node):
            raise SplitError(f"{where}: {key!r} must be a list of file names")
        lists[key] = node
    return lists


def _reference_head(lists: dict, n_unlabeled: int, anomaly_rate: float, where: str) -> dict:
    """The reference code's D_u: heads of the unlabeled lists, refused (not shrunk) when too short."""
    k = unlabeled_abnormal_count(anomaly_rate, n_unlabeled, where)
    for key, n in (("train/unlabeled/0", n_unlabeled - k), ("train/unlabeled/1", k)):
        if n > len(lists[key]):
            raise SplitError(
                f"{where}: D_u of {n_unlabeled} at anomaly rate {anomaly_rate} needs {n} names "
                f"from {key!r}, which lists {len(lists[key])}"
            )
    return {
        **lists,
        "train/unlabeled/0": lists["train/unlabeled/0"][: n_unlabeled - k],
        "train/unlabeled/1": lists["train/unlabeled/1"][:k],
    }


def _resample_reference(sets, rate, resample_seed, val_fraction, seed, check_files, source, image_dir) -> Split:
    normals = sets["normal"] + [e for e in sets["unlabeled"] + sets["test"] if e["label"] == 0]
    abnormals = [e for e in sets["unlabeled"] + sets["test"] if e["label"] == 1]
    n_u = len(sets["unlabeled"])
    d = build_split(
        _strip_labels(normals),
        _strip_labels(abnormals),
        n_normal=len(sets["normal"]),
        n_unlabeled=n_u,
        anomaly_rate=rate if n_u else 0.0,
        n_test_normal=sum(e["label"] == 0 for e in sets["test"]),
        n_test_abnormal=sum(e["label"] == 1 for e in sets["test"]),
        seed=resample_seed,
        description=f"resampled with seed {resample_seed} from {source}",
    )
    # the file checks run on the drawn sets only: unused pool images need not exist
    where = f"{source}, resampled with seed {resample_seed}"
    drawn = {name: d.get(name, []) for name in SETS}
    describe = {name: [f"resampled {name!r} entry {i}" for i in range(len(drawn[name]))] for name in SETS}
    raw = {name: [e["image"] for e in drawn[name]] for name in SETS}
    meta = {k: d[k] for k in ("description", "seed", "anomaly_rate")}
    return _finish(drawn, raw, describe, meta, where, where, image_dir, val_fraction, seed, check_files)


def prepared_split_file(data_dir, dataset: str) -> str:
    """``<data_dir>/split.json`` as written by ``python -m scripts.tools.preparation <dataset>``, or a
    SplitError naming the config key and the command that makes it (used by configs/datasets/*.json)."""
    make = f"python -m scripts.tools.preparation {dataset} --source <download> --out <folder>"
    if not os.path.isdir(str(data_dir)):
        raise SplitError(
            f"config key 'data_dir' is {str(data_dir)!r}, not a folder: give --data_dir, the "
            f"--out folder of `{make}` (docs/datasets.md)"
        )
    path = os.path.join(os.path.abspath(data_dir), "split.json")
    if not os.path.isfile(path):
        raise SplitError(f"{path}: no such file; config key 'data_dir' must be the --out folder of `{make}`")
    return path


# ----------------------------------------------------------------------------------------------
# MONAI datalists


def datalist(entries: list[dict]) -> list[dict]:
    """MONAI dataset dicts: ``{"image": path, "label": int (0 when absent), "mask": path (if any)}``."""
    out = []
    for e in entries:
        d = {"image": e["image"], "label": int(e.get("label", 0))}
        if e.get("mask"):
            d["mask"] = e["mask"]
        out.append(d)
    return out


def _summary(split: Split) -> str:
    rate = split.anomaly_rate()
    return f"{split.source}\n  counts: {split.counts()}\n  D_u anomaly rate: {rate if rate is None else round(rate, 6)}"


if __name__ == "__main__":
    # python -m scripts.data.splits SPLIT.json                 -> check a ddad-split/1 file, print its counts
    # python -m scripts.data.splits DATA.json --reference DIR  -> the same for a reference-format file
    args = sys.argv[1:]
    try:
        if len(args) == 3 and args[1] == "--reference":
            print(_summary(read_reference_split(args[0], args[2])))
        elif len(args) == 1:
            print(_summary(load_split(args[0])))
        else:
            sys.exit(
                "usage: python -m scripts.data.splits SPLIT.json | python -m scripts.data.splits DATA.json --reference IMAGE_DIR"
            )
    except SplitError as e:
        sys.exit(f"error: {e}")
