"""The papers' experiments as commands: the anomaly-rate sweep and the backbone table.

- ``ar_sweep`` (DDAD-ASR, Medical Image Analysis 2023, Fig. 5): one backbone, D_u at anomaly
  rates 0, 20, ..., 100% with one fixed size |D_u|; AUC of A_rec, A_intra, A_inter, R_intra,
  R_dual against AR. Writes ``<out>/ar_sweep.csv``, ``.md`` and ``.png`` (AUC vs AR per score).
- ``backbones`` (same paper, Table 3): AE, MemAE and AE-U at one AR (default 0.6); AUC of the six
  scores A_rec, A_rec_ensemble, A_intra, A_inter, R_intra, R_dual. Writes ``<out>/backbones.csv``
  and ``.md``.
- ``compare``: DDAD (one backbone) and SALAD (docs/salad.md) trained on one split, every score of
  both and the trivial baselines (``scripts.tools.baselines``: mean intensity, intensity std, L2
  to the mean normal) on the same test images in one table: ``<out>/compare.csv``, ``.md``.
- ``ar_sweep --method salad``: the sweep with SALAD cells (scores A_knn, A_mse), e.g. at the SALAD
  paper's rates 0, 5, 10, 15%.

Each cell (one AR or backbone, one seed) is a complete bundle run, ``training``, ``training_asr``
and ``evaluating`` (SALAD cells: its ``training`` and ``evaluating``) through ``scripts.runtime.workflows.run_workflows`` with the dataset's config
(``configs/datasets/<name>.json``), in its own folder ``<out>/cells/<cell>/``; its AUCs are read
from ``eval/metrics.json``. A cell whose ``metrics.json`` exists is not run again, and an
interrupted cell resumes from the bundle's own checkpoints, so rerunning a command loses no
finished work. A cell folder records its settings (``cell.json``); rerunning it with other settings
is refused rather than mixing two protocols in one table. With several ``--seeds`` a table entry
is ``mean ± std`` (sample standard deviation, ddof 1) over seeds; the seeds change the training
(member initialization, shuffling, synthetic anomalies), not the data split, which is drawn once
with ``--split_seed``.

Splits of the AR sweep: the dataset's images are two labeled pools (normal, abnormal). One
:func:`scripts.data.splits.build_split` draw with ``--split_seed`` fixes D_n, the validation set and
the test set and sets aside a D_u reservoir of |D_u| normals and |D_u| abnormals; D_u at rate AR
is then the first ``|D_u| (1 - AR)`` reservoir normals and the first ``|D_u| AR`` reservoir
abnormals in one seeded order. So everything but D_u's composition is identical at every AR, and
|D_u| defaults to the largest size feasible at every AR: the smaller of the normal and abnormal
images left for D_u, rounded down so that every ``AR x |D_u|`` is whole. A size the pools cannot
give is refused with the numbers.

Data sets (``--dataset``): ``phantom`` (generated with lesion masks, every image a distinct
subject; the pools are generated once per ``--split_seed`` and sizes), ``kermany`` (the pediatric
chest X-rays of the folder given as ``--data_dir``, with its ``manifest.csv``, pooled by patient), ``folder`` (a folder
tree: ``normal/`` and ``test/normal/`` are normal, ``abnormal/`` and ``test/abnormal/`` abnormal;
``unlabeled/`` has no labels and is not used by the sweep) and the prepared data sets ``rsna``,
``vindr``, ``brain_tumor``, ``lag`` (every labeled image of the ``split.json`` that
``python -m scripts.tools.preparation`` wrote; the backbone table uses that split as is, the paper's
repartition).

Example::

    python -m ddad_bundle experiment ar_sweep --dataset phantom --seeds 0 1 2 --epochs 30 --asr_epochs 10
    python -m ddad_bundle experiment backbones --dataset rsna --data_dir /data/ddad/rsna --seeds 0
    python -m ddad_bundle experiment ar_sweep --dataset phantom --epochs 1 --asr_epochs 1 \\
        --n_normal 40 --image_size 32            # any further --key value goes to the workflows

From Python: ``prepare(...)`` / ``ar_sweep(...)`` / ``backbone_table(...)`` (see their docstrings).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..runtime.config_guard import parse_overrides
from ..runtime.files import write_csv_atomic, write_json_atomic, write_text_atomic
from ..runtime.workflows import FIT_WORKFLOWS, run_workflows
from ..scoring.scores import ALL_SCORES
from ..data.medad import dataset_split_file, read_any_split
from ..data.splits import build_split, save_split, unlabeled_abnormal_count
from ..data.readers import SUPPORTED_EXTENSIONS

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
DATASET_CONFIGS = BUNDLE_ROOT / "configs" / "datasets"
PREPARED = ("rsna", "vindr", "brain_tumor", "lag")
DATASETS = ("phantom", "kermany", "folder") + PREPARED
MODALITIES = {
    "phantom": "cxr",
    "kermany": "cxr",
    "folder": "cxr",
    "rsna": "cxr",
    "vindr": "cxr",
    "brain_tumor": "brain",
    "lag": "fundus",
}
AR_STEPS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BACKBONES = ("ae", "memae", "aeu")
BACKBONE_NAMES = {"ae": "AE", "memae": "MemAE", "aeu": "AE-U"}
SWEEP_SCORES = ("A_rec", "A_intra", "A_inter", "R_intra", "R_dual")
TABLE_SCORES = ALL_SCORES
WORKFLOWS = ["training", "training_asr", "evaluating"]
# SALAD (docs/salad.md) runs its own configs' training and evaluating; its scores.
METHODS = ("ddad", "salad")
SALAD_SCORES = ("A_knn", "A_mse")
METHOD_SCORES = {"ddad": SWEEP_SCORES, "salad": SALAD_SCORES}
SALAD_CONFIGS = ("common.json", "salad_train.json", "salad_evaluate.json")
SIZE_KEYS = ("n_normal", "n_validation", "n_test_normal", "n_test_abnormal")
# Data sets with paper-like sizes of their own; folder and prepared sets derive theirs from the data.
DEFAULT_SIZES = {
    "phantom": dict(n_normal=400, n_validation=40, n_test_normal=100, n_test_abnormal=100, n_unlabeled=400),
    "kermany": dict(n_normal=540, n_validation=60, n_test_normal=300, n_test_abnormal=300, n_unlabeled=1000),
}
_RESERVOIR_STREAM = 7  # the reservoir order comes from default_rng([split_seed, 7])


class ExperimentError(ValueError):
    """An experiment request that cannot be carried out; the message names the numbers or the file."""


# ----------------------------------------------------------------------------------------------
# data sources: labeled pools and the settings every cell of a data set shares


@dataclass
class Source:
    """One data set as an experiment sees it.

    ``normal`` / ``abnormal``: labeled pools (split entries, ``patient_id`` kept); ``sizes``: D_n,
    validation and test sizes (and ``n_unlabeled`` for the backbone table); ``settings``: workflow
    overrides shared by every cell (dataset, modality, data_dir); ``config``: the dataset config
    file; ``own_split``: for prepared and folder data, the backbone table uses the config's split.
    """

    name: str
    normal: list[dict]
    abnormal: list[dict]
    sizes: dict
    settings: dict
    config: Path | None
    own_split: bool = False
    description: str = ""


def patient_id(name: str) -> str:
    """Kermany patient of a file: ``personN`` (pneumonia), ``IM-XXXX`` / ``NORMAL2-IM-XXXX`` (normal)."""
    stem = Path(name).name
    person = re.match(r"(person\d+)_", stem)
    if person:
        return person.group(1)
    normal = re.match(r"((?:NORMAL2-)?IM-\d+)", stem)
    return normal.group(1) if normal else stem


def kermany_pools(data_dir) -> tuple[list[dict], list[dict]]:
    """Normal and pneumonia entries of the Kermany set from its ``manifest.csv``, with patient ids."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise ExperimentError(
            f"{manifest}: no such file (the Kermany data set is read from {data_dir}; give --data_dir)"
        )
    normal, abnormal = [], []
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            entry = {"image": str(data_dir / row["file"]), "patient_id": patient_id(row["file"])}
            (normal if row["label"] == "normal" else abnormal).append(entry)
    return normal, abnormal


