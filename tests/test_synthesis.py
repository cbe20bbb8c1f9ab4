"""Tests of the ASR-Net's synthetic patch anomalies (scripts/scoring/synthesis.py)."""

import math

import pytest
import torch

from scripts.scoring.synthesis import (
    SyntheticPatchAnomaly,
    apply_batch_params,
    patch_box,
    sample_batch_params,
    synthesize_batch,
)


def _pair(c=1, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, h, w, generator=g), torch.rand(c, h, w, generator=g) + 2.0


def _expected_box(cy, cx, size, h, w):
    """The documented rounding, recomputed independently in plain Python."""

    def rnd(v):
        return math.floor(v + 0.5)

    def clip(v, n):
        return min(max(v, 0), n)

    hr, hc = size * h / 2, size * w / 2
    return (clip(rnd(cy * h - hr), h), clip(rnd(cy * h + hr), h), clip(rnd(cx * w - hc), w), clip(rnd(cx * w + hc), w))


def _box_mask(box, h, w):
    m = torch.zeros(1, h, w)
    r0, r1, c0, c1 = box
    m[:, r0:r1, c0:c1] = 1.0
    return m


# ------------------------------------------------------------------ single-image transform
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 40, 72)])
def test_label_is_patch_and_blend_is_exact(shape):
    t = SyntheticPatchAnomaly(prob=1.0).set_random_state(1)
    x, xf = _pair(*shape)
    for _ in range(50):
        xs, label = t(x, xf)
        p = t.last_params
        assert p.apply
        assert 0.0 <= p.alpha <= 1.0
        assert 0.1 <= p.cy_frac <= 0.9 and 0.1 <= p.cx_frac <= 0.9 and 0.1 <= p.size_frac <= 0.4
        box = _expected_box(p.cy_frac, p.cx_frac, p.size_frac, shape[1], shape[2])
        assert p.box == box
        assert label.shape == (1, shape[1], shape[2]) and label.dtype == x.dtype
        assert torch.equal(label, _box_mask(box, shape[1], shape[2]))
        inside = label.bool().expand_as(x)
        assert torch.equal(xs[~inside], x[~inside])  # untouched, bit for bit
        blended = (1 - p.alpha) * x + p.alpha * xf
        torch.testing.assert_close(xs[inside], blended[inside], rtol=1e-6, atol=1e-6)
        assert inside.any()


def test_not_applied_returns_image_and_zero_label():
    t = SyntheticPatchAnomaly(prob=0.0).set_random_state(0)
    x, xf = _pair()
    xs, label = t(x, xf)
    assert not t.last_params.apply
    assert torch.equal(xs, x) and label.shape == (1, 64, 64) and not label.any()


def test_fraction_synthesized_is_prob():
    t = SyntheticPatchAnomaly().set_random_state(123)
    x, xf = _pair(h=16, w=16)
    hits = 0
    for _ in range(2000):
        _, label = t(x, xf)
        hits += int(t.last_params.apply)
        assert bool(label.any()) == t.last_params.apply
    assert abs(hits / 2000 - 0.5) <= 0.04


def test_seed_reproducible_and_different_seeds_differ():
    x, xf = _pair()

    def run(seed):
        t = SyntheticPatchAnomaly(prob=1.0).set_random_state(seed)
        return [t(x, xf) for _ in range(5)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a, b))
    assert any(not torch.equal(u[1], v[1]) for u, v in zip(a, c))


def test_randomize_false_reuses_last_draw():
    t = SyntheticPatchAnomaly(prob=1.0).set_random_state(3)
    x, xf = _pair()
    xs1, l1 = t(x, xf)
    xs2, l2 = t(x, xf, randomize=False)
    assert torch.equal(xs1, xs2) and torch.equal(l1, l2)


def test_border_patches_are_clipped():
    h = w = 50
    t = SyntheticPatchAnomaly(prob=1.0, centre_range=(0.0, 0.02), size_range=(0.3, 0.4)).set_random_state(0)
    x, xf = _pair(h=h, w=w)
    for _ in range(30):
        xs, label = t(x, xf)
        p = t.last_params
        r0, r1, c0, c1 = p.box
        assert r0 == 0 and c0 == 0  # the unclipped start is negative
        assert p.cy_frac * h - p.size_frac * h / 2 < 0
        assert 0 < r1 <= h and 0 < c1 <= w
        assert label.shape == (1, h, w)
        assert torch.equal(label, _box_mask(p.box, h, w))
        assert label.sum().item() == (r1 - r0) * (c1 - c0)


def test_patch_box_rounding_is_half_up_and_clipped():
    box = patch_box(torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([0.25]), 10, 10)
    # cy = 5, half = 1.25 -> [round(3.75), round(6.25)) = [4, 6)
    assert box.tolist() == [[4, 6, 4, 6]]
    box = patch_box(torch.tensor([0.25]), torch.tensor([0.95]), torch.tensor([0.1]), 10, 10)
    # rows: 2.5 - 0.5 = 2.0 -> 2, 3.0 -> 3; cols: 9.5 - 0.5 = 9 -> 9, 10 -> 10 (clip at 10)
    assert box.tolist() == [[2, 3, 9, 10]]
    box = patch_box(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.4]), 10, 10)
    assert box.tolist() == [[0, 2, 8, 10]]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"prob": 1.5}, "prob"),
        ({"prob": -0.1}, "prob"),
        ({"alpha_range": (0.8, 0.2)}, "alpha_range"),
        ({"centre_range": (-0.1, 0.5)}, "centre_range"),
        ({"size_range": (0.1, 1.2)}, "size_range"),
        ({"size_range": (0.1,)}, "size_range"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticPatchAnomaly(**kwargs)
    with pytest.raises(ValueError, match=name):
        synthesize_batch(torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0), **kwargs)


