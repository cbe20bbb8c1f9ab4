"""Inference postprocessing: a model's prediction becomes an image score, a label and a map on the
input's grid. ``configs/inference.json`` chains them; the MONAI Deploy application runs the same
chain from the config embedded in ``model.ts``.

- ``ImageScored``: the image score, ``scores.spatial_mean`` of ``pred`` (a map (1, H, W) or an
  image-level score (1,)), at the model's resolution, so that it equals evaluation's;
- ``ThresholdLabeld``: ``abnormal`` above the stored decision threshold (``decision``);
- ``InvertMapd``: MONAI's ``Invertd`` for maps, back to the input's grid.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, MapTransform, Transform

from .scores import spatial_mean


def decision(score: float, threshold: float) -> str:
    """The decision rule: ``abnormal`` when the score exceeds the threshold."""
    return "abnormal" if float(score) > float(threshold) else "normal"


class ImageScored(MapTransform):
    """``score_key``: the image score of ``pred`` (a map (1, H, W) or a score (1,)), its mean
    (``scores.spatial_mean``), taken before the map is inverted so that it equals evaluation's."""

    def __init__(self, keys="pred", score_key: str = "score"):
        super().__init__(keys)
        self.score_key = score_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.score_key] = float(spatial_mean(torch.as_tensor(d[key]).float()[None])[0])
        return d


class ThresholdLabeld(Transform):
    """``label_key``: ``abnormal`` where ``score_key`` exceeds the decision threshold, else ``normal``."""

    def __init__(self, threshold: float, score_key: str = "score", label_key: str = "label"):
        self.threshold = float(threshold)
        self.score_key, self.label_key = score_key, label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[self.label_key] = decision(d[self.score_key], self.threshold)
        return d


class InvertMapd(Invertd):
    """MONAI's ``Invertd`` for anomaly maps: the map goes back through the inverse of the chain's
    resizes, crops and pads to the input's grid. An image-level score (SALAD's A_knn, shape (1,))
    has no grid and passes unchanged."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if all(torch.as_tensor(d[key]).ndim < 3 for key in self.key_iterator(d)):
            return d
        for key in self.key_iterator(d):
            # A network returns a plain tensor; Invertd reads the chain's record from the original
            # image only when the map is a MetaTensor (otherwise it warns and leaves the map as is).
            if not isinstance(d[key], MetaTensor):
                d[key] = MetaTensor(d[key])
        return super().__call__(d)
