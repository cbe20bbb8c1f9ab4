"""Stage 2 on trained stage-1 runs: which synthetic anomalies move which maps (patch response).

For every run folder given (a finished ``training`` workflow: ``models/ndm_member*.pt`` and
``udm_member*.pt``, its ``run_record_training.json``), loads the frozen ensembles, draws a fixed
seeded sample of training normals (D_n) and of the held-out validation normals, applies every
synthesis family to each image (probability 1, donors as in training) and reports per family and
map the patch response (``scripts.scoring.refiner_diagnostics.patch_response``).

    .venv/bin/python benchmarks/stage2_study.py response RUN_DIR [RUN_DIR ...] [--families fpi blob ...]
        [--n 64] [--out response.json]

``train`` runs stage 2 and the evaluation again on a finished stage-1 cell (a folder written by
``python -m ddad_bundle experiment`` or benchmarks/kermany.py, holding ``cell.json``) with other
stage-2 settings, in a new folder whose ``models/`` links the cell's stage-1 weights:

    .venv/bin/python benchmarks/stage2_study.py train CELL_DIR --out DIR [--key value ...]
        (e.g. --synthesis "['blob','intensity']" --synthesis_holdout fpi_unlabeled --asr_epochs 8)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "ddad_bundle")]

import torch  # noqa: E402

from scripts.scoring.anomaly_families import FAMILIES, FamilySynthesizer  # noqa: E402
from scripts.scoring.refiner_diagnostics import patch_response  # noqa: E402


def run_settings(run_dir: Path) -> dict:
    """The overrides a stage-1 run was trained with: its experiment cell's, else its run record's."""
    cell = run_dir.parent / "cell.json"
    if cell.is_file():
        return json.loads(cell.read_text())["settings"]
    return json.loads((run_dir / "run_record_training.json").read_text())["overrides"]


def load_run(run_dir: Path):
    from monai.bundle import ConfigParser

    # the cell's settings on the current config files (the recorded config may predate the layout)
    settings = run_settings(run_dir)
    parser = ConfigParser()
    parser.read_config([str(REPO / "ddad_bundle" / "configs" / f) for f in ("common.json", "train.json")])
    parser.update({k: v for k, v in settings.items() if k != "runs_dir"})
    parser["ckpt_dir"] = str(run_dir / "models")
    from scripts.data.cache import cache_images
    from scripts.data.splits import datalist
    from scripts.engines.evaluation import load_members
    from scripts.engines.refinement import MapExtractor

    split = parser.get_parsed_content("split")
    prep = parser.get_parsed_content("preprocessing")
    net = parser.get_parsed_content("network_def")
    k = parser.get_parsed_content("num_members")
    ndm = load_members(net, run_dir / "models", "ndm", k)
    udm = load_members(net, run_dir / "models", "udm", k)
    extractor = MapExtractor(ndm, udm, parser.get_parsed_content("heteroscedastic"))
    pools = {
        "train": cache_images(datalist(split.normal), prep, "normal"),
        "validation": cache_images(datalist(split.validation), prep, "validation"),
        "unlabeled": cache_images(datalist(split.unlabeled), prep, "unlabeled"),
    }
    return extractor, pools


def train(argv) -> int:
    """Stage 2 + evaluation on a stage-1 cell with extra overrides; prints the metrics table."""
    from scripts.runtime.config_guard import parse_overrides
    from scripts.runtime.workflows import run_workflows

    ap = argparse.ArgumentParser()
    ap.add_argument("cell", help="the runs_dir of a finished stage-1 run (an experiment cell or e.g. runs/demo)")
    ap.add_argument("--out", required=True)
    opts, rest = ap.parse_known_args(argv)
    cell = Path(opts.cell)
    run_name = next(p.name for p in cell.iterdir() if p.is_dir() and (p / "models").is_dir())
    settings = run_settings(cell / run_name)
    target = Path(opts.out).resolve() / run_name
    (target / "models").mkdir(parents=True, exist_ok=True)
    for weights in (cell / run_name / "models").glob("*_member*.pt"):
        if "checkpoint" not in weights.name and not (target / "models" / weights.name).exists():
            (target / "models" / weights.name).symlink_to(weights.resolve())
    overrides = {k: v for k, v in settings.items() if k not in ("save_every",)}
    overrides.update(runs_dir=str(Path(opts.out).resolve()), progress_bar=False, **parse_overrides(rest))
    run_workflows(["training_asr", "evaluating"], overrides)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return train(argv[1:])
    if argv and argv[0] == "response":
        argv = argv[1:]
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    opts = ap.parse_args(argv)
    torch.set_num_threads(2)
    results = {}
    for run in map(Path, opts.runs):
        extractor, pools = load_run(run)
        for pool in ("train", "validation"):
            g = torch.Generator().manual_seed(opts.seed)
            images = pools[pool][torch.randperm(len(pools[pool]), generator=g)[: opts.n]]
            for family in opts.families:
                synth = FamilySynthesizer([family], pools["unlabeled"], prob=1.0)
                altered, labels, _ = synth(images, opts.seed)
                r = patch_response(extractor, images, altered, labels)
                results.setdefault(str(run), {}).setdefault(pool, {})[family] = r
                print(
                    f"{run.name:>24} {pool:>10} {family:>14} "
                    + "  ".join(
                        f"{m}: x{v['ratio']:.2f} paired {v['paired_share']:.2f} pix {v['pixel_auroc']:.2f}"
                        for m, v in r.items()
                    ),
                    flush=True,
                )
    if opts.out:
        Path(opts.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
