"""Stage-1 reconstruction backbones of DDAD: AE, MemAE and AE-U.

Every class is a plain ``torch.nn.Module`` that ``torch.jit.script`` accepts, so the whole
inference pipeline can be exported to TorchScript for MONAI Deploy.

Backbones map an image ``(B, C, H, W)`` with intensities in [-1, 1] to
``(B, C, H, W)`` (AE, MemAE: the reconstruction) or ``(B, 2C, H, W)`` (AE-U: the reconstructed
mean, then the predicted per-pixel log-variance).

Architecture (Cai et al., DDAD, MICCAI 2022 / MedIA 2023, the AE of their Table 3): an encoder of
stride-2 4x4 convolutions (no bias, BN, ReLU) with channels 16-32-64-64, a fully connected
bottleneck 1024 -> 2048 (BN, ReLU) -> latent 16 -> 2048 (BN, ReLU) -> 1024, and a mirrored decoder
of 4x4 transposed convolutions whose last layer has no bias and no activation.
At 64x64 that is 4 stages (64 -> 4 pixels) and about 4.49 M parameters.

How other image sizes adapt: the number of stride-2 stages grows with the size so that the
bottleneck map stays 4x4 with 64 channels (1024 features): ``stages = log2(size / 4)``, the extra
stages using 64 channels. 128x128 therefore has 5 stages and about 4.62 M parameters; the fully
connected part, which holds most of the weights, is unchanged. Sizes must be 4 * 2**k, k >= 2.

Example::

    >>> net = AE(in_channels=1, image_size=64, latent_size=16)
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

BACKBONES = ("ae", "memae", "aeu")
_BOTTLENECK_SIDE = 4
_ENCODER_CHANNELS = (16, 32, 64, 64)


def stage_channels(image_size: int) -> list[int]:
    """Encoder output channels per stride-2 stage for a square image of side ``image_size``."""
    stages = math.log2(image_size / _BOTTLENECK_SIDE) if image_size >= 16 else 0.5
    if stages != int(stages):
        raise ValueError(f"image_size must be 4 * 2**k with k >= 2 (16, 32, 64, 128, 256...), got {image_size}")
    stages = int(stages)
    channels = list(_ENCODER_CHANNELS[:stages])
    return channels + [_ENCODER_CHANNELS[-1]] * (stages - len(channels))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _fc(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=True))


class AE(nn.Module):
    """The paper's convolutional autoencoder.

    Args:
        in_channels: image channels C (1 for grayscale, 3 for RGB).
        image_size: side of the square input, 4 * 2**k (64 by default in the paper).
        latent_size: width of the bottleneck (16 in the paper).
        out_channels: output channels; defaults to ``in_channels`` (AE-U passes ``2 * in_channels``).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_size: int = 16, out_channels: int = 0):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if latent_size < 1:
            raise ValueError(f"latent_size must be >= 1, got {latent_size}")
        channels = stage_channels(image_size)
        self.in_channels = in_channels
        self.image_size = image_size
        self.out_channels = out_channels or in_channels
        self.bottleneck_channels = channels[-1]
        self.bottleneck_side = _BOTTLENECK_SIDE
        flat = channels[-1] * _BOTTLENECK_SIDE * _BOTTLENECK_SIDE
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip([in_channels] + channels[:-1], channels)])
        self.encode_fc = nn.Sequential(_fc(flat, 2048), nn.Linear(2048, latent_size))
        self.decode_fc = nn.Sequential(_fc(latent_size, 2048), nn.Linear(2048, flat))
        decoder_channels = channels[::-1][1:]
        ups = [_up(a, b) for a, b in zip(channels[::-1][:-1], decoder_channels)]
        # The last layer outputs intensities directly: no bias, no BN, no activation (as in the paper).
        ups.append(nn.ConvTranspose2d(channels[0], self.out_channels, 4, 2, 1, bias=False))
        self.decoder = nn.Sequential(*ups)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_fc(torch.flatten(self.encoder(x), 1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decode_fc(z).view(-1, self.bottleneck_channels, self.bottleneck_side, self.bottleneck_side)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class MemAE(AE):
    """AE with a memory module on the latent code (Gong et al., ICCV 2019), as used in DDAD.

    The latent z (B, L) addresses ``memory_slots`` learned prototypes by softmax attention over the
    dot products z·m_i; the decoder sees only the attention-weighted prototype mix, which keeps
    anomalies from being reconstructed well. No hard shrinkage, as in the DDAD experiments.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_size: int = 16, memory_slots: int = 25):
        super().__init__(in_channels, image_size, latent_size)
        if memory_slots < 1:
            raise ValueError(f"memory_slots must be >= 1, got {memory_slots}")
        self.memory = nn.Parameter(torch.empty(memory_slots, latent_size))
        nn.init.kaiming_uniform_(self.memory, a=math.sqrt(5))

    @torch.jit.export
    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction (B, C, H, W) and memory attention weights (B, memory_slots)."""
        attention = torch.softmax(self.encode(x) @ self.memory.t(), dim=1)
        return self.decode(attention @ self.memory), attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]


class AEU(AE):
    """AE-U: the AE predicting a per-pixel mean and log-variance (heteroscedastic uncertainty).

    Output (B, 2C, H, W): channels [0, C) are the reconstruction, [C, 2C) the log-variance s.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_size: int = 16):
        super().__init__(in_channels, image_size, latent_size, out_channels=2 * in_channels)


def build_backbone(
    name: str, in_channels: int = 1, image_size: int = 64, latent_size: int = 16, memory_slots: int = 25
) -> nn.Module:
    """The reconstruction network named by the config key ``backbone`` (``ae``, ``memae`` or ``aeu``)."""
    key = str(name).lower()
    if key == "ae":
        return AE(in_channels, image_size, latent_size)
    if key == "memae":
        return MemAE(in_channels, image_size, latent_size, memory_slots)
    if key == "aeu":
        return AEU(in_channels, image_size, latent_size)
    raise ValueError(f"unknown backbone {name!r} (config key 'backbone'); choose one of {', '.join(BACKBONES)}")


def is_heteroscedastic(name: str) -> bool:
    """True for backbones whose output carries a log-variance (AE-U)."""
    return str(name).lower() == "aeu"


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
