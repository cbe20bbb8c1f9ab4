"""Published facts from measured runs: ``metadata.json``'s ``eval_metrics`` from an evaluation's ``metrics.json``.

The model zoo shows ``eval_metrics`` as the bundle's results, so they are copied from a run's
``eval/metrics.json`` by this command instead of being typed in, and they change only when a new
run is published::

    python -m ddad_bundle publish_metrics runs/demo/cxr_phantom_ae/eval/metrics.json --name demo_cxr_phantom

writes ``demo_cxr_phantom_<score>_image_auc`` for every score of the run (``--scores`` picks some),
leaving out a refined score whose refiner showed no learned signal (``selection_reliable`` false),
and removes that name's entries of scores the run does not have; other names' entries stay. The
published ``metrics.json`` is kept beside ``metadata.json`` as ``published/<name>.metrics.json``
(with the scores chosen), so :func:`eval_metrics_problems` can tell a published entry from one
typed in or edited by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ..runtime.files import write_json_atomic
from ..scoring.scores import ALL_SCORES


def unreliable_scores(metrics: dict) -> list:
    """Scores whose stage-2 selection showed no learned signal (``selection_reliable`` false)."""
    return [s for s, entry in metrics.items() if isinstance(entry, dict) and entry.get("selection_reliable") is False]


def eval_metric_entries(metrics: dict, name: str, scores: Optional[Sequence[str]] = None) -> dict:
    """``{<name>_<score>_image_auc: auc}`` of a ``metrics.json`` content, AUCs rounded to 3 digits.

    Without ``scores``: every score with an AUC except those whose refiner showed no learned signal
    on the validation set, whose test AUC is not a result to publish (docs/README.md). Named in
    ``scores``, such a score is refused."""
    unreliable = unreliable_scores(metrics)
    if scores:
        chosen = list(scores)
        refused = [s for s in chosen if s in unreliable]
        if refused:
            raise ValueError(
                f"{', '.join(refused)}: the refiner showed no learned signal on the validation set "
                "(selection_reliable false in metrics.json), so its test AUC is not published"
            )
    else:
        chosen = [s for s, e in metrics.items() if isinstance(e, dict) and "auc" in e and s not in unreliable]
    missing = [s for s in chosen if s not in metrics or "auc" not in metrics[s]]
    if missing:
        raise KeyError(f"metrics.json has no auc for {', '.join(missing)} (it has {', '.join(metrics)})")
    return {f"{name}_{s}_image_auc": round(float(metrics[s]["auc"]), 3) for s in chosen}


def published_dir(metadata_file) -> Path:
    """Where the ``metrics.json`` files published into ``metadata_file`` are kept."""
    return Path(metadata_file).parent / "published"


def publish_eval_metrics(metrics_file, metadata_file, name: str, scores: Optional[Sequence[str]] = None) -> dict:
    """Replace ``name``'s entries of ``eval_metrics`` in ``metadata_file`` and keep the run's metrics
    as ``published/<name>.metrics.json``; returns the new ``eval_metrics``."""
    metrics_file, metadata_file = Path(metrics_file), Path(metadata_file)
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} does not exist: run the 'evaluating' workflow first")
    metrics = json.loads(metrics_file.read_text())
    entries = eval_metric_entries(metrics, name, scores)
    record = {"metrics_file": str(metrics_file), "scores": list(scores) if scores else None, "metrics": metrics}
    published_dir(metadata_file).mkdir(exist_ok=True)
    write_json_atomic(record, published_dir(metadata_file) / f"{name}.metrics.json", indent=1)
    metadata = json.loads(metadata_file.read_text())
    stale = {f"{name}_{s}_image_auc" for s in ALL_SCORES}
    kept = {k: v for k, v in metadata.get("eval_metrics", {}).items() if k not in stale}
    metadata["eval_metrics"] = dict(sorted({**kept, **entries}.items()))
    write_json_atomic(metadata, metadata_file, indent=4)
    return metadata["eval_metrics"]


def eval_metrics_problems(metadata_file) -> list:
    """How ``metadata_file``'s ``eval_metrics`` differ from what its published runs give (empty when
    they agree): an entry no published run writes, or one whose value is not the run's."""
    metadata_file = Path(metadata_file)
    stated = json.loads(metadata_file.read_text()).get("eval_metrics", {})
    expected = {}
    for record_file in sorted(published_dir(metadata_file).glob("*.metrics.json")):
        record = json.loads(record_file.read_text())
        name = record_file.name.removesuffix(".metrics.json")
        expected.update(eval_metric_entries(record["metrics"], name, record["scores"]))
    problems = [
        f"{k}: {v} in {metadata_file.name}, no published run writes it" for k, v in stated.items() if k not in expected
    ]
    problems += [
        f"{k}: {stated.get(k, 'missing')} in {metadata_file.name}, the published run gives {v}"
        for k, v in expected.items()
        if stated.get(k) != v
    ]
    return problems
