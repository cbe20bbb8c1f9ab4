"""Families of synthetic anomalies for stage 2 (the ASR-Net), each a seeded MONAI transform.

The journal paper trains the ASR-Net on one recipe: a square patch of another normal image,
taken at the same location and blended in with alpha ~ U(0, 1) (``fpi``, the foreign-patch
interpolation of ``scripts.scoring.synthesis``). A refiner can only learn from a synthetic
anomaly that changes its input maps, and a same-location patch of another normal chest barely
changes A_intra or A_inter (docs/README.md, "Where the signal is missing"). The families here
are the alternatives the bundle offers and measures; ``synthesis`` (config key) picks one or a
mixture, and one family can be held out of training to select the refiner on
(``synthesis_holdout``), in the spirit of Baugh et al., "Many tasks make light work", MICCAI 2023.

Every family is a ``RandomizableTransform``: ``t(img, donor) -> (img_s, label)`` with ``img``
and ``donor`` (C, H, W) tensors of intensities in [-1, 1], ``img_s`` the altered image and
``label`` a (1, H, W) 0/1 mask of the pixels the family changed. Seed with
``set_random_state(seed)``. The region of every family is drawn with the paper's geometry (centre
~ U(0.1, 0.9), side ~ U(0.1, 0.4) of the image side, ``synthesis.patch_box``).

- ``fpi``: the paper's recipe (same-location donor patch, alpha ~ U(0, 1));
- ``fpi_shift``: a donor patch from another location, rescaled by U(0.75, 1.33), blended with
  alpha ~ U(0.5, 1);
- ``intensity``: brightness and contrast change inside a smooth-edged ellipse;
- ``blob``: a smooth-edged ellipse of random level and smoothed-noise texture;
- ``poisson``: a donor patch from another location blended in the gradient domain (Poisson
  image editing: inside the patch the result has the donor's Laplacian and the image's values on
  the border), in the spirit of natural synthetic anomalies (Schlüter et al., ECCV 2022);
- ``fpi_unlabeled``: the paper's same-location patch, but with the donor drawn from the
  unlabeled pool D_u instead of the known normals. D_u holds the unknown abnormal content that
  the UDM has learned and the NDM has not, so this is the family A_inter can respond to.

Example::

    >>> t = make_family("blob").set_random_state(0)
    >>> img_s, label = t(torch.zeros(1, 64, 64), torch.zeros(1, 64, 64))
    >>> img_s.shape, label.shape
    (torch.Size([1, 64, 64]), torch.Size([1, 64, 64]))
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandomizableTransform

from .synthesis import DEFAULT_CENTRE_RANGE, DEFAULT_SIZE_RANGE, SyntheticPatchAnomaly, patch_box

FAMILIES = ("fpi", "fpi_shift", "intensity", "blob", "poisson", "fpi_unlabeled")
# Families whose donor comes from the unlabeled pool D_u rather than from the known normals.
UNLABELED_DONOR = ("fpi_unlabeled",)


def check_families(names, key: str = "synthesis") -> list[str]:
    """A non-empty list of known family names (a single name is accepted as a list of one)."""
    names = [names] if isinstance(names, str) else list(names or [])
    if not names:
        raise ValueError(f"config key '{key}' must name at least one synthesis family ({', '.join(FAMILIES)})")
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(
            f"config key '{key}': unknown synthesis famil{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(map(repr, unknown))}; choose among {', '.join(FAMILIES)}"
        )
    return names


def uses_unlabeled(*family_lists) -> bool:
    """Whether any of the family lists (``synthesis``, ``synthesis_holdout``) needs D_u donors."""
    names = [n for names in family_lists if names for n in ([names] if isinstance(names, str) else names)]
    return any(n in UNLABELED_DONOR for n in names)


class _RegionFamily(RandomizableTransform):
    """Shared parts: the paper's box geometry and a smooth-edged ellipse inside the box."""

    def __init__(self):
        super().__init__(prob=1.0)

    def _box(self, height: int, width: int) -> tuple[int, int, int, int]:
        cy, cx = (self.R.uniform(*DEFAULT_CENTRE_RANGE) for _ in range(2))
        size = self.R.uniform(*DEFAULT_SIZE_RANGE)
        box = patch_box(torch.tensor(cy), torch.tensor(cx), torch.tensor(size), height, width)
        r0, r1, c0, c1 = (int(v) for v in box.tolist())
        return r0, max(r1, r0 + 2), c0, max(c1, c0 + 2)  # at least 2x2, so every draw alters something

    def _ellipse(self, box, height: int, width: int) -> torch.Tensor:
        """A (H, W) weight in [0, 1]: 1 inside an ellipse of the box, a raised-cosine edge to 0."""
        r0, r1, c0, c1 = box
        angle = self.R.uniform(0.0, math.pi)
        rows = torch.arange(height, dtype=torch.float64)[:, None] - (r0 + r1 - 1) / 2.0
        cols = torch.arange(width, dtype=torch.float64)[None, :] - (c0 + c1 - 1) / 2.0
        a, b = max((r1 - r0) / 2.0, 1.0), max((c1 - c0) / 2.0, 1.0)
        u = math.cos(angle) * rows + math.sin(angle) * cols
        v = -math.sin(angle) * rows + math.cos(angle) * cols
        radius = torch.sqrt((u / a) ** 2 + (v / b) ** 2)
        edge = 0.5 * (1 + torch.cos(math.pi * ((radius - 0.6) / 0.4).clamp(0, 1)))
        return edge.float()

    def randomize(self, data=None) -> None:  # draws happen inside __call__, in a fixed order
        pass

    @staticmethod
    def _label(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (weight > 0.25).to(like.dtype)[None]


class ShiftedPatch(_RegionFamily):
    """``fpi_shift``: a rescaled donor patch from another location, alpha ~ U(0.5, 1)."""

    def __call__(self, img: torch.Tensor, donor: torch.Tensor):
        _, h, w = img.shape
        r0, r1, c0, c1 = self._box(h, w)
        ph, pw = r1 - r0, c1 - c0
        scale = self.R.uniform(0.75, 1.33)
        sh, sw = min(h, max(2, round(ph * scale))), min(w, max(2, round(pw * scale)))
        sr, sc = self.R.randint(0, h - sh + 1), self.R.randint(0, w - sw + 1)
        alpha = float(self.R.uniform(0.5, 1.0))
        source = donor[None, :, sr : sr + sh, sc : sc + sw].float()
        patch = F.interpolate(source, size=(ph, pw), mode="bilinear", align_corners=False)[0].to(img.dtype)
        out = img.clone()
        out[:, r0:r1, c0:c1] = (1 - alpha) * img[:, r0:r1, c0:c1] + alpha * patch
        label = torch.zeros((1, h, w), dtype=img.dtype)
        label[:, r0:r1, c0:c1] = 1
        return out, label


class LocalIntensity(_RegionFamily):
    """``intensity``: x + weight * (shift + (contrast - 1) * (x - local mean)), clipped to [-1, 1]."""

    def __call__(self, img: torch.Tensor, donor: Optional[torch.Tensor] = None):
        _, h, w = img.shape
        weight = self._ellipse(self._box(h, w), h, w).to(img.dtype)
        shift = float(self.R.choice([-1.0, 1.0]) * self.R.uniform(0.15, 0.5))
        contrast = float(self.R.uniform(0.5, 1.5))
        local_mean = (img * weight).sum(dim=(1, 2), keepdim=True) / weight.sum().clamp_min(1e-6)
        out = (img + weight * (shift + (contrast - 1) * (img - local_mean))).clamp(-1, 1)
        return out, self._label(weight, img)


def _smooth_noise(shape, sigma: float, rng: np.random.RandomState) -> torch.Tensor:
    """Gaussian-filtered white noise (H, W), scaled to unit standard deviation."""
    noise = torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)[None, None]
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    noise = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    noise = F.conv2d(F.pad(noise, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    noise = noise[0, 0]
    return noise / noise.std().clamp_min(1e-6)


class TexturedBlob(_RegionFamily):
    """``blob``: (1 - a w) x + a w (level + amplitude * texture), a ~ U(0.5, 1)."""

    def __call__(self, img: torch.Tensor, donor: Optional[torch.Tensor] = None):
        _, h, w = img.shape
        weight = self._ellipse(self._box(h, w), h, w).to(img.dtype)
        level = float(self.R.uniform(-1.0, 1.0))
        amplitude = float(self.R.uniform(0.05, 0.4))
        texture = _smooth_noise((h, w), float(self.R.uniform(1.0, 4.0)), self.R).to(img.dtype)
        alpha = float(self.R.uniform(0.5, 1.0))
        blend = alpha * weight
        out = ((1 - blend) * img + blend * (level + amplitude * texture)).clamp(-1, 1)
        return out, self._label(weight, img)


def _sine_basis(n: int) -> torch.Tensor:
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.sin(math.pi * k[:, None] * k[None, :] / (n + 1))


def poisson_fill(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Inside a (C, h, w) region: the f with the Laplacian of ``source`` and ``target``'s border values.

    Both tensors hold the region plus a one-pixel border. Solved exactly with the discrete sine
    transform (Dirichlet problem on a rectangle): f = target + u, Laplacian(u) = Laplacian(source
    - target) inside, u = 0 on the border.
    """
    diff = (source - target).double()
    inner = diff[:, 1:-1, 1:-1]
    lap = diff[:, :-2, 1:-1] + diff[:, 2:, 1:-1] + diff[:, 1:-1, :-2] + diff[:, 1:-1, 2:] - 4 * inner
    h, w = inner.shape[1:]
    sh, sw = _sine_basis(h), _sine_basis(w)
    eig_h = 2 * torch.cos(math.pi * torch.arange(1, h + 1, dtype=torch.float64) / (h + 1)) - 2
    eig_w = 2 * torch.cos(math.pi * torch.arange(1, w + 1, dtype=torch.float64) / (w + 1)) - 2
    coeff = sh @ lap @ sw / (eig_h[:, None] + eig_w[None, :])
    u = sh @ coeff @ sw * (4.0 / ((h + 1) * (w + 1)))
    out = target.double().clone()
    out[:, 1:-1, 1:-1] += u
    return out.to(target.dtype)


class PoissonPatch(_RegionFamily):
    """``poisson``: a donor patch from another location, blended in the gradient domain."""

    def __call__(self, img: torch.Tensor, donor: torch.Tensor):
        _, h, w = img.shape
        r0, r1, c0, c1 = self._box(h, w)
        r0, c0, r1, c1 = max(r0, 1), max(c0, 1), min(max(r1, r0 + 2), h - 1), min(max(c1, c0 + 2), w - 1)
        ph, pw = r1 - r0 + 2, c1 - c0 + 2
        sr, sc = self.R.randint(0, h - ph + 1), self.R.randint(0, w - pw + 1)
        region = img[:, r0 - 1 : r1 + 1, c0 - 1 : c1 + 1]
        filled = poisson_fill(region, donor[:, sr : sr + ph, sc : sc + pw].to(img.dtype))
        out = img.clone()
        out[:, r0 - 1 : r1 + 1, c0 - 1 : c1 + 1] = filled.clamp(-1, 1)
        label = torch.zeros((1, h, w), dtype=img.dtype)
        label[:, r0:r1, c0:c1] = 1
        return out, label


class SameLocationPatch(RandomizableTransform):
    """``fpi`` / ``fpi_unlabeled``: the paper's patch (``synthesis.SyntheticPatchAnomaly``), always applied."""

    def __init__(self):
        super().__init__(prob=1.0)
        self.patch = SyntheticPatchAnomaly(prob=1.0)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.patch.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, img: torch.Tensor, donor: torch.Tensor):
        return self.patch(img, donor)


_CLASSES = {
    "fpi": SameLocationPatch,
    "fpi_shift": ShiftedPatch,
    "intensity": LocalIntensity,
    "blob": TexturedBlob,
    "poisson": PoissonPatch,
    "fpi_unlabeled": SameLocationPatch,
}


def make_family(name: str) -> RandomizableTransform:
    check_families([name])
    return _CLASSES[name]()


class FamilySynthesizer:
    """Synthetic anomalies on batches (B, C, H, W) from a list of families, seeded per call.

    Each image is altered with probability ``prob`` by one family drawn uniformly from
    ``families``; its donor is another image of the batch, or an image of ``unlabeled`` (D_u, a
    (N, C, H, W) tensor) for the families in ``UNLABELED_DONOR``.

    ``synthesizer(images, seed) -> (images_s, labels (B, 1, H, W), families (B,) list of names or
    None where nothing was applied)``: the same seed gives the same batch.
    """

    def __init__(
        self,
        families: Sequence[str],
        unlabeled: Optional[torch.Tensor] = None,
        prob: float = 0.5,
        key: str = "synthesis",
    ):
        self.families = check_families(families, key)
        needs_pool = [f for f in self.families if f in UNLABELED_DONOR]
        if needs_pool and (unlabeled is None or len(unlabeled) == 0):
            raise ValueError(
                f"config key '{key}': {', '.join(needs_pool)} takes its donors from the unlabeled "
                "images D_u, and this run has none"
            )
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"synthesis probability must be in [0, 1], got {prob}")
        self.unlabeled = unlabeled
        self.prob = float(prob)
        self.transforms = {name: make_family(name) for name in dict.fromkeys(self.families)}

    def __call__(self, images: torch.Tensor, seed: int):
        if images.dim() != 4 or images.shape[0] < 2:
            raise ValueError(f"images must be a (B, C, H, W) batch of at least 2, got {tuple(images.shape)}")
        rng = np.random.RandomState(int(seed) % (2**32))
        for t in self.transforms.values():
            t.set_random_state(int(rng.randint(0, 2**31 - 1)))
        b = images.shape[0]
        out, labels, used = images.clone(), torch.zeros_like(images[:, :1]), []
        apply = rng.uniform(size=b) < self.prob
        choice = rng.randint(0, len(self.families), size=b)
        offsets = rng.randint(1, b, size=b)
        pool_index = rng.randint(0, len(self.unlabeled), size=b) if self.unlabeled is not None else None
        for i in range(b):
            if not apply[i]:
                used.append(None)
                continue
            family = self.families[choice[i]]
            if family in UNLABELED_DONOR:
                donor = self.unlabeled[int(pool_index[i])].to(images.device, images.dtype)
            else:
                donor = images[(i + int(offsets[i])) % b]
            out[i], labels[i] = self.transforms[family](images[i], donor)
            used.append(family)
        return out, labels, used
