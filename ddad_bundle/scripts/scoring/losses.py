"""Training objectives of the DDAD reconstruction networks and of the ASR-Net.

A reconstruction objective is called as ``objective(net, x)`` with a batch ``x`` (B, C, H, W) and
returns a scalar loss; it runs the network itself because MemAE's loss needs the memory attention
that ``forward`` does not return.

- AE: pixel mean squared error.
- MemAE: MSE + ``entropy_weight`` (2e-4) x mean entropy of the memory attention (Gong et al. 2019).
- AE-U: heteroscedastic loss mean(exp(-s) * (mu - x)**2 + s), s the predicted log-variance
  (Kendall & Gal 2017), as in DDAD's AE-U.
- ASR-Net: softmax focal loss with gamma = 2 over the 2-class per-pixel output (MONAI's
  ``FocalLoss``, which averages over the class channels: a constant factor 1/2 that Adam ignores).

Example::

    >>> objective = objective_for("aeu")
    >>> loss = objective(net, images)
"""

from __future__ import annotations

import torch
from monai.losses import FocalLoss
from torch import nn


def heteroscedastic_terms(output: torch.Tensor, target: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """exp(-s) * (mu - x)**2 + s per element, for an output = [mu, s] stacked along ``channel_dim``
    (2C channels) and a target of C channels; the fused ensembles take it per member."""
    channels = target.shape[channel_dim]
    mean, log_var = output.split(channels, dim=channel_dim)
    return torch.exp(-log_var) * (mean - target) ** 2 + log_var


def heteroscedastic_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(exp(-s) * (mu - x)**2 + s) for an output (B, 2C, H, W) = [mu, s] and a target (B, C, H, W)."""
    return heteroscedastic_terms(output, target).mean()


def attention_entropies(attention: torch.Tensor) -> torch.Tensor:
    """The entropy -sum_i w_i log w_i of each row of memory attention weights (..., slots) -> (...)."""
    return -(attention * torch.log(attention + 1e-12)).sum(dim=-1)


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the entropy of memory attention weights (B, slots)."""
    return attention_entropies(attention).mean()


class MSEObjective(nn.Module):
    """Pixel MSE between the AE's reconstruction and its input."""

    def forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.mean((net(x) - x) ** 2)


class MemAEObjective(nn.Module):
    """MSE plus the weighted entropy of the memory addressing, which favours sparse attention."""

    def __init__(self, entropy_weight: float = 2e-4):
        super().__init__()
        if entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
        self.entropy_weight = entropy_weight

    def forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        reconstruction, attention = net.forward_with_attention(x)
        return torch.mean((reconstruction - x) ** 2) + self.entropy_weight * attention_entropy(attention)


class HeteroscedasticObjective(nn.Module):
    """AE-U's loss: squared error weighted by the predicted precision, plus the log-variance."""

    def forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return heteroscedastic_loss(net(x), x)


def objective_for(backbone: str, entropy_weight: float = 2e-4) -> nn.Module:
    """The objective that belongs to a backbone name (config key ``backbone``)."""
    key = str(backbone).lower()
    objectives = {"ae": MSEObjective, "memae": lambda: MemAEObjective(entropy_weight), "aeu": HeteroscedasticObjective}
    if key not in objectives:
        raise ValueError(f"unknown backbone {backbone!r} (config key 'backbone'); choose one of ae, memae, aeu")
    return objectives[key]()


def asr_focal_loss(gamma: float = 2.0) -> FocalLoss:
    """Focal loss for ASR-Net logits (B, 2, H, W) against a label map (B, 1, H, W) of 0/1.

    Softmax over the two classes and a one-hot target, so both the normal and the anomaly class
    contribute, as in the paper's per-pixel classification.
    """
    return FocalLoss(gamma=gamma, to_onehot_y=True, use_softmax=True, include_background=True, reduction="mean")
