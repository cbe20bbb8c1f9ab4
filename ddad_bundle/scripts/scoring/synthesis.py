"""Self-supervised anomaly synthesis for training the ASR-Net (stage 2 of DDAD).

Follows Cai et al., "Dual-distribution discrepancy with self-supervised refinement for anomaly
detection in medical images" (DDAD-ASR, Medical Image Analysis 2023), Sec. 3.3: a known-normal
image ``x`` receives, with probability ``prob`` (0.5 in the paper), a square patch blended in from
another normal image ``x_f`` at the same location,

    x_s = (1 - alpha) * x + alpha * x_f      inside the patch,   x_s = x   outside,

with ``alpha ~ U(0, 1)``, patch centre ``(cy, cx) ~ U(0.1 d, 0.9 d)`` and patch side
``size ~ U(0.1 d, 0.4 d)``. The label is the (clipped) patch mask; an untouched image gets an
all-zero label. Only ``x_s`` is used to build the stage-1 discrepancy maps; the ASR-Net learns to
segment the patch from them.

Geometry (shared by both entry points, so they draw from exactly the same distribution):
    All fractions are drawn uniformly, ``u ~ U(lo, hi)`` of the respective range, in float64.
    Rows use ``d = H`` and columns ``d = W``: ``cy = u_cy * H``, ``cx = u_cx * W``,
    ``half_r = u_size * H / 2``, ``half_c = u_size * W / 2`` (one size fraction for both axes, so
    the patch is square on square images). Bounds are rounded half-up, ``rnd(v) = floor(v + 0.5)``
    (not Python's/torch's round-half-to-even), and clipped:

        rows    [clip(rnd(cy - half_r), 0, H), clip(rnd(cy + half_r), 0, H))
        columns [clip(rnd(cx - half_c), 0, W), clip(rnd(cx + half_c), 0, W))

    With the default ranges the patch is never empty for d >= 10; a range that allows
    ``u_size = 0`` can give an empty box, in which case the label is all zero even when applied.

Two entry points:
    * :class:`SyntheticPatchAnomaly` -- a MONAI ``RandomizableTransform`` on one ``(C, H, W)``
      image and its donor; seeded with ``set_random_state(seed)``.
    * :func:`synthesize_batch` -- vectorised on a ``(B, C, H, W)`` batch, each image's donor drawn
      among the *other* images of the batch; seeded with a ``torch.Generator``. The ASR-Net
      training loop uses this on cached tensors.

Example:
    >>> import torch
    >>> t = SyntheticPatchAnomaly(prob=1.0).set_random_state(0)
    >>> img_s, label = t(torch.zeros(1, 64, 64), torch.ones(1, 64, 64))
    >>> label.shape, bool((img_s > 0).eq(label.bool()).all())
    (torch.Size([1, 64, 64]), True)
    >>> g = torch.Generator().manual_seed(0)
    >>> x_s, labels, donor = synthesize_batch(torch.randn(8, 1, 64, 64), g)
    >>> labels.shape, bool((donor != torch.arange(8)).all())
    (torch.Size([8, 1, 64, 64]), True)
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import NamedTuple, Sequence

import torch
from monai.transforms import RandomizableTransform

__all__ = [
    "PatchParams",
    "BatchPatchParams",
    "SyntheticPatchAnomaly",
    "sample_batch_params",
    "apply_batch_params",
    "synthesize_batch",
    "patch_box",
]

DEFAULT_ALPHA_RANGE = (0.0, 1.0)
DEFAULT_CENTRE_RANGE = (0.1, 0.9)
DEFAULT_SIZE_RANGE = (0.1, 0.4)


# ---------------------------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------------------------
def _check_prob(prob: float) -> float:
    if isinstance(prob, bool) or not isinstance(prob, Real) or not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"prob must be a number in [0, 1], got {prob!r}.")
    return float(prob)


def _check_range(value: Sequence[float], name: str) -> tuple[float, float]:
    """A (low, high) pair of fractions with 0 <= low <= high <= 1; low == high is a fixed value."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}.") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1, got {value!r}.")
    return low, high


# ---------------------------------------------------------------------------------------------
# geometry, shared by both entry points
# ---------------------------------------------------------------------------------------------
def _round_half_up(v: torch.Tensor) -> torch.Tensor:
    # torch.round is half-to-even; half-up is simpler to state and to recompute by hand.
    return torch.floor(v + 0.5).long()