def phantom_pools(folder, modality: str, n_normal: int, n_abnormal: int, size: int, seed: int):
    """Labeled phantom pools, generated once: every image in the generator's test role, so all carry masks."""
    from ..data.phantoms import generate_phantom_dataset

    split_file = generate_phantom_dataset(
        folder,
        modality=modality,
        n_normal=1,
        n_validation=0,
        n_unlabeled=0,
        anomaly_rate=0.0,
        n_test_normal=n_normal,
        n_test_abnormal=n_abnormal,
        size=size,
        seed=seed,
    )
    root = Path(split_file).parent
    test = _load_json(Path(split_file))["test"]  # the generator's one 'normal' image is not used

    def entry(e):
        return {"image": str(root / e["image"]), "mask": str(root / e["mask"]), "patient_id": e["patient_id"]}

    return [entry(e) for e in test if e["label"] == 0], [entry(e) for e in test if e["label"] == 1]


def _images(folder: Path) -> list[dict]:
    if not folder.is_dir():
        return []
    return [
        {"image": str(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name.lower().endswith(tuple(SUPPORTED_EXTENSIONS))
    ]


def folder_pools(root) -> tuple[list[dict], list[dict], dict]:
    """Pools of a folder tree and its default sizes: its test folders' sizes, half its normal/ as D_n."""
    root = Path(root)
    if not root.is_dir():
        raise ExperimentError(f"{root}: not a folder (--data_dir)")
    train_normal, test_normal = _images(root / "normal"), _images(root / "test" / "normal")
    abnormal = _images(root / "abnormal") + _images(root / "test" / "abnormal")
    if not (train_normal + test_normal) or not abnormal:
        raise ExperimentError(
            f"{root}: experiments need labeled images: normal/ (and test/normal/) and "
            "abnormal/ or test/abnormal/; found "
            f"{len(train_normal + test_normal)} normal and {len(abnormal)} abnormal"
        )
    n_normal = max(1, len(train_normal) // 2)  # the other half stays free for D_u
    sizes = dict(
        n_normal=n_normal,
        n_validation=max(1, round(0.1 * n_normal)),
        n_test_normal=len(test_normal),
        n_test_abnormal=len(_images(root / "test" / "abnormal")),
    )
    return train_normal + test_normal, abnormal, sizes


def prepared_pools(data_dir, dataset: str) -> tuple[list[dict], list[dict], dict]:
    """Pools of a prepared data set or Med-AD folder (every labeled image its split file lists) and that
    split's sizes (a reference data.json: all of its unlabeled lists)."""
    path = dataset_split_file(data_dir, dataset)
    split = read_any_split(path)
    unlabeled = split.unlabeled
    if any("label" not in e for e in unlabeled):
        raise ExperimentError(f"{path}: D_u entries without 'label': the experiments need labeled pools")
    keep = lambda e: {k: v for k, v in e.items() if k in ("image", "patient_id")}  # noqa: E731
    d_n = split.normal + split.validation + split.dropped
    normal = d_n + [e for e in unlabeled + split.test if e["label"] == 0]
    abnormal = [e for e in unlabeled + split.test if e["label"] == 1]
    n_normal = len(d_n) - max(1, round(0.1 * len(d_n)))
    sizes = dict(
        n_normal=n_normal,
        n_validation=len(d_n) - n_normal,
        n_unlabeled=len(unlabeled),
        n_test_normal=split.counts()["test_normal"],
        n_test_abnormal=split.counts()["test_abnormal"],
    )
    return [keep(e) for e in normal], [keep(e) for e in abnormal], sizes


def prepare(
    dataset: str,
    out,
    data_dir=None,
    modality: str | None = None,
    split_seed: int = 0,
    sizes: dict | None = None,
    phantom_size: int = 128,
) -> Source:
    """The :class:`Source` of ``dataset``; ``sizes`` overrides its default D_n, validation, test, |D_u|."""
    if dataset not in DATASETS:
        raise ExperimentError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    modality = modality or MODALITIES[dataset]
    asked = {k: v for k, v in (sizes or {}).items() if v is not None}
    settings = {"dataset": dataset, "modality": modality}
    # Kermany has no dataset config: the experiment draws its split and sets dataset and modality itself
    config = None if dataset == "kermany" else DATASET_CONFIGS / f"{dataset}.json"
    if dataset == "phantom":
        s = dict(DEFAULT_SIZES["phantom"], **asked)
        folder = Path(out) / "data" / f"{modality}_phantom_pools"
        u = s["n_unlabeled"]
        normal, abnormal = phantom_pools(
            folder,
            modality,
            s["n_test_normal"] + s["n_validation"] + s["n_normal"] + u,
            s["n_test_abnormal"] + u,
            phantom_size,
            split_seed,
        )
        return Source(
            dataset,
            normal,
            abnormal,
            s,
            settings,
            config,
            description=f"{modality} phantoms ({phantom_size} px, generator seed {split_seed})",
        )
    if dataset == "kermany":
        if data_dir is None:
            raise ExperimentError(
                "--dataset kermany needs --data_dir (the Kermany chest X-ray folder with its manifest.csv)"
            )
        data_dir = Path(data_dir)
        normal, abnormal = kermany_pools(data_dir)
        return Source(
            dataset,
            normal,
            abnormal,
            dict(DEFAULT_SIZES["kermany"], **asked),
            settings,
            config,
            description=f"Kermany pediatric CXR ({data_dir}), patient-disjoint",
        )
    if data_dir is None:
        raise ExperimentError(
            f"--dataset {dataset} needs --data_dir "
            + (
                "(a folder tree)"
                if dataset == "folder"
                else f"(the --out folder of `python -m scripts.tools.preparation {dataset}`)"
            )
        )
    data_dir = os.path.abspath(data_dir)
    normal, abnormal, s = folder_pools(data_dir) if dataset == "folder" else prepared_pools(data_dir, dataset)
    return Source(
        dataset,
        normal,
        abnormal,
        dict(s, **asked),
        dict(settings, data_dir=data_dir),
        config,
        own_split=True,
        description=f"{dataset} from {data_dir}",
    )


# ----------------------------------------------------------------------------------------------
# splits


def _drop_masks(split: dict) -> dict:
    # only the test set's masks are used (pixel AUROC); a mask on a training entry would be loaded for nothing
    for name in ("normal", "validation", "unlabeled"):
        if name in split:
            split[name] = [{k: v for k, v in e.items() if k != "mask"} for e in split[name]]
    return split


def _fixed_sizes(source: Source) -> dict:
    return {k: source.sizes[k] for k in SIZE_KEYS}


def _group(e: dict):
    return ("p", str(e["patient_id"])) if "patient_id" in e else ("i", e["image"])


def free_for_unlabeled(source: Source, split_seed: int) -> tuple[int, int]:
    """Normal and abnormal images left for D_u once D_n, validation and test are drawn (by patient)."""
    fixed = build_split(
        source.normal, source.abnormal, n_unlabeled=0, anomaly_rate=0.0, seed=split_seed, **_fixed_sizes(source)
    )
    used = {_group(e) for name in ("normal", "validation", "test") for e in fixed.get(name, [])}
    return (sum(_group(e) not in used for e in source.normal), sum(_group(e) not in used for e in source.abnormal))


def _grid_step(ars) -> int:
    """Smallest |D_u| for which every AR x |D_u| is whole (5 for steps of 20%)."""
    return math.lcm(*(Fraction(ar).limit_denominator(1000).denominator for ar in ars))


def sweep_size(source: Source, ars, split_seed: int, n_unlabeled: int | None = None) -> dict:
    """|D_u| for the sweep: the given size, checked, or the largest feasible at every AR."""
    free_n, free_a = free_for_unlabeled(source, split_seed)
    s = source.sizes
    why = (
        f"the normal pool has {len(source.normal)} images, of which {free_n} are left for D_u after "
        f"{s['n_test_normal']} test normals, {s['n_validation']} validation and {s['n_normal']} D_n; the "
        f"abnormal pool has {len(source.abnormal)}, of which {free_a} are left after {s['n_test_abnormal']} "
        "test abnormals"
    )
    step = _grid_step(ars)
    if n_unlabeled is None:
        # a D_u at rate AR needs (1 - AR)|D_u| normals and AR |D_u| abnormals
        limit = min(free_n if min(ars) < 1 else math.inf, free_a if max(ars) > 0 else math.inf)
        n_unlabeled = int(limit // step * step) if limit != math.inf else 0
        if n_unlabeled < 1:
            raise ExperimentError(f"no |D_u| is feasible at every AR of {list(ars)}: {why}")
    for ar in ars:
        k = unlabeled_abnormal_count(float(ar), n_unlabeled, "AR sweep")
        for need, have, kind in ((n_unlabeled - k, free_n, "normal"), (k, free_a, "abnormal")):
            if need > have:
                raise ExperimentError(
                    f"|D_u| = {n_unlabeled} is infeasible at AR {ar:.0%}: it needs {need} "
                    f"{kind} images for D_u and {have} are available ({why})"
                )
    return {"n_unlabeled": n_unlabeled, "free_normal": free_n, "free_abnormal": free_a, "explanation": why}


def sweep_splits(source: Source, ars, n_unlabeled: int, split_seed: int, folder) -> dict[float, Path]:
    """One split file per AR, from one draw: same D_n, validation and test; D_u nested subsets of a reservoir."""
    base = _drop_masks(
        build_split(
            source.normal,
            source.abnormal,
            n_unlabeled=2 * n_unlabeled,
            anomaly_rate=0.5,
            seed=split_seed,
            **_fixed_sizes(source),
        )
    )
    rng = np.random.default_rng([split_seed, _RESERVOIR_STREAM])
    reservoir = {label: [e for e in base["unlabeled"] if e["label"] == label] for label in (0, 1)}
    order = {label: [entries[i] for i in rng.permutation(len(entries))] for label, entries in reservoir.items()}
    out = {}
    for ar in ars:
        k = unlabeled_abnormal_count(float(ar), n_unlabeled, "AR sweep")
        split = dict(
            base,
            anomaly_rate=float(ar),
            unlabeled=order[0][: n_unlabeled - k] + order[1][:k],
            description=f"AR sweep on {source.description}: D_u {n_unlabeled} at AR {ar} "
            f"({k} abnormal), split seed {split_seed}",
        )
        out[ar] = save_split(split, Path(folder) / f"ar_{round(100 * ar):03d}.json")
    return out


def backbone_split(source: Source, anomaly_rate: float, split_seed: int, folder) -> Path | None:
    """The backbone table's split: drawn from the pools, or None where the config's own split is used."""
    if source.own_split:
        return None
    split = build_split(
        source.normal,
        source.abnormal,
        n_unlabeled=source.sizes["n_unlabeled"],
        anomaly_rate=anomaly_rate,
        seed=split_seed,
        **_fixed_sizes(source),
        description=f"backbone table on {source.description}, split seed {split_seed}",
    )
    return save_split(_drop_masks(split), Path(folder) / f"backbones_ar_{round(100 * anomaly_rate):03d}.json")


# ----------------------------------------------------------------------------------------------
# cells


@dataclass
class Cell:
    """One complete bundle run (training, training_asr, evaluating) of an experiment table."""

    name: str
    folder: Path
    settings: dict
    config: Path | None
    method: str = "ddad"

    @property
    def metrics_file(self) -> Path:
        s = self.settings
        model = s["backbone"] if self.method == "ddad" else "salad"
        return self.folder / f"{s['modality']}_{s['dataset']}_{model}" / "eval" / "metrics.json"


def _load_json(path: Path):
    import json

    return json.loads(path.read_text())


def run_cell(cell: Cell) -> tuple[dict, bool]:
    """The cell's metrics and whether they were computed now (False: found from an earlier run)."""
    record = cell.folder / "cell.json"
    wanted = {"settings": cell.settings, "config": str(cell.config) if cell.config else None}
    if cell.method != "ddad":
        wanted["method"] = cell.method
    if record.is_file() and _load_json(record) != wanted:
        raise ExperimentError(
            f"{cell.folder} was run with other settings ({record}); give another --out or "
            "remove that folder: one table never mixes two protocols"
        )
    if cell.metrics_file.is_file():
        return _load_json(cell.metrics_file), False
    write_json_atomic(wanted, record)
    run_workflows(
        FIT_WORKFLOWS[cell.method], dict(cell.settings), [str(cell.config)] if cell.config else [], method=cell.method
    )
    return _load_json(cell.metrics_file), True


def _run_all(cells: list[Cell], log) -> list[dict]:
    results = []
    for i, cell in enumerate(cells, 1):
        start = time.time()
        metrics, ran = run_cell(cell)
        log(
            f"[{i}/{len(cells)}] {cell.name}: "
            + (f"done in {time.time() - start:.0f} s" if ran else "finished earlier, not rerun")
        )
        results.append(
            {
                "cell": cell.name,
                "ran": ran,
                "seconds": round(time.time() - start) if ran else None,
                "seed": cell.settings["seed"],
                "method": cell.method,
                "backbone": cell.settings.get("backbone") if cell.method == "ddad" else "salad",
                "auc": {name: m["auc"] for name, m in metrics.items()},
            }
        )
    return results


# ----------------------------------------------------------------------------------------------
# tables


def aggregate(values) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof 1) of the values; std None for one value, both None for none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def format_entry(values, digits: int = 3) -> str:
    """``0.812`` for one value, ``0.812 ± 0.010`` for several, ``n/a`` for none."""
    mean, std = aggregate(values)
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _csv_number(x):
    return "" if x is None else round(x, 6)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _write_runs(results: list[dict], path: Path, key: str) -> None:
    scores = list(dict.fromkeys(s for r in results for s in r["auc"]))
    rows = [
        {key: r[key], "seed": r["seed"], "cell": r["cell"], **{s: _csv_number(r["auc"].get(s)) for s in scores}}
        for r in results
    ]
    write_csv_atomic(rows, path)


# ----------------------------------------------------------------------------------------------
# the two experiments


@dataclass
class Schedule:
    """What every cell shares beyond the data: seeds, stage-1/2 epochs, further workflow overrides."""

    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None
    asr_epochs: int | None = None
    overrides: dict = field(default_factory=dict)
    figures: bool = True
    salad: dict = field(default_factory=dict)  # SALAD's schedule keys (salad_pretrain_epochs, ...)

    def settings_for(self, method: str) -> dict:
        """A cell's settings: DDAD's as ``settings()``; SALAD's schedule, figures and the shared overrides
        its configs define (stage-1/2 epochs are DDAD's keys and do not apply)."""
        if method == "ddad":
            return self.settings()
        from ..runtime.config_guard import known_keys

        known = known_keys([str(BUNDLE_ROOT / "configs" / f) for f in SALAD_CONFIGS])
        s = {k: v for k, v in self.overrides.items() if k.replace("::", "#") in known}
        s.update(self.salad, progress_bar=False)
        if not self.figures:
            s.update(figures_off_override("salad_evaluate.json"))
        return s

    def describe_salad(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.salad.items())) or "salad_train.json's schedule"

    def settings(self) -> dict:
        s = dict(self.overrides, progress_bar=False)
        if not self.figures:
            s.update(figures_off_override())
        if self.epochs is not None:
            s["epochs"] = self.epochs
        if self.asr_epochs is not None:
            s["asr_epochs"] = self.asr_epochs
        return s

    def describe(self, seeds: bool = True) -> str:
        parts = [
            f"stage 1 {self.epochs if self.epochs is not None else 'config default (250)'} epochs",
            f"stage 2 {self.asr_epochs if self.asr_epochs is not None else 'config default (100)'} epochs",
        ]
        parts += [f"{k} {v}" for k, v in sorted(self.overrides.items())]
        return ", ".join(parts) + (f"; seeds {' '.join(map(str, self.seeds))}" if seeds else "")


def figures_off_override(config: str = "evaluate.json") -> dict:
    """The override that skips a cell's evaluation figures: evaluate.json's ScoreReport with figures=False.

    Read from the config when used, so every other argument of the handler stays the config's.
    """
    content = _load_json(BUNDLE_ROOT / "configs" / config)
    # evaluate.json lists the evaluator's handlers at the top level (`handlers`, the model-zoo name);
    # the SALAD config keeps them inside the evaluator
    prefix, handlers = (
        ("handlers", content["handlers"])
        if "handlers" in content
        else ("evaluator#handlers", content["evaluator"]["handlers"])
    )
    for i, handler in enumerate(handlers):
        if str(handler.get("_target_", "")).endswith("ScoreReport"):
            return {f"{prefix}#{i}": dict(handler, figures=False)}
    raise ExperimentError(f"configs/{config}: no ScoreReport handler under {prefix}")


def _cell(out: Path, name: str, source: Source, schedule: Schedule, method: str = "ddad", **settings) -> Cell:
    folder = out / "cells" / name
    return Cell(
        name,
        folder,
        {**schedule.settings_for(method), **source.settings, **settings, "runs_dir": str(folder)},
        source.config,
        method,
    )


def _check_rates(ars) -> list[float]:
    ars = [float(a) for a in ars]
    for ar in ars:
        if not 0.0 <= ar <= 1.0:
            raise ExperimentError(f"anomaly rates must lie in [0, 1], got {ar!r}")
    return ars


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ExperimentError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _check_backbones(backbones) -> None:
    for b in backbones:
        if b not in BACKBONES:
            raise ExperimentError(f"unknown backbone {b!r}; choose from {', '.join(BACKBONES)}")


def _aggregated(values: dict[str, list]) -> dict:
    """CSV columns of one table row: per name its mean and ``<name>_std`` (empty where undefined)."""
    row = {}
    for name, vals in values.items():
        mean, std = aggregate(vals)
        row[name], row[f"{name}_std"] = _csv_number(mean), _csv_number(std)
    return row


def ar_sweep(
    source: Source,
    out,
    schedule: Schedule,
    backbone: str = "ae",
    ars=AR_STEPS,
    n_unlabeled: int | None = None,
    split_seed: int = 0,
    log=print,
    method: str = "ddad",
) -> dict:
    """Run (or resume) the AR sweep; writes ar_sweep.csv/.md/.png and ar_sweep_runs.csv; returns the table.

    ``method`` 'salad' sweeps SALAD (its scores A_knn, A_mse; the paper's Table 1 rows at 0-15%)."""
    out, ars = Path(out).resolve(), _check_rates(ars)
    _check_method(method)
    _check_backbones([backbone])
    scores = METHOD_SCORES[method]
    model = backbone if method == "ddad" else "salad"
    model_settings = {"backbone": backbone} if method == "ddad" else {}
    size = sweep_size(source, ars, split_seed, n_unlabeled)
    u = size["n_unlabeled"]
    splits = sweep_splits(source, ars, u, split_seed, out / "splits")
    plan = [(ar, seed) for ar in ars for seed in schedule.seeds]
    cells = [
        _cell(
            out,
            f"ar{round(100 * ar):03d}_{model}_seed{seed}",
            source,
            schedule,
            method,
            **model_settings,
            seed=seed,
            split_file=str(splits[ar]),
        )
        for ar, seed in plan
    ]
    results = _run_all(cells, log)
    for r, (ar, _) in zip(results, plan):
        r["anomaly_rate"] = ar
    values = {
        ar: {score: [r["auc"].get(score) for r in results if r["anomaly_rate"] == ar] for score in scores} for ar in ars
    }
    rows = [
        {
            "anomaly_rate": ar,
            "n_unlabeled": u,
            "n_unlabeled_abnormal": round(ar * u),
            "n_seeds": len(schedule.seeds),
            **_aggregated(values[ar]),
        }
        for ar in ars
    ]
    name = BACKBONE_NAMES[backbone] if method == "ddad" else "SALAD"
    header = _sweep_header(source, name, size, n_unlabeled is not None, split_seed, schedule, method)
    table = _markdown(
        ["AR", "\\|D_u\\| (abnormal)"] + list(scores),
        [
            [f"{r['anomaly_rate']:.0%}", f"{u} ({r['n_unlabeled_abnormal']})"]
            + [format_entry(values[r["anomaly_rate"]][score]) for score in scores]
            for r in rows
        ],
    )
    write_csv_atomic(rows, out / "ar_sweep.csv")
    write_text_atomic(out / "ar_sweep.md", header + "\n\n" + table + "\n")
    _write_runs(results, out / "ar_sweep_runs.csv", "anomaly_rate")
    plot_sweep(rows, out / "ar_sweep.png", f"{source.name}, {name}, |D_u| = {u}", scores)
    log(table)
    return {"rows": rows, "n_unlabeled": u, "results": results, "header": header}


def _sweep_header(
    source: Source,
    backbone: str,
    size: dict,
    requested: bool,
    split_seed: int,
    schedule: Schedule,
    method: str = "ddad",
) -> str:
    s = source.sizes
    why = "requested" if requested else "the largest feasible at every AR"
    model = f"backbone {backbone}" if method == "ddad" else "method SALAD"
    plan = (
        schedule.describe()
        if method == "ddad"
        else f"{schedule.describe_salad()}; seeds {' '.join(map(str, schedule.seeds))}"
    )
    return (
        f"AR sweep, {source.description}, {model}: |D_u| = {size['n_unlabeled']} at every AR "
        f"({why}: {size['explanation']}); D_n {s['n_normal']}, validation {s['n_validation']}, test "
        f"{s['n_test_normal']} + {s['n_test_abnormal']}, split seed {split_seed}; {plan}. "
        "Test AUC" + (", mean ± std over seeds." if len(schedule.seeds) > 1 else ".")
    )


def plot_sweep(rows: list[dict], path: Path, title: str, scores=SWEEP_SCORES) -> Path:
    """AUC against AR (%), one line per score, error bars = std over seeds where there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [100 * r["anomaly_rate"] for r in rows]
    for score in scores:
        y = [r[score] if r[score] != "" else np.nan for r in rows]
        err = [r[f"{score}_std"] if r[f"{score}_std"] != "" else 0.0 for r in rows]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=score)
    ax.set(xlabel="anomaly rate of D_u (%)", ylabel="test AUC", title=title, xticks=x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def backbone_table(
    source: Source,
    out,
    schedule: Schedule,
    backbones=BACKBONES,
    seeds: dict | None = None,
    anomaly_rate: float = 0.6,
    split_seed: int = 0,
    log=print,
) -> dict:
    """Run (or resume) the backbone table; writes backbones.csv/.md and backbones_runs.csv; returns it.

    ``seeds`` maps a backbone to its own seed list (the Kermany benchmark: AE 3 seeds, the others
    1); a backbone not in it uses ``schedule.seeds``.
    """
    out = Path(out).resolve()
    _check_backbones(backbones)
    seeds = {b: list((seeds or {}).get(b, schedule.seeds)) for b in backbones}
    split_file = backbone_split(source, anomaly_rate, split_seed, out / "splits")
    extra = {"split_file": str(split_file)} if split_file else {}
    cells = [
        _cell(out, f"{b}_seed{seed}", source, schedule, backbone=b, seed=seed, **extra)
        for b in backbones
        for seed in seeds[b]
    ]
    results = _run_all(cells, log)
    values = {
        score: {b: [r["auc"].get(score) for r in results if r["backbone"] == b] for b in backbones}
        for score in TABLE_SCORES
    }
    rows = [
        {"score": score, **_aggregated(values[score]), **{f"{b}_n_seeds": len(seeds[b]) for b in backbones}}
        for score in TABLE_SCORES
    ]
    s = source.sizes
    data = (
        f"the data set's own split (configs/datasets/{source.name}.json)"
        if split_file is None
        else f"D_n {s['n_normal']}, validation {s['n_validation']}, |D_u| = {s['n_unlabeled']} at AR "
        f"{anomaly_rate:.0%}, test {s['n_test_normal']} + {s['n_test_abnormal']}, split seed {split_seed}"
    )
    seed_text = "; ".join(f"{BACKBONE_NAMES[b]} seeds {' '.join(map(str, seeds[b]))}" for b in backbones)
    header = (
        f"Backbone table, {source.description}: {data}; {schedule.describe(seeds=False)}; {seed_text}. "
        "Test AUC, mean ± std over seeds where a backbone has several."
    )
    write_csv_atomic(rows, out / "backbones.csv")
    table = _markdown(
        ["score"] + [BACKBONE_NAMES[b] for b in backbones],
        [[score] + [format_entry(values[score][b]) for b in backbones] for score in TABLE_SCORES],
    )
    write_text_atomic(out / "backbones.md", header + "\n\n" + table + "\n")
    _write_runs(results, out / "backbones_runs.csv", "backbone")
    log(table)
    return {"rows": rows, "results": results, "header": header, "split_file": split_file}


def _baseline_configs(source: Source) -> list[str]:
    files = [str(BUNDLE_ROOT / "configs" / "common.json")]
    return files + ([str(source.config)] if source.config else [])


def compare(
    source: Source,
    out,
    schedule: Schedule,
    methods=METHODS,
    backbone: str = "ae",
    anomaly_rate: float = 0.6,
    split_seed: int = 0,
    log=print,
) -> dict:
    """DDAD and SALAD on one split, beside the trivial baselines on the same test images.

    One split (drawn from the pools at ``anomaly_rate``, or the data set's own); per seed one DDAD
    cell (``backbone``) and one SALAD cell. Writes ``compare.csv`` (one row per method and score,
    and per baseline: AUC mean, std, seeds), ``compare.md`` and ``compare_runs.csv``; returns them.
    """
    from .baselines import trivial_baselines

    out = Path(out).resolve()
    for method in methods:
        _check_method(method)
    _check_backbones([backbone])
    split_file = backbone_split(source, anomaly_rate, split_seed, out / "splits")
    extra = {"split_file": str(split_file)} if split_file else {}
    cells = []
    for seed in schedule.seeds:
        if "ddad" in methods:
            cells.append(
                _cell(out, f"ddad_{backbone}_seed{seed}", source, schedule, backbone=backbone, seed=seed, **extra)
            )
        if "salad" in methods:
            cells.append(_cell(out, f"salad_seed{seed}", source, schedule, "salad", seed=seed, **extra))
    results = _run_all(cells, log)
    names = {"ddad": f"DDAD ({BACKBONE_NAMES[backbone]})", "salad": "SALAD"}
    scores = {"ddad": TABLE_SCORES, "salad": SALAD_SCORES}
    rows, table = [], []
    for method in methods:
        for score in scores[method]:
            values = [r["auc"].get(score) for r in results if r["method"] == method]
            mean, std = aggregate(values)
            rows.append(
                {
                    "method": names[method],
                    "score": score,
                    "auc": _csv_number(mean),
                    "auc_std": _csv_number(std),
                    "n_seeds": sum(v is not None for v in values),
                }
            )
            table.append([names[method], score, format_entry(values), str(rows[-1]["n_seeds"])])
    base = trivial_baselines(
        _baseline_configs(source),
        {**source.settings, **schedule.settings(), **extra, "runs_dir": str(out / "cells" / "baselines")},
    )
    for name, auc in base.items():
        rows.append({"method": "baseline", "score": name, "auc": _csv_number(auc), "auc_std": "", "n_seeds": ""})
        table.append(["trivial baseline", name, f"{auc:.3f}", "-"])
    s = source.sizes
    data = (
        f"the data set's own split (configs/datasets/{source.name}.json)"
        if split_file is None
        else f"D_n {s['n_normal']}, validation {s['n_validation']}, |D_u| = {s.get('n_unlabeled')} at AR "
        f"{anomaly_rate:.0%}, test {s['n_test_normal']} + {s['n_test_abnormal']}, split seed {split_seed}"
    )
    plan = []
    if "ddad" in methods:
        plan.append(f"DDAD: {schedule.describe(seeds=False)}")
    if "salad" in methods:
        plan.append(f"SALAD: {schedule.describe_salad()}")
    header = (
        f"Method comparison, {source.description}: {data}; {'; '.join(plan)}; seeds "
        f"{' '.join(map(str, schedule.seeds))}. Test AUC (mean ± std over seeds); the baselines are image "
        "statistics of the same preprocessed test images (scripts/tools/baselines.py)."
    )
    markdown = header + "\n\n" + _markdown(["method", "score", "test AUC", "seeds"], table) + "\n"
    write_csv_atomic(rows, out / "compare.csv")
    write_text_atomic(out / "compare.md", markdown)
    _write_runs(results, out / "compare_runs.csv", "method")
    log(markdown)
    return {"rows": rows, "results": results, "baselines": base, "header": header, "split_file": split_file}


# ----------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddad experiment",
        description=__doc__.split("\n\n")[0],
        epilog="Further --key value pairs are bundle config overrides for every cell "
        "(e.g. --batch_size 16 --lr_schedule cosine --image_size 32).",
    )
    p.add_argument("experiment", choices=["ar_sweep", "backbones", "compare"])
    p.add_argument("--dataset", default="phantom", choices=DATASETS)
    p.add_argument("--data_dir", default=None, help="folder tree, prepared --out folder, or the Kermany folder")
    p.add_argument("--modality", default=None, choices=["cxr", "brain", "fundus"], help="default: the data set's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one cell each")
    p.add_argument("--split_seed", type=int, default=0, help="seed of the split (and of the phantoms)")
    p.add_argument("--epochs", type=int, default=None, help="stage-1 epochs (default: the config's, 250)")
    p.add_argument("--asr_epochs", type=int, default=None, help="stage-2 epochs (default: the config's, 100)")
    p.add_argument("--out", default=None, help="default: runs/experiments/<experiment>_<dataset>")
    p.add_argument("--backbone", default="ae", choices=BACKBONES, help="ar_sweep, compare: DDAD's backbone")
    p.add_argument("--method", default="ddad", choices=METHODS, help="ar_sweep: the method (salad: docs/salad.md)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="compare: the methods")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES, help="backbones: columns")
    p.add_argument("--ars", type=float, nargs="+", default=list(AR_STEPS), help="ar_sweep: the anomaly rates")
    p.add_argument("--anomaly_rate", type=float, default=0.6, help="backbones, compare: AR of D_u (pool-drawn splits)")
    p.add_argument(
        "--n_unlabeled", type=int, default=None, help="|D_u| (ar_sweep default: the largest feasible at every AR)"
    )
    for key in SIZE_KEYS:
        p.add_argument(f"--{key}", type=int, default=None, help="default: the data set's")
    p.add_argument("--phantom_size", type=int, default=128, help="phantom: rendered size before resizing")
    p.add_argument(
        "--no_figures",
        action="store_true",
        help="skip each cell's histograms and map panel (most of a tiny cell's time)",
    )
    return p


def main(argv: list[str]) -> int:
    """``python -m ddad_bundle experiment ...``; errors raise ValueError for the CLI to report."""
    args, rest = build_parser().parse_known_args(argv)
    out = Path(args.out or Path("runs") / "experiments" / f"{args.experiment}_{args.dataset}")
    sizes = {k: getattr(args, k) for k in SIZE_KEYS + ("n_unlabeled",)}
    source = prepare(args.dataset, out, args.data_dir, args.modality, args.split_seed, sizes, args.phantom_size)
    overrides = parse_overrides(rest)
    # salad_* keys are SALAD's schedule (docs/salad.md); the others go to every cell whose configs define them
    salad = {k: overrides.pop(k) for k in list(overrides) if k.startswith("salad_")}
    schedule = Schedule(args.seeds, args.epochs, args.asr_epochs, overrides, not args.no_figures, salad)
    if args.experiment == "ar_sweep":
        ar_sweep(source, out, schedule, args.backbone, args.ars, args.n_unlabeled, args.split_seed, method=args.method)
    elif args.experiment == "compare":
        compare(source, out, schedule, args.methods, args.backbone, args.anomaly_rate, args.split_seed)
    else:
        backbone_table(
            source, out, schedule, args.backbones, anomaly_rate=args.anomaly_rate, split_seed=args.split_seed
        )
    print(f"tables in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
