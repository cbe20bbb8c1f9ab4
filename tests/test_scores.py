"""Every DDAD score formula against a hand computation on tiny tensors."""

import math

import pytest
import torch

from scripts.scoring.scores import discrepancy_maps, image_scores, member_rec_scores

# One image of 1x2 pixels; three NDM and three UDM members.
X = torch.tensor([[[[1.0, 0.0]]]])  # (B=1, C=1, H=1, W=2)
NDM = torch.tensor([[[[[0.0, 0.0]]]], [[[[1.0, 0.0]]]], [[[[2.0, 3.0]]]]])  # (K=3, 1, 1, 1, 2)
UDM = torch.tensor([[[[[1.0, 1.0]]]], [[[[1.0, 1.0]]]], [[[[1.0, 4.0]]]]])


def test_a_rec_is_the_mean_of_member_errors():
    # pixel 0: errors 1, 0, 1 -> 2/3; pixel 1: 0, 0, 9 -> 3
    maps = discrepancy_maps(X, NDM)
    assert maps["A_rec"].flatten().tolist() == pytest.approx([2 / 3, 3.0])


def test_a_rec_ensemble_uses_the_mean_reconstruction():
    # mean NDM = (1, 1): errors (0, 1)
    assert discrepancy_maps(X, NDM)["A_rec_ensemble"].flatten().tolist() == pytest.approx([0.0, 1.0])


def test_a_intra_is_the_unbiased_std_over_members():
    # pixel 0: values 0, 1, 2 -> std (K-1) = 1; pixel 1: 0, 0, 3 -> sqrt(((1)^2+(1)^2+(2)^2)/2) = sqrt(3)
    assert discrepancy_maps(X, NDM)["A_intra"].flatten().tolist() == pytest.approx([1.0, math.sqrt(3)])


def test_a_inter_is_the_distance_between_module_means():
    # mean UDM = (1, 2), mean NDM = (1, 1)
    assert discrepancy_maps(X, NDM, UDM)["A_inter"].flatten().tolist() == pytest.approx([0.0, 1.0])


def test_no_udm_gives_no_a_inter():
    assert "A_inter" not in discrepancy_maps(X, NDM)


def test_heteroscedastic_scores_are_divided_by_sigma():
    # log-variances: member k has s = ln(k+1) everywhere -> exp(s) = 1, 2, 3; sigma^2 = 2
    log_var = torch.stack([torch.full((1, 1, 1, 2), math.log(k + 1.0)) for k in range(3)])
    ndm = torch.cat([NDM, log_var], dim=2)
    udm = torch.cat([UDM, torch.zeros_like(log_var)], dim=2)
    maps = discrepancy_maps(X, ndm, udm, heteroscedastic=True)
    # A_rec: each member's error over its own variance: pixel 0: (1/1 + 0/2 + 1/3)/3
    assert maps["A_rec"].flatten()[0].item() == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert maps["A_rec_ensemble"].flatten().tolist() == pytest.approx([0.0, 1.0 / 2])
    assert maps["A_intra"].flatten().tolist() == pytest.approx([1 / math.sqrt(2), math.sqrt(3) / math.sqrt(2)])
    assert maps["A_inter"].flatten().tolist() == pytest.approx([0.0, 1 / math.sqrt(2)])


def test_image_score_is_the_map_mean():
    scores = image_scores(discrepancy_maps(X, NDM, UDM))
    assert scores["A_rec"].item() == pytest.approx((2 / 3 + 3) / 2)
    assert scores["A_inter"].item() == pytest.approx(0.5)


def test_member_scores_are_each_members_own_error():
    # member errors: (1, 0) -> 0.5; (0, 0) -> 0; (1, 9) -> 5
    assert member_rec_scores(X, NDM).flatten().tolist() == pytest.approx([0.5, 0.0, 5.0])


def test_channels_are_averaged():
    x = torch.zeros(1, 3, 1, 1)
    ndm = torch.stack([torch.zeros(1, 3, 1, 1), torch.tensor([0.0, 3.0, 6.0]).view(1, 3, 1, 1)])
    # per channel squared error of the ensemble mean (0, 1.5, 3): (0, 2.25, 9) -> mean 3.75
    assert discrepancy_maps(x, ndm)["A_rec_ensemble"].item() == pytest.approx(3.75)


def test_single_member_is_refused_for_a_intra():
    with pytest.raises(ValueError, match="num_members"):
        discrepancy_maps(X, NDM[:1])


def test_member_std_is_torch_std_with_the_k_minus_1_divisor():
    from scripts.scoring.scores import member_std

    recon = torch.randn(3, 5, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = recon.std(dim=0, unbiased=True)
    assert torch.allclose(member_std(recon, recon.mean(dim=0)), expected, atol=1e-6)
    assert torch.allclose(torch.jit.script(member_std)(recon, recon.mean(dim=0)), expected, atol=1e-6)
