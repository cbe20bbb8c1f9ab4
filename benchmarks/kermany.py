"""DDAD on real chest X-rays: the backbone table on the Kermany pediatric pneumonia set, with baselines.

Data: the folder given as ``--data_dir`` (Kermany et al. 2018, CC BY 4.0; 1579 normal and
4245 pneumonia 128x128 PNGs with a ``manifest.csv``), read from there, never copied.

Protocol (seeded, patient-disjoint for both classes; patient ids from the file names:
``personN_...`` for pneumonia, ``IM-XXXX`` / ``NORMAL2-IM-XXXX`` for normals): one split drawn
with ``--split_seed`` (default 0) by ``scripts.data.splits.build_split``: D_n 540 known normals for
training plus 60 validation normals (stage-2 selection and the threshold; never the test set),
D_u 1000 at AR 0.6 (400 normal + 600 pneumonia), test 300 normal + 300 pneumonia; 64x64, K = 3.
The backbone table (the journal's Table 3: AE, MemAE, AE-U x A_rec, A_rec_ensemble, A_intra,
A_inter, R_intra, R_dual) runs through ``scripts.tools.experiments.backbone_table``: AE with seeds
0 1 2, MemAE and AE-U with seed 0 (``--ae_seeds``, ``--seeds``), each cell a full bundle run in
``<out>/cells/<backbone>_seed<k>/``, finished cells never rerun. The seeds change member
initialization, shuffling and synthetic anomalies, not the split. Schedule: the demo's shortened
one (stage 1 30 epochs, batch 16, cosine rate; stage 2 10 epochs), stated in the output; a
reduced budget, not the paper's 250 + 100 epochs. Trivial baselines on the same preprocessed test
images: mean intensity, intensity standard deviation, L2 distance to the mean training normal
(intensities are scaled per image to [-1, 1] by the bundle's preprocessing).

    .venv/bin/python benchmarks/kermany.py --data_dir /path/to/cxr_kermany_pneumonia [--epochs 30] [--asr_epochs 10] [--ae_seeds 0 1 2] [--seeds 0]
        [--backbones ae memae aeu] [--split_seed 0] [--out runs/kermany]
        [--n_normal 540 --n_validation 60 --n_unlabeled 1000 --n_test_normal 300 --n_test_abnormal 300]
        [--key value ...]            # further bundle overrides for every cell (e.g. --image_size 32)

Writes ``<out>/benchmark.json`` (protocol, schedule, seeds, per-run and aggregated AUCs,
baselines, time, machine), ``<out>/benchmark.csv`` (one row per score or baseline and backbone:
mean, std, seeds) and ``<out>/benchmark.md``, beside the experiment's ``backbones.csv/.md``.
The full run takes about an hour on a 2-core CPU (five cells of about 11 minutes).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "ddad_bundle")]

from scripts.tools import experiments  # noqa: E402
from scripts.tools.experiments import BACKBONE_NAMES, DEFAULT_SIZES, SIZE_KEYS  # noqa: E402

SCHEDULE = {"epochs": 30, "asr_epochs": 10, "batch_size": 16, "lr_schedule": "cosine"}
BASELINES = ("mean intensity", "intensity std", "L2 to mean normal")


def baselines(split_file, overrides: dict) -> dict:
    """AUCs of trivial image statistics on the test set of ``split_file``, preprocessed as the bundle does."""
    import numpy as np
    from monai.bundle import ConfigParser
    from sklearn.metrics import roc_auc_score

    from scripts.data.cache import cache_images
    from scripts.data.splits import datalist, load_split

    parser = ConfigParser()
    parser.read_config([str(REPO / "ddad_bundle" / "configs" / f) for f in ("common.json", "train.json")])
    parser.update({k: v for k, v in overrides.items() if k in ("image_size", "channels")})
    parser.update({"split_file": str(split_file), "modality": "cxr"})
    split = load_split(split_file)
    transform = parser.get_parsed_content("preprocessing")
    train = cache_images(datalist(split.normal), transform, "normal").numpy()
    test = cache_images(datalist(split.test), transform, "test").numpy()
    labels = np.array([e["label"] for e in split.test])
    stats = {
        "mean intensity": test.mean(axis=(1, 2, 3)),
        "intensity std": test.std(axis=(1, 2, 3)),
        "L2 to mean normal": np.sqrt(((test - train.mean(axis=0)) ** 2).sum(axis=(1, 2, 3))),
    }
    return {name: float(roc_auc_score(labels, values)) for name, values in stats.items()}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=SCHEDULE["epochs"])
    p.add_argument("--asr_epochs", type=int, default=SCHEDULE["asr_epochs"])
    p.add_argument("--ae_seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the AE column")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the MemAE and AE-U columns")
    p.add_argument("--backbones", nargs="+", default=list(experiments.BACKBONES), choices=experiments.BACKBONES)
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--data_dir", required=True, help="the Kermany chest X-ray folder (with its manifest.csv)")
    p.add_argument("--out", default=str(REPO / "runs" / "kermany"))
    for key in SIZE_KEYS + ("n_unlabeled",):
        p.add_argument(f"--{key}", type=int, default=DEFAULT_SIZES["kermany"][key])
    return p.parse_known_args(argv)


def summary_rows(table: dict, base: dict) -> list[dict]:
    rows = []
    for row in table["rows"]:
        for b in table["backbones"]:
            rows.append(
                {
                    "score": row["score"],
                    "backbone": b,
                    "auc_mean": row[b],
                    "auc_std": row[f"{b}_std"],
                    "n_seeds": row[f"{b}_n_seeds"],
                }
            )
    rows += [
        {"score": f"baseline: {name}", "backbone": "", "auc_mean": round(auc, 6), "auc_std": "", "n_seeds": ""}
        for name, auc in base.items()
    ]
    return rows


def main(argv=None) -> int:
    from scripts.runtime.config_guard import parse_overrides

    opts, rest = parse(argv)
    if not Path(opts.data_dir).is_dir():
        print(f"{opts.data_dir} not found: give --data_dir, the Kermany chest X-ray folder", file=sys.stderr)
        return 2
    out = Path(opts.out).resolve()
    overrides = dict(batch_size=SCHEDULE["batch_size"], lr_schedule=SCHEDULE["lr_schedule"], **parse_overrides(rest))
    try:
        return run(opts, out, overrides)
    except ValueError as error:  # ExperimentError, SplitError: one clear line, like the bundle's CLI
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(opts, out: Path, overrides: dict) -> int:
    from scripts.runtime.files import write_csv_atomic, write_json_atomic, write_text_atomic

    source = experiments.prepare(
        "kermany",
        out,
        opts.data_dir,
        split_seed=opts.split_seed,
        sizes={k: getattr(opts, k) for k in SIZE_KEYS + ("n_unlabeled",)},
    )
    schedule = experiments.Schedule(opts.seeds, opts.epochs, opts.asr_epochs, overrides)
    start = time.time()
    table = experiments.backbone_table(
        source, out, schedule, opts.backbones, seeds={"ae": opts.ae_seeds}, anomaly_rate=0.6, split_seed=opts.split_seed
    )
    table["backbones"] = opts.backbones
    elapsed = time.time() - start
    base = baselines(table["split_file"], overrides)
    result = {
        "protocol": dict(source.sizes, anomaly_rate=0.6, split_seed=opts.split_seed, data=str(opts.data_dir)),
        "schedule": schedule.settings(),
        "seeds": {b: (opts.ae_seeds if b == "ae" else opts.seeds) for b in opts.backbones},
        "seconds_this_invocation": round(elapsed),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
        "runs": table["results"],
        "summary": summary_rows(table, base),
        "baselines": base,
    }
    write_json_atomic(result, out / "benchmark.json")
    write_csv_atomic(result["summary"], out / "benchmark.csv")
    baseline_table = "| baseline (same test images) | AUC |\n|---|---|\n" + "\n".join(
        f"| {name} | {auc:.3f} |" for name, auc in base.items()
    )
    md = (out / "backbones.md").read_text().rstrip("\n") + "\n\n" + baseline_table + "\n"
    write_text_atomic(out / "benchmark.md", md)
    print(md)
    print(
        f"{elapsed:.0f} s; results in {out / 'benchmark.json'} ({', '.join(BACKBONE_NAMES[b] for b in opts.backbones)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
