"""Threshold-free summaries and threshold selection for image-level anomaly scores.

Conventions: ``scores`` is a 1-D array of image scores, higher = more anomalous; ``labels`` is a
1-D array of the same length with 1 = abnormal, 0 = normal. Test labels are used for evaluation
only; the decision threshold is chosen on validation *normals* (:func:`threshold_at_specificity`),
never on the test set (the reference DDAD code selects on the test set; see DESIGN.md, Sec. 3).

What is reported follows Cai et al., DDAD (MICCAI 2022) and DDAD-ASR (Medical Image Analysis
2023): ROC AUC and average precision (AP) as the headline numbers, plus a percentile-bootstrap
95% interval of the AUC, the best F1 over thresholds, the sensitivity at 95% specificity, and the
chi-squared distance between the normal and abnormal score histograms (journal Fig. 6).

Example:
    >>> import numpy as np
    >>> s = np.array([0.1, 0.4, 0.35, 0.8]); y = np.array([0, 0, 1, 1])
    >>> r = summarize_scores(s, y, n_boot=200)
    >>> round(r["auc"], 4), round(r["ap"], 4), round(r["f1_max"], 4), r["sens_at_spec95"]
    (0.75, 0.8333, 0.8, 0.5)
    >>> threshold_at_specificity(np.arange(20.0), specificity=0.95)   # one of 20 lies above
    18.0
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

__all__ = [
    "bootstrap_auc_ci",
    "f1_max",
    "sensitivity_at_specificity",
    "threshold_at_specificity",
    "chi2_histogram_distance",
    "summarize_scores",
]

# Slack for floating-point products such as (1 - 0.95) * 20 = 1.0000000000000009 or 0.999...;
# far below any meaningful difference of rates computed on finite samples.
_EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _finite_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    if n_nan or n_inf:
        raise ValueError(f"{name} must be finite: {n_nan} NaN and {n_inf} infinite value(s) out of {arr.size}.")
    return arr


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Checked float scores and 0/1 int labels, both classes present."""
    labels_arr = np.asarray(labels)
    scores_arr = np.asarray(scores)
    if scores_arr.shape != labels_arr.shape or scores_arr.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D of the same length, got shapes {scores_arr.shape} and {labels_arr.shape}."
        )
    scores_arr = _finite_1d(scores_arr, "scores")
    if not np.isin(labels_arr, (0, 1)).all():
        raise ValueError(
            f"labels must be 0 (normal) or 1 (abnormal), got values {np.unique(labels_arr)[:10].tolist()}."
        )
    labels_arr = labels_arr.astype(np.int64)
    n_pos = int(labels_arr.sum())
    if n_pos in (0, labels_arr.size):
        only = "abnormal (1)" if n_pos else "normal (0)"
        raise ValueError(
            f"labels hold only one class ({labels_arr.size} x {only}); AUC, AP and "
            f"the other summaries need both normal and abnormal images."
        )
    return scores_arr, labels_arr


