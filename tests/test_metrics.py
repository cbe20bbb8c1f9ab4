"""Tests of the image-level score summaries and threshold selection (scripts/scoring/metrics.py)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scripts.scoring.metrics import (
    _auc_rows,
    bootstrap_auc_ci,
    chi2_histogram_distance,
    f1_max,
    sensitivity_at_specificity,
    summarize_scores,
    threshold_at_specificity,
)

# Hand-computed 4-point case. Sorted by score: 0.8 (abn), 0.4 (nor), 0.35 (abn), 0.1 (nor).
# AUC: abnormal-normal pairs ranked right: (0.8>0.4, 0.8>0.1, 0.35>0.1) = 3 of 4 -> 0.75.
# AP: precision 1 at recall 1/2, 2/3 at recall 1 -> 0.5 * 1 + 0.5 * 2/3 = 5/6.
# F1 at t=0.8: p=1, r=1/2 -> 2/3; t=0.35: p=2/3, r=1 -> 0.8; t=0.1: p=1/2, r=1 -> 2/3. Max 0.8.
# Sensitivity at FPR <= 0.05: only FPR 0 -> TPR 1/2; at FPR <= 0.5 -> TPR 1.
S4 = np.array([0.1, 0.4, 0.35, 0.8])
Y4 = np.array([0, 0, 1, 1])


def test_four_point_case_by_hand():
    r = summarize_scores(S4, Y4, n_boot=200)
    assert r["auc"] == pytest.approx(0.75)
    assert r["ap"] == pytest.approx(5 / 6)
    assert r["f1_max"] == pytest.approx(0.8)
    assert r["sens_at_spec95"] == pytest.approx(0.5)
    assert sensitivity_at_specificity(S4, Y4, specificity=0.5) == pytest.approx(1.0)
    assert set(r) == {"auc", "ap", "auc_ci95", "f1_max", "sens_at_spec95"}
    for v in [r["auc"], r["ap"], r["f1_max"], r["sens_at_spec95"], *r["auc_ci95"]]:
        assert type(v) is float and 0.0 <= v <= 1.0
    assert isinstance(r["auc_ci95"], list) and len(r["auc_ci95"]) == 2


def test_perfect_separation():
    scores = np.array([0.0, 0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    r = summarize_scores(scores, labels, n_boot=100)
    assert r["auc"] == 1.0 and r["ap"] == 1.0 and r["f1_max"] == 1.0 and r["sens_at_spec95"] == 1.0
    assert r["auc_ci95"] == [1.0, 1.0]


def test_inverted_scores():
    scores = np.array([0.9, 0.8, 0.1, 0.2])
    labels = np.array([0, 0, 1, 1])
    assert summarize_scores(scores, labels, n_boot=50)["auc"] == 0.0
    assert sensitivity_at_specificity(scores, labels) == 0.0


def test_rank_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    labels = np.r_[np.ones(15, int), np.zeros(25, int)]
    ours = _auc_rows(scores[labels == 1][None], scores[labels == 0][None])[0]
    assert ours == pytest.approx(roc_auc_score(labels, scores))


def test_bootstrap_ci_contains_point_auc_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    scores = rng.normal(size=200) + 1.0 * labels
    auc = roc_auc_score(labels, scores)
    low, high = bootstrap_auc_ci(scores, labels, n_boot=1000, seed=0)
    assert 0.0 <= low < auc < high <= 1.0
    assert 0.05 < high - low < 0.25  # about 2 * 1.96 * SE, SE ~ 0.03 here
    assert bootstrap_auc_ci(scores, labels, n_boot=1000, seed=0) == (low, high)
    assert bootstrap_auc_ci(scores, labels, n_boot=1000, seed=1) != (low, high)
    # a wider interval for a smaller alpha
    low99, high99 = bootstrap_auc_ci(scores, labels, n_boot=1000, seed=0, alpha=0.01)
    assert low99 <= low and high99 >= high


def test_bootstrap_is_stratified():
    # Two abnormal among many normals: an unstratified resample would often miss both and fail.
    labels = np.r_[np.zeros(50, int), np.ones(2, int)]
    scores = np.r_[np.linspace(0, 1, 50), [0.5, 2.0]]
    low, high = bootstrap_auc_ci(scores, labels, n_boot=500, seed=0)
    assert 0.0 <= low <= high <= 1.0


def test_threshold_20_normals():
    scores = np.random.default_rng(0).permutation(np.linspace(0.0, 1.0, 20))
    t = threshold_at_specificity(scores, 0.95)
    assert (scores > t).sum() == 1
    assert t == np.sort(scores)[18]
    # smallest such threshold: anything below it lets 2 of 20 through
    assert (scores > np.nextafter(t, -np.inf)).sum() == 2
    # spec 0.9 -> 2 above
    assert (scores > threshold_at_specificity(scores, 0.9)).sum() == 2


def test_threshold_tiny_set_and_ties():
    five = [0.3, 0.1, 0.5, 0.2, 0.4]
    assert threshold_at_specificity(five, 0.95) == 0.5  # (1-0.95)*5 < 1: nothing may lie above
    assert threshold_at_specificity(five, 0.8) == 0.4  # exactly one of five above
    tied = [0.1] * 10 + [0.9] * 10
    t = threshold_at_specificity(tied, 0.95)  # k = 1, but the top 10 tie
    assert t == 0.9 and sum(s > t for s in tied) == 0


@pytest.mark.parametrize("spec", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_threshold_refuses_bad_specificity(spec):
    with pytest.raises(ValueError, match="specificity"):
        threshold_at_specificity([0.1, 0.2], spec)


def test_threshold_refuses_empty_and_nan():
    with pytest.raises(ValueError, match="normal_scores is empty"):
        threshold_at_specificity([], 0.95)
    with pytest.raises(ValueError, match="1 NaN"):
        threshold_at_specificity([0.1, float("nan")], 0.95)


def test_chi2_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    assert chi2_histogram_distance(a, a.copy()) == 0.0
    assert chi2_histogram_distance(a, rng.permutation(a)) == 0.0
    assert chi2_histogram_distance(rng.uniform(0, 1, 300), rng.uniform(5, 6, 200)) == pytest.approx(1.0)
    partial = chi2_histogram_distance(a, a + 1.0)
    assert 0.0 < partial < 1.0
    assert chi2_histogram_distance(a, a + 1.0) == pytest.approx(chi2_histogram_distance(a + 1.0, a))
    assert chi2_histogram_distance([1.0, 1.0], [1.0]) == 0.0  # one constant, degenerate range


def test_chi2_by_hand():
    # range [0, 1], 2 bins [0, .5) and [.5, 1]: p = (1, 0), q = (1/2, 1/2)
    # 0.5 * ((1/2)^2 / (3/2) + (1/2)^2 / (1/2)) = 0.5 * (1/6 + 1/2) = 1/3
    assert chi2_histogram_distance([0.0, 0.1], [0.0, 1.0], bins=2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="bins"):
        chi2_histogram_distance([0.0], [1.0], bins=0)
    with pytest.raises(ValueError, match="a is empty"):
        chi2_histogram_distance([], [1.0])


def test_summary_refusals():
    with pytest.raises(ValueError, match="only one class"):
        summarize_scores([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="same length"):
        summarize_scores([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="2 NaN"):
        summarize_scores([0.1, float("nan"), float("nan"), 0.4], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="labels must be 0"):
        summarize_scores([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_auc_ci(S4, Y4, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_auc_ci(S4, Y4, alpha=1.0)
    with pytest.raises(ValueError, match="specificity"):
        sensitivity_at_specificity(S4, Y4, specificity=1.2)
    for fn in (f1_max, sensitivity_at_specificity):
        with pytest.raises(ValueError, match="only one class"):
            fn([0.1, 0.2], [1, 1])


def test_bool_labels_and_lists_accepted():
    r = summarize_scores(list(S4), [False, False, True, True], n_boot=50)
    assert r["auc"] == pytest.approx(0.75)
