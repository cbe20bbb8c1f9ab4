"""SALAD's pieces on tiny tensors: network, losses against hand computations, memory bank, kNN score,
schedule, augmentations, and the trainer's resume and determinism."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import crash_then_resume
from scripts.engines.salad import SaladBatches, SaladSchedule, SaladTrainer, XrayAugment, build_model, salad_losses
from scripts.handlers.training import MemberCheckpoints, final_weights_path
from scripts.networks.salad import SALADNet, halving_layers
from scripts.scoring.salad import (
    KNNScore,
    MemoryBank,
    nearest_entries,
    neighbour_mask,
    neighbourhood_nll,
    probabilities,
    prototypical,
)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


# ----------------------------------------------------------------------------- network


@pytest.mark.parametrize("size,halving", [(32, 3), (64, 4), (256, 6)])
def test_network_has_six_layer_encoder_and_decoder_and_unit_embedding(size, halving):
    net = SALADNet(1, size, channels=(4, 8, 8, 8, 8, 8)).eval()
    assert halving_layers(size) == halving
    assert len(net.encoder) == 6 and len(net.decoder) == 6
    halvers = [b[0] for b in net.encoder if b[0].stride == (2, 2)]
    assert len(halvers) == halving
    recon, z = net(torch.rand(3, 1, size, size) * 2 - 1)
    assert recon.shape == (3, 1, size, size) and z.shape == (3, 200)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert recon.abs().max() <= 1


def test_network_is_scriptable_and_refuses_bad_sizes():
    net = SALADNet(1, 32, embedding_size=20, channels=(4, 4, 4, 4, 4, 4)).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(scripted(x)[1], net(x)[1], atol=1e-6)
    with pytest.raises(ValueError, match="power of two"):
        SALADNet(1, 48)
    with pytest.raises(ValueError, match="6 layer widths"):
        SALADNet(1, 32, channels=(4, 4))


# ----------------------------------------------------------------------------- losses by hand


def test_p_ij_is_the_temperature_softmax_over_the_bank():
    z = unit([1.0, 0.0])
    bank = unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    p = probabilities(z, bank, tau=0.5)
    denominator = math.exp(2) + math.exp(0) + math.exp(-2)
    assert p[0].tolist() == pytest.approx([math.exp(2) / denominator, 1 / denominator, math.exp(-2) / denominator])
    excluded = probabilities(z, bank, tau=0.5, exclude=torch.tensor([[False, True, False]]))
    assert excluded[0].tolist() == pytest.approx(
        [math.exp(2) / (math.exp(2) + math.exp(-2)), 0.0, math.exp(-2) / (math.exp(2) + math.exp(-2))]
    )
    with pytest.raises(ValueError, match="tau"):
        probabilities(z, bank, tau=0.0)


def test_sample_specific_loss_matches_a_hand_computation():
    # one image (bank entry 1 of 3) in two views; anchors are the views, candidates the bank then the views
    bank = unit([1.0, 0.0], [0.6, 0.8], [0.0, 1.0])
    views = unit([0.8, 0.6], [0.6, 0.8])
    candidates = torch.cat([bank, views])
    exclude = torch.tensor([[False, False, False, True, False], [False, False, False, False, True]])
    positives = torch.tensor([[False, True, False, False, True], [False, True, False, True, False]])
    tau = 0.1
    expected = 0.0
    for a in range(2):
        sims = [float(views[a] @ c) / tau for c in candidates]
        total = sum(math.exp(s) for j, s in enumerate(sims) if not exclude[a, j])
        positive = sum(math.exp(s) for j, s in enumerate(sims) if positives[a, j])
        expected += -math.log(positive / total) / 2
    assert float(neighbourhood_nll(views, candidates, positives, tau, exclude)) == pytest.approx(expected, rel=1e-5)


def test_salad_losses_build_the_positives_of_l_ss_from_the_bank_entry_and_the_other_views():
    torch.manual_seed(0)
    model = build_model(lambda: SALADNet(1, 16, embedding_size=3, channels=(4,) * 6), num_entries=5, seed=1)
    model.eval()  # BatchNorm in eval: the embeddings below are the ones the loss saw
    images, index = torch.rand(2, 1, 16, 16), torch.tensor([3, 0])
    identity = lambda x, generator: x  # noqa: E731 - views equal to the images: z known from the network
    parts = salad_losses(model, images, index, views=2, augment=identity, generator=None, tau=0.5)
    z = model.net.embed(images).detach()
    anchors = torch.cat([z, z])  # view-major: (image 0, view 0), (image 1, view 0), (image 0, view 1), ...
    bank = model.bank.entries
    expected = 0.0
    for a in range(4):
        owner = a % 2
        total = positive = 0.0
        for j in range(5 + 4):
            if j == 5 + a:
                continue
            c = bank[j] if j < 5 else anchors[j - 5]
            e = math.exp(float(anchors[a] @ c) / 0.5)
            total += e
            if (j < 5 and j == int(index[owner])) or (j >= 5 and (j - 5) % 2 == owner):
                positive += e
        expected += -math.log(positive / total) / 4
    assert parts["ss"].item() == pytest.approx(expected, rel=1e-4)
    assert float(parts["agg"]) == 0.0
    assert torch.allclose(parts["z"], z, atol=1e-6)


def test_aggregation_loss_over_a_known_neighbourhood():
    z = unit([1.0, 0.0])
    bank = unit([1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0])
    near = nearest_entries(z, bank, k=2)
    assert sorted(near[0].tolist()) == [0, 1]
    tau = 0.2
    e = [math.exp(c / tau) for c in (1.0, 0.8, 0.0, -1.0)]
    expected = -math.log((e[0] + e[1]) / sum(e))
    assert float(neighbourhood_nll(z, bank, neighbour_mask(near, 4), tau)) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="k = 5 neighbours asked of a memory bank of 4 entries"):
        nearest_entries(z, bank, k=5)


def test_prototypical_samples_are_the_tightest_neighbourhoods():
    bank = unit([1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-0.7, -0.7])
    batch = unit([1.0, 0.05], [0.3, 0.95], [-1.0, 0.2], [0.95, -0.3])
    chosen = prototypical(batch, bank, k=2, fraction=0.5)
    assert sorted(chosen.tolist()) == [0, 3]
    assert len(prototypical(batch, bank, k=2, fraction=1.0)) == 4
    with pytest.raises(ValueError, match="prototype fraction"):
        prototypical(batch, bank, k=2, fraction=0.0)


# ----------------------------------------------------------------------------- memory bank


def test_memory_bank_starts_with_seeded_unit_vectors_and_blends_updates():
    bank = MemoryBank(4, dim=2, momentum=0.5, seed=3)
    assert torch.allclose(bank.entries.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.equal(bank.entries, MemoryBank(4, dim=2, seed=3).entries)
    assert not torch.equal(bank.entries, MemoryBank(4, dim=2, seed=4).entries)
    bank.entries.copy_(unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]))
    bank.update(torch.tensor([1, 3]), unit([1.0, 0.0], [0.0, -1.0]))
    s = 1 / math.sqrt(2)
    assert bank.entries.flatten().tolist() == pytest.approx([1.0, 0.0, s, s, -1.0, 0.0, 0.0, -1.0], abs=1e-6)
    quarter = MemoryBank(1, dim=2, momentum=0.25)
    quarter.entries.copy_(unit([0.0, 1.0]))
    quarter.update(torch.tensor([0]), unit([1.0, 0.0]))
    assert quarter.entries[0].tolist() == pytest.approx([0.25 / math.hypot(0.25, 0.75), 0.75 / math.hypot(0.25, 0.75)])
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(2, momentum=0.0)


# ----------------------------------------------------------------------------- kNN score


def test_knn_score_is_the_mean_angle_to_the_k_nearest_entries():
    entries = unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    z = unit([1.0, 0.0], [0.0, 1.0], [0.6, -0.8])
    # z0: angles 0, pi/2, pi; z1: pi/2, 0, pi/2; z2: acos(0.6), acos(-0.8), acos(-0.6)
    assert KNNScore(entries, k=1)(z).tolist() == pytest.approx([0.0, 0.0, math.acos(0.6) / math.pi], abs=1e-3)
    two = (math.acos(0.6) + math.acos(-0.6)) / 2 / math.pi  # the two nearest of z2: 0.93 and 2.21 rad
    assert KNNScore(entries, k=2)(z).tolist() == pytest.approx([0.25, 0.25, two], abs=1e-3)
    assert float(KNNScore(entries, k=3)(unit([-1.0, 0.0]))) == pytest.approx(0.5, abs=1e-3)


def test_knn_score_bank_ratio_reads_the_weights_over_the_whole_bank():
    entries = unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    z = unit([1.0, 0.0], [0.0, 1.0])
    # z0: angles 0, pi/2, pi (mean pi/2); z1: pi/2, 0, pi/2 (mean pi/3)
    ratio = KNNScore(entries, k=2, mode="bank_ratio")(z)
    assert ratio.tolist() == pytest.approx([(math.pi / 4) / (math.pi / 2), (math.pi / 4) / (math.pi / 3)], abs=1e-3)
    # A(x) = (1/K) sum_k w_k with w_k = theta_k / sum_j theta_j, scaled by N to lie in [0, 1]
    theta = [0.0, math.pi / 2, math.pi]
    assert float(ratio[0]) == pytest.approx(3 * (1 / 2) * sum(t / sum(theta) for t in theta[:2]), abs=1e-3)
    assert float(KNNScore(entries, k=3, mode="bank_ratio")(z[:1])) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="salad_score_mode"):
        KNNScore(entries, k=2, mode="cosine")


def test_knn_score_refuses_k_larger_than_the_bank():
    with pytest.raises(ValueError, match=r"K = 4 nearest entries asked of a scoring bank of 3 entries.*salad_k"):
        KNNScore(unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]), k=4)


def test_knn_score_is_scriptable():
    for mode in ("angle", "bank_ratio"):
        score = KNNScore(unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]), k=2, mode=mode)
        z = unit([0.6, 0.8], [-0.6, 0.8])
        assert torch.allclose(torch.jit.script(score)(z), score(z))


# ----------------------------------------------------------------------------- schedule and data


def test_schedule_phases_follow_the_k_list():
    schedule = SaladSchedule(pretrain_epochs=2, round_epochs=3, neighbours=[1, 5], prototype_fractions=[0.5, 1.0])
    assert schedule.max_epochs == 8
    assert [schedule.phase(e) for e in (1, 2, 3, 5, 6, 8)] == [
        (0, 0, 0.0),
        (0, 0, 0.0),
        (1, 1, 0.5),
        (1, 1, 0.5),
        (2, 5, 1.0),
        (2, 5, 1.0),
    ]
    with pytest.raises(ValueError, match="one per round"):
        SaladSchedule(1, 1, [1, 2], [1.0])


def test_augment_is_a_small_seeded_change_without_flips():
    x = torch.linspace(-1, 1, 32).repeat(2, 1, 32, 1)  # intensity grows left to right
    augment = XrayAugment()
    a = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert 0 < float((a - x).abs().mean()) < 0.2
    assert bool((a[..., -4:].mean() > a[..., :4].mean()))  # not mirrored


def test_batches_carry_the_pool_indices_and_reshuffle_per_epoch():
    images = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    batches = SaladBatches(images, batch_size=4, seed=0)
    first = list(batches)
    assert len(first) == 3 and [len(b["index"]) for b in first] == [4, 4, 2]
    for b in first:
        assert torch.equal(b["image"][:, 0, 0, 0], b["index"].float())
    batches.set_epoch(2)
    assert not torch.equal(torch.cat([b["index"] for b in batches]), torch.cat([b["index"] for b in first]))


# ----------------------------------------------------------------------------- trainer


def _pool(n=24, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def _trainer(ckpt_dir, seed=0, pool=None):
    torch.manual_seed(123)  # a global draw that must not matter: everything follows `seed`
    pool = _pool() if pool is None else pool
    model = build_model(lambda: SALADNet(1, 32, embedding_size=16, channels=(4, 8, 8, 8, 8, 8)), len(pool), seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, betas=(0.5, 0.999))
    handlers = [MemberCheckpoints(ckpt_dir, "salad", save_every=1)] if ckpt_dir else []
    return SaladTrainer(
        "cpu",
        model,
        optimizer,
        SaladBatches(pool, 8, seed),
        SaladSchedule(1, 1, [2, 4], [0.5, 1.0]),
        seed=seed,
        handlers=handlers,
    )


def test_resume_after_a_crash_gives_identical_weights_and_bank(tmp_path):
    straight = _trainer(tmp_path / "straight")
    straight.run()
    resumed = crash_then_resume(lambda: _trainer(tmp_path / "crashed"), epoch=2, iteration_in_epoch=2)
    assert resumed.state.epoch == 3
    a = torch.load(final_weights_path(tmp_path / "straight", "salad", 0), weights_only=True)
    b = torch.load(final_weights_path(tmp_path / "crashed", "salad", 0), weights_only=True)
    assert a.keys() == b.keys() and "bank.entries" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_scores_other_seed_other_scores():
    def scores(seed):
        trainer = _trainer(None, seed=seed)
        trainer.run()
        model = trainer.model.eval()
        with torch.no_grad():
            return KNNScore(model.bank.entries[:12], k=5)(model.net.embed(_pool(6, seed=9)))

    first = scores(0)
    assert torch.equal(first, scores(0))
    assert not torch.equal(first, scores(1))
    assert bool(((first >= 0) & (first <= 1)).all())


def test_trainer_refuses_a_bank_of_the_wrong_size():
    pool = _pool(10)
    model = build_model(lambda: SALADNet(1, 32, embedding_size=8, channels=(4,) * 6), 11)
    with pytest.raises(ValueError, match="11 entries but the training pool 10 images"):
        SaladTrainer("cpu", model, torch.optim.Adam(model.parameters()), SaladBatches(pool, 4), SaladSchedule(1, 1, []))
