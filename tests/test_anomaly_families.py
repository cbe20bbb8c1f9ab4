"""Synthetic-anomaly families for stage 2: seeded, labelled where they alter, donors as declared."""

import pytest
import torch

from scripts.scoring.anomaly_families import FAMILIES, FamilySynthesizer, check_families, make_family, poisson_fill


def images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(-0.8, 0.8, size).view(1, 1, 1, size).expand(n, 1, size, size)
    return (base + 0.1 * torch.randn(n, 1, size, size, generator=g)).clamp(-1, 1).contiguous()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_seeded_and_alters_mostly_inside_its_label(family):
    x, pool = images(), images(4, seed=1) * -1  # a donor pool unlike the normals
    synth = FamilySynthesizer([family], pool, prob=1.0)
    altered, labels, used = synth(x, seed=3)
    again, labels_again, _ = synth(x, seed=3)
    assert torch.equal(altered, again) and torch.equal(labels, labels_again)
    assert not torch.equal(synth(x, seed=4)[1], labels)
    assert used == [family] * len(x)
    assert set(labels.unique().tolist()) <= {0.0, 1.0} and (labels.flatten(1).sum(1) > 0).all()
    change = (altered - x).abs()
    inside, outside = change[labels > 0].mean(), change[labels == 0].mean()
    assert inside > 0.02 and inside > 5 * outside, (float(inside), float(outside))
    assert altered.min() >= -1 and altered.max() <= 1 + 1e-6


def test_box_families_leave_every_pixel_outside_the_label_untouched():
    x = images()
    for family in ("fpi", "fpi_shift", "fpi_unlabeled"):
        altered, labels, _ = FamilySynthesizer([family], images(3, seed=2), prob=1.0)(x, seed=0)
        assert torch.equal(altered[labels.expand_as(x) == 0], x[labels.expand_as(x) == 0]), family


def test_fpi_unlabeled_takes_its_patch_from_the_unlabeled_pool_at_the_same_location():
    x = torch.zeros(4, 1, 16, 16)
    pool = torch.full((2, 1, 16, 16), 0.8)
    altered, labels, _ = FamilySynthesizer(["fpi_unlabeled"], pool, prob=1.0)(x, seed=1)
    inside = altered[labels > 0]
    # (1 - alpha) * 0 + alpha * 0.8: every altered pixel lies between the image and the pool donor
    assert (inside >= 0).all() and (inside <= 0.8 + 1e-6).all() and inside.max() > 0


def test_probability_and_mixture_choose_per_image():
    x = images(40)
    altered, labels, used = FamilySynthesizer(["blob", "intensity"], prob=0.5)(x, seed=0)
    applied = [u is not None for u in used]
    assert 8 < sum(applied) < 32 and {u for u in used if u} == {"blob", "intensity"}
    for i, a in enumerate(applied):
        assert bool(labels[i].any()) == a
        assert torch.equal(altered[i], x[i]) or a


def test_poisson_fill_keeps_the_border_and_takes_the_source_laplacian():
    g = torch.Generator().manual_seed(0)
    target, source = torch.rand(1, 9, 13, generator=g), torch.rand(1, 9, 13, generator=g)
    filled = poisson_fill(target, source)

    def laplacian(z):
        return z[:, :-2, 1:-1] + z[:, 2:, 1:-1] + z[:, 1:-1, :-2] + z[:, 1:-1, 2:] - 4 * z[:, 1:-1, 1:-1]

    torch.testing.assert_close(laplacian(filled), laplacian(source), atol=1e-5, rtol=0)
    inner = torch.zeros_like(target, dtype=torch.bool)
    inner[:, 1:-1, 1:-1] = True
    assert torch.equal(filled[~inner], target[~inner])


def test_bad_family_settings_are_refused_with_the_key():
    with pytest.raises(ValueError, match="config key 'synthesis': unknown synthesis family 'fpix'"):
        check_families(["fpi", "fpix"])
    with pytest.raises(ValueError, match="'synthesis_holdout' must name at least one"):
        check_families([], "synthesis_holdout")
    with pytest.raises(ValueError, match="fpi_unlabeled takes its donors from the unlabeled images"):
        FamilySynthesizer(["fpi_unlabeled"], None)
    assert make_family("poisson") is not make_family("poisson")
