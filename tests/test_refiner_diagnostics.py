"""Stage-2 diagnostics: paired share, chance, the constant predictor, patch response, auto deployment."""

import math

import numpy as np
import pytest
import torch

from scripts.engines.inference import choose_deploy_score, threshold_for
from scripts.scoring.losses import asr_focal_loss
from scripts.scoring.refiner_diagnostics import (
    bootstrap_auc_interval,
    chance_probability,
    constant_prediction_loss,
    paired_share,
    patch_response,
    rank_correlations,
)


def test_paired_share_counts_altered_above_clean_and_ties_as_half():
    assert paired_share([1, 2, 3, 4], [2, 2, 2, 5]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    with pytest.raises(ValueError, match="equal, non-zero length"):
        paired_share([1, 2], [1])


def test_chance_probability_of_an_auc_and_of_the_best_of_many_tries():
    assert chance_probability(0.5, 40, 40) == pytest.approx(0.5)
    single = chance_probability(0.6, 40, 40)
    assert 0.05 < single < 0.1  # z = 0.1 / sqrt(81 / 19200) = 1.54
    assert chance_probability(0.6, 40, 40, n_tries=10) == pytest.approx(1 - (1 - single) ** 10)
    assert chance_probability(0.9, 40, 40) < 1e-8


def test_constant_prediction_loss_is_the_minimum_over_constants_of_the_training_loss():
    labels = torch.zeros(4, 1, 16, 16)
    labels[:, :, 2:6, 3:9] = 1  # 24 of 256 pixels
    loss_fn = asr_focal_loss()
    best, p = constant_prediction_loss(loss_fn, labels)

    def loss_at(q):
        logits = torch.zeros(4, 2, 16, 16)
        logits[:, 1] = math.log(q / (1 - q))
        return float(loss_fn(logits, labels))

    grid = [loss_at(q) for q in np.linspace(0.01, 0.99, 99)]
    assert best <= min(grid) + 1e-6 and best == pytest.approx(loss_at(p), rel=1e-5)
    assert 0.02 < p < 0.5  # below one half: the anomaly class is rare


class Deviation(torch.nn.Module):
    """A map that sees any local change (|x - median|) next to one that sees nothing (a constant)."""

    def forward(self, x):
        deviation = (x - x.flatten(1).median(1).values.view(-1, 1, 1, 1)).abs()
        return {"A_rec": deviation, "A_intra": torch.ones_like(deviation)}


def test_patch_response_tells_a_map_that_responds_from_one_that_does_not():
    clean = torch.zeros(8, 1, 16, 16)
    altered, labels = clean.clone(), torch.zeros_like(clean)
    altered[:, :, 4:8, 4:8], labels[:, :, 4:8, 4:8] = 0.7, 1
    response = patch_response(Deviation(), clean, altered, labels)
    assert response["A_rec"]["responds"] and response["A_rec"]["paired_share"] == 1.0
    assert response["A_rec"]["ratio"] == float("inf") and response["A_rec"]["pixel_auroc"] == 1.0
    assert not response["A_intra"]["responds"] and response["A_intra"]["ratio"] == pytest.approx(1.0)
    assert "A_inter" not in response


def test_bootstrap_interval_and_rank_correlation():
    labels = np.r_[np.zeros(30), np.ones(30)]
    scores = labels + np.random.default_rng(0).normal(0, 0.8, 60)
    from sklearn.metrics import roc_auc_score

    low, high = bootstrap_auc_interval(labels, scores, n_boot=200, seed=1)
    assert (
        low < roc_auc_score(labels, scores) < high
        and high - low < 0.3
        and bootstrap_auc_interval(labels, scores, n_boot=200, seed=1) == [low, high]
    )
    rho = rank_correlations(scores, {"same": scores * 3, "reversed": -scores})
    assert rho["same"] == pytest.approx(1.0) and rho["reversed"] == pytest.approx(-1.0)


SCORES = ["A_rec", "A_rec_ensemble", "A_intra", "A_inter", "R_intra", "R_dual"]


@pytest.mark.parametrize(
    "dual, intra, names, expected",
    [
        (True, False, SCORES, "R_dual"),
        (False, True, SCORES, "A_inter"),
        (False, False, SCORES, "A_inter"),
        (False, True, ["A_rec", "A_rec_ensemble", "A_intra", "R_intra"], "R_intra"),
        (False, False, ["A_rec", "A_rec_ensemble", "A_intra", "R_intra"], "A_rec_ensemble"),
        (False, False, ["A_rec", "A_rec_ensemble", "A_intra", "A_inter"], "A_inter"),
    ],
)
def test_auto_deploys_a_refined_score_only_where_its_refiner_is_reliable(dual, intra, names, expected):
    selection = {"refiners": {"dual": {"reliable": dual}, "intra": {"reliable": intra}}}
    assert choose_deploy_score(names, selection)[0] == expected
    record = {"score": "R_dual", "threshold": 0.5, "thresholds": {n: float(i) for i, n in enumerate(names)}}
    chosen = threshold_for(record, "auto", selection)
    assert chosen["score"] == expected and chosen["threshold"] == names.index(expected) and chosen["reason"]
    assert threshold_for(record, None, selection)["score"] == expected


def test_auto_without_stage_2_and_explicit_scores():
    assert choose_deploy_score(SCORES[:4], None) == (
        "A_inter",
        "no refiner trained: the dual-distribution discrepancy A_inter is deployed",
    )
    record = {"score": "A_inter", "threshold": 1.0, "thresholds": {"A_inter": 1.0, "A_rec": 2.0}}
    assert threshold_for(record, "A_rec")["threshold"] == 2.0
    with pytest.raises(ValueError, match="deploy_score 'R_dual': threshold.json holds thresholds for A_inter, A_rec"):
        threshold_for(record, "R_dual")
