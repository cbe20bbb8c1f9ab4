"""Evaluation figures: score histograms (the journal paper's Fig. 6) and map panels (its Fig. 7).

- ``score_histograms``: per score, the normalized histograms of normal and abnormal test images
  on a common range, with the chi-squared distance between them in the title
  (``scripts.scoring.metrics.chi2_histogram_distance``); the farther apart, the better the score separates.
- ``map_panel``: for a few test images, one row each: the input, then the maps A_rec, A_intra,
  A_inter, R_dual (those present), each map on its own colour scale shared across rows so rows
  compare.

Both write PNG files with matplotlib's non-interactive backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..scoring.metrics import chi2_histogram_distance  # noqa: E402

PANEL_MAPS = ("A_rec", "A_intra", "A_inter", "R_dual")


def score_histograms(scores: dict, labels: np.ndarray, path, bins: int = 50) -> Path:
    """One histogram panel per score (normal vs abnormal) with its chi-squared distance."""
    names = list(scores)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = np.asarray(scores[name], dtype=np.float64)
        normal, abnormal = values[labels == 0], values[labels == 1]
        edges = np.linspace(values.min(), values.max() if values.max() > values.min() else values.min() + 1, bins + 1)
        ax.hist(normal, bins=edges, density=True, alpha=0.6, color="tab:blue", label="normal")
        ax.hist(abnormal, bins=edges, density=True, alpha=0.6, color="tab:red", label="abnormal")
        ax.set_title(f"{name}\nχ² = {chi2_histogram_distance(normal, abnormal, bins):.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def map_panel(samples: Sequence[dict], path) -> Path:
    """Rows of [input, maps...] for a few test images; samples hold 'image', 'label', 'maps'."""
    names = [n for n in PANEL_MAPS if n in samples[0]["maps"]]
    limits = {n: max(float(np.percentile(s["maps"][n], 99.5)) for s in samples) or 1.0 for n in names}
    fig, axes = plt.subplots(
        len(samples), 1 + len(names), figsize=(2.0 * (1 + len(names)), 2.0 * len(samples)), squeeze=False
    )
    for row, sample in zip(axes, samples):
        row[0].imshow(sample["image"], cmap="gray")
        row[0].set_title("abnormal" if sample["label"] else "normal", fontsize=8)
        for ax, name in zip(row[1:], names):
            ax.imshow(sample["maps"][name], cmap="inferno", vmin=0, vmax=limits[name])
            ax.set_title(name, fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
