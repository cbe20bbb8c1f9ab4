"""The three reconstruction objectives and the ASR-Net focal loss against hand computations."""

import math

import pytest
import torch

from scripts.scoring.losses import (
    HeteroscedasticObjective,
    MemAEObjective,
    MSEObjective,
    asr_focal_loss,
    attention_entropy,
    heteroscedastic_loss,
    objective_for,
)
from scripts.networks.backbones import AEU, MemAE


class Constant(torch.nn.Module):
    """A 'network' that returns a fixed output, so losses can be checked by hand."""

    def __init__(self, output, attention=None):
        super().__init__()
        self.output, self.attention = output, attention

    def forward(self, x):
        return self.output

    def forward_with_attention(self, x):
        return self.output, self.attention


def test_mse_objective_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    out = torch.tensor([[[[1.0, 1.0], [2.0, 1.0]]]])
    # squared errors 1, 0, 0, 4 -> mean 1.25
    assert MSEObjective()(Constant(out), x).item() == pytest.approx(1.25)


def test_heteroscedastic_loss_by_hand():
    x = torch.tensor([[[[0.0, 2.0]]]])
    mean = torch.tensor([[[[1.0, 2.0]]]])
    log_var = torch.tensor([[[[math.log(2.0), 0.5]]]])
    out = torch.cat([mean, log_var], dim=1)
    expected = ((1.0 / 2.0) * 1.0 + math.log(2.0) + math.exp(-0.5) * 0.0 + 0.5) / 2
    assert heteroscedastic_loss(out, x).item() == pytest.approx(expected, rel=1e-6)
    assert HeteroscedasticObjective()(Constant(out), x).item() == pytest.approx(expected, rel=1e-6)


def test_attention_entropy_by_hand():
    uniform = torch.full((1, 4), 0.25)
    one_hot = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert attention_entropy(uniform).item() == pytest.approx(math.log(4), rel=1e-5)
    assert attention_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)


def test_memae_objective_adds_weighted_entropy():
    x = torch.zeros(1, 1, 2, 2)
    out = torch.ones(1, 1, 2, 2)
    attention = torch.full((1, 4), 0.25)
    loss = MemAEObjective(entropy_weight=2e-4)(Constant(out, attention), x).item()
    assert loss == pytest.approx(1.0 + 2e-4 * math.log(4), rel=1e-6)


def test_objectives_train_real_networks():
    x = torch.randn(4, 1, 64, 64)
    for net, name in [(MemAE(), "memae"), (AEU(), "aeu")]:
        loss = objective_for(name)(net, x)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_focal_loss_matches_hand_computation():
    # One pixel, logits (0, ln 3): softmax p = (0.25, 0.75), label 1. The softmax focal loss is
    # -sum_c y_c (1 - p_c)^2 log p_c = -(0.25)^2 log 0.75; MONAI averages it over the two class
    # channels (the normal channel contributes 0 for this pixel), hence the division by 2.
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    label = torch.ones(1, 1, 1, 1)
    expected = -(0.25**2) * math.log(0.75) / 2
    assert asr_focal_loss(gamma=2.0)(logits, label).item() == pytest.approx(expected, rel=1e-4)


def test_focal_loss_down_weights_easy_pixels():
    easy = torch.tensor([-5.0, 5.0]).view(1, 2, 1, 1)
    hard = torch.tensor([0.0, 0.2]).view(1, 2, 1, 1)
    label = torch.ones(1, 1, 1, 1)
    loss = asr_focal_loss()
    assert loss(easy, label) < 0.01 * loss(hard, label)


def test_unknown_backbone_objective_is_refused():
    with pytest.raises(ValueError, match="backbone"):
        objective_for("unet")
