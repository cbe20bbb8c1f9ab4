"""DDAD on real chest X-rays: the Kermany pediatric pneumonia set read from ../shared/data.

Protocol (seeded, patient-disjoint for both classes; patient ids from the file names:
``personN_...`` for pneumonia, ``IM-XXXX`` / ``NORMAL2-IM-XXXX`` for normals):
D_n 600 known normals (a seeded 10% of them held out for validation), D_u 1000 at AR 0.6
(400 normal + 600 pneumonia), test 300 normal + 300 pneumonia. Both stages train with the
demo's shortened schedule (stated in the output), then the test set is scored. Trivial
baselines are computed on the same preprocessed test images: mean intensity, intensity
standard deviation, and the L2 distance to the mean training normal.

    .venv/bin/python benchmarks/kermany.py [--epochs 30] [--asr_epochs 10] [--seed 0] [--out runs/kermany]

Writes ``<out>/benchmark.json`` and ``<out>/benchmark.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cxr_kermany_pneumonia"
sys.path[:0] = [str(REPO), str(REPO / "ddad_bundle")]

SIZES = {"n_normal": 600, "n_unlabeled": 1000, "anomaly_rate": 0.6, "n_test_normal": 300, "n_test_abnormal": 300}


def patient_id(name: str) -> str:
    stem = Path(name).name
    person = re.match(r"(person\d+)_", stem)
    if person:
        return person.group(1)
    normal = re.match(r"((?:NORMAL2-)?IM-\d+)", stem)
    return normal.group(1) if normal else stem


def pools(data: Path):
    normal, abnormal = [], []
    with open(data / "manifest.csv") as f:
        for row in csv.DictReader(f):
            entry = {"image": str(data / row["file"]), "patient_id": patient_id(row["file"])}
            (normal if row["label"] == "normal" else abnormal).append(entry)
    return normal, abnormal


def make_split(out: Path, seed: int) -> Path:
    from scripts.splits import build_split, save_split

    normal, abnormal = pools(DATA)
    split = build_split(normal, abnormal, seed=seed, description=(
        f"Kermany pediatric CXR from {DATA}; patient-disjoint; D_n {SIZES['n_normal']}, D_u {SIZES['n_unlabeled']} at "
        f"AR {SIZES['anomaly_rate']}, test {SIZES['n_test_normal']}+{SIZES['n_test_abnormal']}"), **SIZES)
    return save_split(split, out / "split.json")


def baselines(settings: dict) -> dict:
    """Trivial image statistics on the same preprocessed test set, as AUCs."""
    import numpy as np
    from monai.bundle import ConfigParser
    from sklearn.metrics import roc_auc_score

    from scripts.data import cache_images
    from scripts.splits import datalist, load_split

    parser = ConfigParser()
    parser.read_config([str(REPO / "ddad_bundle" / "configs" / f) for f in ("common.json", "train.json")])
    parser.update(settings)
    split = load_split(settings["split_file"], seed=settings["seed"])
    transform = parser.get_parsed_content("preprocessing")
    train = cache_images(datalist(split.normal), transform, "normal").numpy()
    test = cache_images(datalist(split.test), transform, "test").numpy()
    labels = np.array([e["label"] for e in split.test])
    mean_normal = train.mean(axis=0)
    stats = {
        "mean intensity": test.mean(axis=(1, 2, 3)),
        "intensity std": test.std(axis=(1, 2, 3)),
        "L2 to mean normal": np.sqrt(((test - mean_normal) ** 2).sum(axis=(1, 2, 3))),
    }
    return {name: float(roc_auc_score(labels, values)) for name, values in stats.items()}


def main(argv=None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--epochs", type=int, default=30)
    args.add_argument("--asr_epochs", type=int, default=10)
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--backbone", default="ae")
    args.add_argument("--out", default=str(REPO / "runs" / "kermany"))
    opts = args.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} not found: this benchmark reads the shared Kermany data set", file=sys.stderr)
        return 2
    from ddad_bundle.cli import run_workflows

    out = Path(opts.out).resolve()
    split_file = make_split(out / "data", opts.seed)
    settings = {"split_file": str(split_file), "dataset": "kermany", "modality": "cxr", "seed": opts.seed,
                "backbone": opts.backbone, "runs_dir": str(out), "epochs": opts.epochs, "batch_size": 16,
                "lr_schedule": "cosine", "asr_epochs": opts.asr_epochs, "progress_bar": False}
    start = time.time()
    run_workflows(["training", "training_asr", "evaluating"], settings)
    elapsed = time.time() - start
    metrics = json.loads((out / f"cxr_kermany_{opts.backbone}" / "eval" / "metrics.json").read_text())
    result = {"protocol": SIZES, "schedule": {k: settings[k] for k in ("epochs", "batch_size", "lr_schedule", "asr_epochs")},
              "seed": opts.seed, "backbone": opts.backbone, "seconds": round(elapsed),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
              "metrics": metrics, "baselines": baselines({k: v for k, v in settings.items() if k in
                                                          ("split_file", "dataset", "modality", "seed", "runs_dir")})}
    (out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {name} | {m['auc']:.3f} | {m['ap']:.3f} | [{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}] |"
            for name, m in metrics.items()]
    rows += [f"| baseline: {name} | {auc:.3f} | | |" for name, auc in result["baselines"].items()]
    table = "| score | AUC | AP | AUC 95% CI |\n|---|---|---|---|\n" + "\n".join(rows)
    (out / "benchmark.md").write_text(table + "\n")
    print(table)
    print(f"{elapsed:.0f} s; results in {out / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