def patch_box(
    cy_frac: torch.Tensor, cx_frac: torch.Tensor, size_frac: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Clipped integer patch bounds from fractional centre and size (see module docstring).

    Args:
        cy_frac, cx_frac, size_frac: tensors of equal shape ``(...)``, fractions of the image side.
        height, width: image size ``H, W``.

    Returns:
        long tensor ``(..., 4)`` holding ``[r0, r1, c0, c1]``: the patch is ``[r0:r1, c0:c1]``.
    """
    cy = cy_frac.double() * height
    cx = cx_frac.double() * width
    half_r = size_frac.double() * height / 2.0
    half_c = size_frac.double() * width / 2.0
    r0 = _round_half_up(cy - half_r).clamp(0, height)
    r1 = _round_half_up(cy + half_r).clamp(0, height)
    c0 = _round_half_up(cx - half_c).clamp(0, width)
    c1 = _round_half_up(cx + half_c).clamp(0, width)
    return torch.stack([r0, r1, c0, c1], dim=-1)


def _box_masks(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean masks ``(B, H, W)`` of boxes ``(B, 4)``, built by broadcasting (no Python loop)."""
    rows = torch.arange(height, device=box.device)
    cols = torch.arange(width, device=box.device)
    in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])  # (B, H)
    in_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :]


