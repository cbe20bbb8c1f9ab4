"""Evaluation reports: ``metrics.json``, a per-image CSV of scores, and a printed table.

``metrics.json`` maps each score name (``A_rec``, ``A_rec_ensemble``, ``A_intra``, ``A_inter``,
``R_intra``, ``R_dual``) to ``{"auc", "ap", ...}`` (fractions in [0, 1]); ``pixel_auroc`` where the
test images have masks; ``auc_ci95`` (stratified bootstrap), ``f1_max`` and ``sens_at_spec95``;
the chi-squared distance between the normal and abnormal score histograms (``chi2``); and, for
``A_rec``, the AUC of every NDM member alone (``auc_per_member``). Figures: ``histograms.png``
(the journal paper's Fig. 6) and ``maps.png`` (its Fig. 7) for ``panel_images`` test images,
half normal and half abnormal.

Example (config)::

    {"_target_": "scripts.handlers.reports.ScoreReport", "output_dir": "@output_dir"}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events
from sklearn.metrics import roc_auc_score

from .figures import map_panel, score_histograms
from ..runtime.files import write_csv_atomic, write_json_atomic
from ..scoring.metrics import chi2_histogram_distance, summarize_scores
from ..scoring.scores import REFINER_SCORES
from ..scoring.scores import ALL_SCORES

logger = logging.getLogger("ddad")


def format_table(metrics: dict) -> str:
    """A fixed-width text table of every score's image AUC / AP (and pixel AUROC when present)."""
    pixel = any("pixel_auroc" in m for m in metrics.values())
    header = f"{'score':<16}{'AUC':>8}{'AP':>8}" + (f"{'pixel AUROC':>13}" if pixel else "")
    lines = [header, "-" * len(header)]
    for name, m in metrics.items():
        row = f"{name:<16}{m['auc']:>8.3f}{m['ap']:>8.3f}"
        if pixel:
            row += f"{m.get('pixel_auroc', float('nan')):>13.3f}"
        lines.append(row)
    lines += stage2_notes(metrics)
    return "\n".join(lines)


def stage2_notes(metrics: dict) -> list[str]:
    """Lines under the table: what stage 2 had to learn from, and whether each refiner learned."""
    lines = []
    response = {n: m["patch_response"] for n, m in metrics.items() if "patch_response" in m}
    if response:
        lines.append(
            "stage 2 patch response (altered above clean twin, training synthesis, training normals): "
            + ", ".join(f"{n} {r['paired_share']:.2f}" for n, r in response.items())
        )
    for name, m in metrics.items():
        if "selection_val_auc" not in m:
            continue
        low, high = m.get("selection_val_auc_ci95", [float("nan")] * 2)
        verdict = "reliable" if m.get("selection_reliable") else "NOT reliable: no learned signal, not deployed by auto"
        lines.append(
            f"{name}: held-out AUC {m['selection_val_auc']:.3f} [{low:.3f}, {high:.3f}], chance p "
            f"{m.get('selection_chance_probability', float('nan')):.2g}, final loss "
            f"{m.get('selection_loss_ratio', float('nan')):.2f} x constant prediction: {verdict}"
        )
    return lines


