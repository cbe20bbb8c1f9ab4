"""The Anomaly Score Refinement Net of DDAD-ASR (Cai et al., Medical Image Analysis 2023, Sec. 3.3).

A small fully-convolutional network that turns stacked stage-1 anomaly maps (B, M, H, W) into
per-pixel two-class logits (B, 2, H, W); scriptable, so the deployed pipeline carries it.

Example::

    >>> ASRNet(in_channels=2)(torch.zeros(1, 2, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

import torch
from torch import nn


class ASRNet(nn.Module):
    """Anomaly Score Refinement Net (DDAD-ASR, MedIA 2023).

    Three 3x3 convolutions with ``width`` (128) channels, BN + ReLU after the first two, and a
    2-class per-pixel output. Input (B, M, H, W): M stacked anomaly maps ([A_inter, A_intra] for
    R_dual, [A_intra] for R_intra). Output: logits (B, 2, H, W); the softmax's channel 1 is the
    anomaly probability.
    """

    def __init__(self, in_channels: int = 2, width: int = 128):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2, 3, padding=1),
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.body(maps)