def _blend(x: torch.Tensor, donor: torch.Tensor, alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where keeps pixels outside the patch bit-identical to the input.
    return torch.where(mask, (1.0 - alpha) * x + alpha * donor, x)


# ---------------------------------------------------------------------------------------------
# single-image transform
# ---------------------------------------------------------------------------------------------
class PatchParams(NamedTuple):
    """Parameters of the last draw of :class:`SyntheticPatchAnomaly`.

    ``box`` is ``(r0, r1, c0, c1)`` of the clipped patch, or ``None`` before the first call.
    The fractions are drawn on every call, also when ``apply`` is False (then unused).
    """

    apply: bool
    alpha: float
    cy_frac: float
    cx_frac: float
    size_frac: float
    box: tuple[int, int, int, int] | None


class SyntheticPatchAnomaly(RandomizableTransform):
    """Blend a random square patch of a donor normal image into a normal image (DDAD-ASR).

    Args:
        prob: probability of synthesizing an anomaly (paper: 0.5).
        alpha_range: range of the blending weight ``alpha`` of the donor.
        centre_range: range of the patch centre, as a fraction of the image side.
        size_range: range of the patch side length, as a fraction of the image side.

    Call ``t(img, donor)`` with two ``(C, H, W)`` tensors of the same shape; returns
    ``(img_s, label)`` with ``label`` a ``(1, H, W)`` float mask of the patch (all zero when no
    anomaly was synthesized, in which case ``img_s`` is ``img`` itself). ``last_params`` exposes
    the draw. Seed with ``set_random_state(seed)``.
    """

    def __init__(
        self,
        prob: float = 0.5,
        alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
        centre_range: Sequence[float] = DEFAULT_CENTRE_RANGE,
        size_range: Sequence[float] = DEFAULT_SIZE_RANGE,
    ) -> None:
        # No draw yet: report (and, with randomize=False, act as) 'not applied' until the first call.
        super().__init__(prob=_check_prob(prob), do_transform=False)
        self.alpha_range = _check_range(alpha_range, "alpha_range")
        self.centre_range = _check_range(centre_range, "centre_range")
        self.size_range = _check_range(size_range, "size_range")
        self._alpha = self._cy = self._cx = self._size = 0.0
        self._box: tuple[int, int, int, int] | None = None

    def randomize(self, data=None) -> None:
        super().randomize(None)  # draws the apply flag
        # Always draw the geometry so that the random stream advances the same way per call.
        self._alpha = float(self.R.uniform(*self.alpha_range))
        self._cy = float(self.R.uniform(*self.centre_range))
        self._cx = float(self.R.uniform(*self.centre_range))
        self._size = float(self.R.uniform(*self.size_range))

    @property
    def last_params(self) -> PatchParams:
        return PatchParams(bool(self._do_transform), self._alpha, self._cy, self._cx, self._size, self._box)

    def __call__(
        self, img: torch.Tensor, donor: torch.Tensor, randomize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(img, torch.Tensor) or img.ndim != 3:
            raise ValueError(
                f"img must be a (C, H, W) torch tensor, got {type(img).__name__} "
                f"of shape {tuple(getattr(img, 'shape', ()))}."
            )
        if not isinstance(donor, torch.Tensor) or donor.shape != img.shape:
            raise ValueError(
                f"donor must be a torch tensor of the image's shape {tuple(img.shape)}, "
                f"got {tuple(getattr(donor, 'shape', ()))}."
            )
        if randomize:
            self.randomize()
        _, height, width = img.shape
        box = patch_box(torch.tensor(self._cy), torch.tensor(self._cx), torch.tensor(self._size), height, width)
        self._box = tuple(int(v) for v in box.tolist())
        label_dtype = img.dtype if img.is_floating_point() else torch.float32
        label = torch.zeros((1, height, width), dtype=label_dtype, device=img.device)
        if not self._do_transform:
            return img, label
        r0, r1, c0, c1 = self._box
        img_s = img.clone()
        donor = donor.to(device=img.device, dtype=img.dtype)
        img_s[:, r0:r1, c0:c1] = (1.0 - self._alpha) * img[:, r0:r1, c0:c1] + self._alpha * donor[:, r0:r1, c0:c1]
        label[:, r0:r1, c0:c1] = 1.0
        return img_s, label


# ---------------------------------------------------------------------------------------------
# batched, vectorised version
# ---------------------------------------------------------------------------------------------
class BatchPatchParams(NamedTuple):
    """Per-image draws of :func:`sample_batch_params`, all tensors of leading size ``B``.

    apply (B,) bool; alpha, cy_frac, cx_frac, size_frac (B,) float64; box (B, 4) long
    ``[r0, r1, c0, c1]``; donor (B,) long, never equal to the image's own index.
    """

    apply: torch.Tensor
    alpha: torch.Tensor
    cy_frac: torch.Tensor
    cx_frac: torch.Tensor
    size_frac: torch.Tensor
    box: torch.Tensor
    donor: torch.Tensor


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    return low + (high - low) * u


def sample_batch_params(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    prob: float = 0.5,
    alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
    centre_range: Sequence[float] = DEFAULT_CENTRE_RANGE,
    size_range: Sequence[float] = DEFAULT_SIZE_RANGE,
) -> BatchPatchParams:
    """Draw synthesis parameters for a batch (tensors on ``generator.device``).

    Draw order, fixed so that a generator seeded alike reproduces :func:`synthesize_batch`:
    apply, alpha, cy, cx, size, donor offset.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 2:
        raise ValueError(
            f"batch_size must be an integer >= 2 (each image needs another image as donor), got {batch_size!r}."
        )
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
    prob = _check_prob(prob)
    alpha_range = _check_range(alpha_range, "alpha_range")
    centre_range = _check_range(centre_range, "centre_range")
    size_range = _check_range(size_range, "size_range")

    apply = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=generator.device) < prob
    alpha = _uniform(batch_size, alpha_range, generator)
    cy = _uniform(batch_size, centre_range, generator)
    cx = _uniform(batch_size, centre_range, generator)
    size = _uniform(batch_size, size_range, generator)
    # A non-zero offset modulo B picks each donor uniformly among the other B - 1 images.
    offset = torch.randint(1, batch_size, (batch_size,), generator=generator, device=generator.device)
    donor = (torch.arange(batch_size, device=generator.device) + offset) % batch_size
    box = patch_box(cy, cx, size, height, width)
    return BatchPatchParams(apply, alpha, cy, cx, size, box, donor)


def apply_batch_params(images: torch.Tensor, params: BatchPatchParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend the donors' patches into ``images`` (B, C, H, W); returns ``(images_s, labels (B, 1, H, W))``."""
    _, _, height, width = images.shape
    box = params.box.to(images.device)
    mask = _box_masks(box, height, width) & params.apply.to(images.device)[:, None, None]  # (B, H, W)
    mask = mask[:, None]  # (B, 1, H, W), broadcasts over channels
    alpha = params.alpha.to(device=images.device, dtype=images.dtype)[:, None, None, None]
    donors = images[params.donor.to(images.device)]
    images_s = _blend(images, donors, alpha, mask)
    label_dtype = images.dtype if images.is_floating_point() else torch.float32
    return images_s, mask.to(label_dtype)


def synthesize_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    prob: float = 0.5,
    alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
    centre_range: Sequence[float] = DEFAULT_CENTRE_RANGE,
    size_range: Sequence[float] = DEFAULT_SIZE_RANGE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthesize patch anomalies on a batch of normal images, donors taken within the batch.

    Args:
        images: ``(B, C, H, W)`` floating tensor of normal images, ``B >= 2``.
        generator: the only source of randomness (its device is where the draws happen).
        prob, alpha_range, centre_range, size_range: as in :class:`SyntheticPatchAnomaly`.

    Returns:
        ``images_s (B, C, H, W)``, ``labels (B, 1, H, W)`` float masks, ``donor_index (B,)`` long
        with ``donor_index[i] != i``. Same distribution as :class:`SyntheticPatchAnomaly`.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"images must be a (B, C, H, W) torch tensor, got shape {tuple(getattr(images, 'shape', ()))}."
        )
    if images.shape[0] < 2:
        raise ValueError(
            f"images must hold at least 2 images (each needs another one as donor), got a batch of {images.shape[0]}."
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating tensor, got dtype {images.dtype}.")
    b, _, height, width = images.shape
    params = sample_batch_params(b, height, width, generator, prob, alpha_range, centre_range, size_range)
    images_s, labels = apply_batch_params(images, params)
    return images_s, labels, params.donor.to(images.device)