class ScoreReport:
    """Collects per-image scores during evaluation; writes metrics.json and scores.csv at the end.

    Args:
        output_dir: folder of the reports.
        n_boot: bootstrap resamples for ``auc_ci95``.
        seed: seed of the bootstrap.
        print_table: print the AUC/AP table to stdout.
        selection_file: stage 2's ``asr_selection.json``; its validation AUCs are copied into the R
            scores' entries (``selection_val_auc``, ``selection_reliable``) and flagged in the table.
        score_names: the scores to report, in order; default DDAD's (``ALL_SCORES``, those present).
            SALAD's evaluation gives its own (``A_knn``, ``A_mse``).
    """

    def __init__(
        self,
        output_dir,
        n_boot: int = 1000,
        seed: int = 0,
        print_table: bool = True,
        panel_images: int = 6,
        figures: bool = True,
        selection_file=None,
        score_names=None,
    ):
        self.output_dir = Path(output_dir)
        self.score_names = list(score_names) if score_names else list(ALL_SCORES)
        self.selection_file = Path(selection_file) if selection_file else None
        self.panel_images = panel_images
        self.figures = figures
        self.samples: list[dict] = []
        self.n_boot = n_boot
        self.seed = seed
        self.print_table = print_table
        self.rows: list[dict] = []
        self.member_scores: list[np.ndarray] = []
        self.pixels: dict[str, list[np.ndarray]] = {}
        self.metrics: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.rows, self.member_scores, self.pixels, self.samples = [], [], {}, []

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        labels = output["label"].detach().cpu().numpy().astype(int)
        scores = {k: v.detach().float().cpu().numpy() for k, v in output["scores"].items()}
        names = output.get("filename") or [""] * len(labels)
        for i, label in enumerate(labels):
            row = {"image": str(names[i]), "label": int(label)}
            row.update({k: float(v[i]) for k, v in scores.items()})
            self.rows.append(row)
        if output.get("member_A_rec") is not None:  # DDAD's NDM members; SALAD has one network
            self.member_scores.append(output["member_A_rec"].detach().float().cpu().numpy())
        self.keep_samples(output, labels)
        if output.get("mask") is not None:
            self.pixels.setdefault("mask", []).append(output["mask"].detach().cpu().numpy().ravel() > 0.5)
            for name, m in output["maps"].items():
                self.pixels.setdefault(name, []).append(m.detach().float().cpu().numpy().ravel().astype(np.float32))

    def keep_samples(self, output: dict, labels: np.ndarray) -> None:
        """The first test images of each class, with their maps, for the map panel."""
        per_class = self.panel_images // 2
        for i, label in enumerate(labels):
            if sum(s["label"] == label for s in self.samples) >= per_class:
                continue
            self.samples.append(
                {
                    "label": int(label),
                    "image": output["image"][i].float().mean(0).cpu().numpy() if "image" in output else None,
                    "maps": {k: v[i, 0].detach().float().cpu().numpy() for k, v in output["maps"].items()},
                }
            )

    def summarize(self, engine: Engine) -> dict:
        labels = np.array([r["label"] for r in self.rows])
        names = [n for n in self.score_names if n in self.rows[0]]
        metrics = {}
        for name in names:
            scores = np.array([r[name] for r in self.rows])
            entry = summarize_scores(scores, labels, n_boot=self.n_boot, seed=self.seed)
            # The AUC/AP reported are MONAI's handlers' values (they agree with scikit-learn).
            entry["auc"] = float(engine.state.metrics.get(f"{name}/auc", entry["auc"]))
            entry["ap"] = float(engine.state.metrics.get(f"{name}/ap", entry["ap"]))
            entry["chi2"] = chi2_histogram_distance(scores[labels == 0], scores[labels == 1])
            pixel = self.pixel_auroc(name)
            if pixel is not None:
                entry["pixel_auroc"] = pixel
            metrics[name] = entry
        self.add_selection(metrics)
        if self.member_scores and "A_rec" in metrics:
            members = np.concatenate(self.member_scores, axis=1)
            metrics["A_rec"]["auc_per_member"] = [float(roc_auc_score(labels, m)) for m in members]
        return metrics

    def add_selection(self, metrics: dict) -> None:
        """Copy stage 2's validation (never test) measures into the scores' entries: each refined
        score's selection and reliability, each map's patch response to the training synthesis."""
        if self.selection_file is None or not self.selection_file.is_file():
            return
        record = json.loads(self.selection_file.read_text())
        for refiner, entry in record.get("refiners", {}).items():
            score = REFINER_SCORES.get(refiner)
            if score not in metrics:
                continue
            metrics[score]["selection_val_auc"] = float(entry["val_auc"])
            metrics[score]["selection_reliable"] = bool(entry.get("reliable", False))
            for key in (
                "val_auc_ci95",
                "chance_probability",
                "loss_ratio",
                "paired_share",
                "pixel_auroc",
                "rank_correlation_with_inputs",
            ):
                if key in entry:
                    metrics[score][f"selection_{key}"] = entry[key]
        training = record.get("diagnostics", {}).get("patch_response", {}).get("training") or {}
        for name, response in (training.get("training_normals") or {}).items():
            if name in metrics:
                metrics[name]["patch_response"] = dict(response, families=training.get("families"))

    def pixel_auroc(self, name: str):
        """Pixel-level AUROC of a map against the lesion masks, or None without masks."""
        if name not in self.pixels or "mask" not in self.pixels:
            return None
        mask = np.concatenate(self.pixels["mask"])
        if mask.all() or not mask.any():
            return None
        return float(roc_auc_score(mask, np.concatenate(self.pixels[name])))

    def write(self, engine: Engine) -> None:
        if not self.rows:
            raise RuntimeError("evaluation saw no test images; check the split's 'test' set")
        self.metrics = self.summarize(engine)
        path = write_json_atomic(self.metrics, self.output_dir / "metrics.json")
        write_csv_atomic(self.rows, self.output_dir / "scores.csv")
        if self.figures:
            self.write_figures()
        if self.print_table:
            print(format_table(self.metrics))
            print(f"metrics written to {path}")
        logger.info("metrics: %s", path)

    def write_figures(self) -> None:
        labels = np.array([r["label"] for r in self.rows])
        names = [n for n in self.metrics]
        score_histograms({n: [r[n] for r in self.rows] for n in names}, labels, self.output_dir / "histograms.png")
        samples = sorted(self.samples, key=lambda s: s["label"])
        if samples and samples[0]["image"] is not None:
            map_panel(samples, self.output_dir / "maps.png")