def _check_fraction(value, name: str, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    too_low = value <= 0 if low_open else value < 0
    too_high = value >= 1 if high_open else value > 1
    if too_low or too_high:
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must lie in {interval}, got {value!r}.")
    return float(value)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


# ---------------------------------------------------------------------------------------------
# AUC confidence interval
# ---------------------------------------------------------------------------------------------
def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC of each row via the Mann-Whitney U statistic (ties count 1/2, as in sklearn).

    pos (m, n1), neg (m, n0) -> (m,). Vectorised: one rank computation for all resamples.
    """
    n1, n0 = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # average ranks for ties
    return (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def bootstrap_auc_ci(scores, labels, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of the ROC AUC.

    Each resample draws, with replacement, as many abnormal scores from the abnormal images and
    as many normal scores from the normal images as there are (stratified), so every resample
    holds both classes and the class balance of the test set is kept. Seeded with
    ``numpy.random.default_rng(seed)``; the interval is the ``alpha/2`` and ``1 - alpha/2``
    percentiles (numpy's linear interpolation) of the ``n_boot`` resampled AUCs.
    """
    scores, labels = _scores_labels(scores, labels)
    n_boot = _check_positive_int(n_boot, "n_boot")
    alpha = _check_fraction(alpha, "alpha", low_open=True, high_open=True)
    pos, neg = scores[labels == 1], scores[labels == 0]
    rng = np.random.default_rng(seed)
    # Chunks keep the (resamples x images) rank matrix to a few tens of MB on large test sets.
    chunk = max(1, 2_000_000 // scores.size)
    aucs = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        pos_b = pos[rng.integers(0, pos.size, size=(m, pos.size))]
        neg_b = neg[rng.integers(0, neg.size, size=(m, neg.size))]
        aucs.append(_auc_rows(pos_b, neg_b))
    low, high = np.percentile(np.concatenate(aucs), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# operating points
# ---------------------------------------------------------------------------------------------
def f1_max(scores, labels) -> float:
    """Maximum F1 over all thresholds (sklearn ``precision_recall_curve``; F1 = 0 where p + r = 0)."""
    scores, labels = _scores_labels(scores, labels)
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def sensitivity_at_specificity(scores, labels, specificity: float = 0.95) -> float:
    """Highest TPR over the ROC curve's operating points with FPR <= 1 - specificity.

    The ROC curve always contains (FPR 0, TPR 0), so the result is defined; it is the sensitivity
    an oracle threshold would reach at that specificity on *this* set (an optimistic summary; the
    deployable threshold comes from :func:`threshold_at_specificity`).
    """
    scores, labels = _scores_labels(scores, labels)
    specificity = _check_fraction(specificity, "specificity", low_open=False, high_open=False)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tpr[fpr <= (1.0 - specificity) + _EPS].max())


def threshold_at_specificity(normal_scores, specificity: float = 0.95) -> float:
    """Decision threshold from validation normals only; an image is abnormal when ``score > t``.

    Rule: ``t`` is the smallest value such that the fraction of normal scores strictly above
    ``t`` is at most ``1 - specificity``. With the ``n`` scores sorted ascending
    ``s[0] <= ... <= s[n-1]`` and ``k = floor((1 - specificity) * n)`` (the number of normals
    allowed above), that is ``t = s[n - k - 1]``, one of the validation scores.

    Ties: scores equal to ``t`` count as normal, so with ties at ``t`` fewer than ``k`` normals lie
    above (the validation specificity is then higher than asked, never lower).
    Tiny sets: when ``(1 - specificity) * n < 1``, ``k = 0`` and ``t`` is the largest validation
    score (e.g. 5 scores at specificity 0.95): no validation normal is flagged, and the
    specificity actually achievable is coarse (multiples of ``1/n``); use enough normals.
    """
    normal_scores = _finite_1d(normal_scores, "normal_scores")
    specificity = _check_fraction(specificity, "specificity", low_open=True, high_open=True)
    n = normal_scores.size
    k = math.floor((1.0 - specificity) * n + _EPS)  # k < n because specificity > 0
    return float(np.sort(normal_scores)[n - k - 1])


# ---------------------------------------------------------------------------------------------
# histogram distance
# ---------------------------------------------------------------------------------------------
def chi2_histogram_distance(a, b, bins: int = 50) -> float:
    """Chi-squared distance between the normalized histograms of two score samples.

    Both samples are binned into ``bins`` equal bins on their common range
    ``[min(a U b), max(a U b)]``; with ``p``, ``q`` the bin frequencies (each summing to 1),

        chi2(p, q) = 0.5 * sum over bins with p + q > 0 of (p - q)^2 / (p + q),

    which lies in [0, 1]: 0 for identical histograms, 1 for histograms with disjoint support.
    The DDAD-ASR journal paper (Fig. 6) reports it between normal and abnormal score histograms:
    larger = better separated.
    """
    a = _finite_1d(a, "a")
    b = _finite_1d(b, "b")
    bins = _check_positive_int(bins, "bins")
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if lo == hi:  # both samples are one and the same constant
        return 0.0
    p = np.histogram(a, bins=bins, range=(lo, hi))[0] / a.size
    q = np.histogram(b, bins=bins, range=(lo, hi))[0] / b.size
    s = p + q
    nz = s > 0
    return float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / s[nz]))


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------
def summarize_scores(scores, labels, n_boot: int = 1000, seed: int = 0) -> dict:
    """All threshold-free summaries of one score on one labelled set, as Python floats in [0, 1].

    Returns ``{"auc", "ap", "auc_ci95": [low, high], "f1_max", "sens_at_spec95"}``; AUC and AP by
    sklearn ``roc_auc_score`` / ``average_precision_score``.
    """
    scores, labels = _scores_labels(scores, labels)
    low, high = bootstrap_auc_ci(scores, labels, n_boot=n_boot, seed=seed, alpha=0.05)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        "auc_ci95": [low, high],
        "f1_max": f1_max(scores, labels),
        "sens_at_spec95": sensitivity_at_specificity(scores, labels, 0.95),
    }


def read_threshold(ckpt_dir, workflow: str, method: str = "ddad") -> dict:
    """``threshold.json`` of a run's ``models/`` folder, written by ``workflow``'s last step for
    ``method``; a missing file or another method's record is named with the fix."""
    import json
    from pathlib import Path

    path = Path(ckpt_dir) / "threshold.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the {workflow!r} workflow first (it stores the threshold)")
    record = json.loads(path.read_text())
    if record.get("method", "ddad") != method:
        raise ValueError(
            f"{path} is a {record.get('method', 'ddad')} threshold, not {method}'s: this run folder holds "
            "another method's model"
        )
    return record