def test_bad_inputs():
    t = SyntheticPatchAnomaly()
    with pytest.raises(ValueError, match="img"):
        t(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="donor"):
        t(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))


# ------------------------------------------------------------------ batched version
def test_batch_needs_two_images():
    with pytest.raises(ValueError, match="images"):
        synthesize_batch(torch.zeros(1, 1, 8, 8), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="images"):
        synthesize_batch(torch.zeros(4, 8, 8), torch.Generator().manual_seed(0))


def test_batch_donors_and_per_image_consistency():
    b, c, h, w = 16, 2, 32, 48
    images = torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(5))
    for seed in range(20):
        xs, labels, donor = synthesize_batch(images, torch.Generator().manual_seed(seed))
        params = sample_batch_params(b, h, w, torch.Generator().manual_seed(seed))
        assert xs.shape == images.shape and labels.shape == (b, 1, h, w)
        assert donor.dtype == torch.long and not (donor == torch.arange(b)).any()
        assert torch.equal(donor, params.donor)
        for i in range(b):
            box = _expected_box(*(float(v[i]) for v in (params.cy_frac, params.cx_frac, params.size_frac)), h, w)
            assert tuple(params.box[i].tolist()) == box
            expected_label = _box_mask(box, h, w) if params.apply[i] else torch.zeros(1, h, w)
            assert torch.equal(labels[i], expected_label)
            inside = labels[i].bool().expand(c, h, w)
            assert torch.equal(xs[i][~inside], images[i][~inside])
            a = float(params.alpha[i])
            blended = (1 - a) * images[i] + a * images[donor[i]]
            torch.testing.assert_close(xs[i][inside], blended[inside], rtol=1e-6, atol=1e-6)


def test_batch_is_seeded():
    images = torch.rand(8, 1, 16, 16)
    a = synthesize_batch(images, torch.Generator().manual_seed(1))
    b = synthesize_batch(images, torch.Generator().manual_seed(1))
    c = synthesize_batch(images, torch.Generator().manual_seed(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_batch_distribution_matches_ranges():
    g = torch.Generator().manual_seed(0)
    p = sample_batch_params(20000, 64, 64, g)
    assert abs(p.apply.double().mean().item() - 0.5) <= 0.02
    for values, (lo, hi) in (
        (p.alpha, (0.0, 1.0)),
        (p.cy_frac, (0.1, 0.9)),
        (p.cx_frac, (0.1, 0.9)),
        (p.size_frac, (0.1, 0.4)),
    ):
        assert values.min() >= lo and values.max() <= hi
        # uniform: mean at the centre, std (hi - lo) / sqrt(12), both within a few % of the width
        assert abs(values.mean().item() - (lo + hi) / 2) <= 0.02 * (hi - lo)
        assert abs(values.std().item() - (hi - lo) / math.sqrt(12)) <= 0.02 * (hi - lo)
    # donors uniform among the others: offsets 1..B-1 all used
    small = sample_batch_params(4, 8, 8, torch.Generator().manual_seed(0))
    assert small.donor.shape == (4,)
    counts = torch.zeros(4, 4)
    g = torch.Generator().manual_seed(1)
    for _ in range(600):
        d = sample_batch_params(4, 8, 8, g).donor
        counts[torch.arange(4), d] += 1
    assert counts.diagonal().sum() == 0
    off = counts[~torch.eye(4, dtype=torch.bool)]
    assert off.min() > 150 and off.max() < 250  # expected 200 each


def test_batch_and_transform_share_the_distribution():
    """Patch side lengths (unclipped, in pixels) and alpha: same law in both entry points."""
    n, d = 3000, 64
    t = SyntheticPatchAnomaly(prob=1.0).set_random_state(0)
    x, xf = _pair(h=d, w=d)
    single_sizes, single_alpha, single_geometry = [], [], []
    for _ in range(n):
        t(x, xf)
        single_sizes.append(t.last_params.size_frac * d)
        single_alpha.append(t.last_params.alpha)
        single_geometry.append((t.last_params.cy_frac, t.last_params.cx_frac, t.last_params.size_frac))
    p = sample_batch_params(n, d, d, torch.Generator().manual_seed(0), prob=1.0)
    s1, s2 = torch.tensor(single_sizes), p.size_frac * d
    a1, a2 = torch.tensor(single_alpha), p.alpha
    for u, v, width in ((s1, s2, 0.3 * d), (a1, a2, 1.0)):
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert abs(torch.quantile(u.double(), q) - torch.quantile(v.double(), q)) <= 0.05 * width
    # and the pixel areas of the resulting labels agree on average (within 3 %)
    area_batch = apply_batch_params(torch.zeros(n, 1, d, d), p)[1].sum(dim=(1, 2, 3)).double()
    area_single = torch.tensor(
        [(b[1] - b[0]) * (b[3] - b[2]) for b in (_expected_box(cy, cx, s, d, d) for cy, cx, s in single_geometry)],
        dtype=torch.float64,
    )
    assert area_batch.min() > 0 and area_single.min() > 0
    assert abs(area_batch.mean() - area_single.mean()) <= 0.03 * area_single.mean()
