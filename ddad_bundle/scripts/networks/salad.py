"""The SALAD encoder-decoder (Bozorgtabar et al., MICCAI 2020): reconstruction and an embedding.

``SALADNet(x)`` with x (B, C, H, W), H = W = ``image_size``, returns ``(reconstruction, z)``:
the reconstruction (B, C, H, W) in [-1, 1] (tanh, the bundle scales intensities to [-1, 1]) and
the embedding z (B, D), L2-normalised, D = ``embedding_size`` (200 in the paper).

Encoder: 6 convolutions (4x4, BatchNorm, LeakyReLU), no skip connections. In the paper every
layer halves the 256 px input down to 4 px; here a layer halves the resolution only while it is
above ``bottom_size`` (4 px) and the remaining layers keep it (3x3, stride 1), so the same
6-layer network runs at the smaller CPU sizes (64 px: 4 halving layers, then 2 at 4 px). The
last encoder output (B, C_6, 4, 4) is flattened and projected (Linear) to z.
Decoder: z is projected back to (B, C_6, 4, 4) and 6 layers bring it to the input size, a
transposed 4x4 convolution (x2) for every halving layer of the encoder, a 3x3 convolution for
the others, BatchNorm + LeakyReLU after each but the last, whose output goes through tanh.

Example::

    >>> net = SALADNet(in_channels=1, image_size=64)
    >>> recon, z = net(torch.zeros(2, 1, 64, 64))
    >>> recon.shape, z.shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 200]))
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

NUM_LAYERS = 6


def halving_layers(image_size: int, bottom_size: int = 4, num_layers: int = NUM_LAYERS) -> int:
    """How many of the encoder's layers halve the resolution: down to ``bottom_size``, at most all."""
    if image_size < bottom_size or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= {bottom_size}, got {image_size}")
    return min(num_layers, int(math.log2(image_size // bottom_size)))


def _block(layer: nn.Module, channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(layer, nn.BatchNorm2d(channels), nn.LeakyReLU(slope))


class SALADNet(nn.Module):
    """Encoder of 6 conv layers, 200-d L2-normalised embedding, decoder of 6 up-sampling layers.

    Args:
        in_channels: image channels C.
        image_size: H = W of the input (a power of two, at least 4).
        embedding_size: D of z.
        channels: output channels of the 6 encoder layers (the decoder mirrors them).
        negative_slope: of the LeakyReLUs.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        embedding_size: int = 200,
        channels: Sequence[int] = (16, 32, 64, 128, 128, 128),
        negative_slope: float = 0.2,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != NUM_LAYERS:
            raise ValueError(f"channels must list {NUM_LAYERS} layer widths, got {channels}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        self.image_size = int(image_size)
        halving = halving_layers(self.image_size)
        self.bottom = self.image_size >> halving
        self.bottom_channels = channels[-1]
        widths = [int(in_channels)] + channels
        down = []
        for i in range(NUM_LAYERS):
            conv = (
                nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1, bias=False)
                if i < halving
                else nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False)
            )
            down.append(_block(conv, widths[i + 1], negative_slope))
        self.encoder = nn.Sequential(*down)
        flat = channels[-1] * self.bottom * self.bottom
        self.to_embedding = nn.Linear(flat, int(embedding_size))
        self.from_embedding = nn.Sequential(nn.Linear(int(embedding_size), flat), nn.LeakyReLU(negative_slope))
        up = []
        # decoder layer j mirrors encoder layer NUM_LAYERS - 1 - j
        for j in range(NUM_LAYERS):
            i = NUM_LAYERS - 1 - j
            out = widths[i] if j < NUM_LAYERS - 1 else int(in_channels)
            layer = (
                nn.ConvTranspose2d(widths[i + 1], out, 4, 2, 1, bias=False)
                if i < halving
                else nn.Conv2d(widths[i + 1], out, 3, 1, 1, bias=False)
            )
            up.append(_block(layer, out, negative_slope) if j < NUM_LAYERS - 1 else layer)
        self.decoder = nn.Sequential(*up)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding z (B, D) of images x (B, C, H, W)."""
        features = self.encoder(x).flatten(1)
        return F.normalize(self.to_embedding(features), dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        hidden = self.from_embedding(z).view(z.shape[0], self.bottom_channels, self.bottom, self.bottom)
        return torch.tanh(self.decoder(hidden))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x)
        return self.decode(z), z
