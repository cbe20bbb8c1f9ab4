"""Fused ensembles: the same numbers as K separate networks, in forward, training and resume."""

import logging

import pytest
import torch

from helpers import crash_then_resume
from scripts.engines.ensemble import (
    EnsembleTrainer,
    MemberBatches,
    PerMemberTrainer,
    adam_optimizers,
    build_ensemble_trainer,
    member_seeds,
    resolve_ensemble_mode,
    seeded_members,
)
from scripts.networks.fused import (
    FusedAE,
    join_optimizer_states,
    load_into_members,
    split_optimizer_state,
    unfuse_state_dict,
)
from scripts.handlers.training import MemberCheckpoints, final_weights_path
from scripts.scoring.losses import objective_for
from scripts.networks.backbones import build_backbone

BACKBONES = ("ae", "memae", "aeu")
STEPS, LR = 6, 5e-4  # make_trainer: 20 images, batch 8 -> 3 steps per epoch, 2 epochs; adam_optimizers' lr


def factory(backbone):
    return lambda: build_backbone(backbone, in_channels=1, image_size=16, latent_size=4, memory_slots=5)


@pytest.fixture
def images():
    return torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1


def make_trainer(backbone, images, mode, ckpt_dir=None, epochs=2, lr_schedule="constant", **kwargs):
    seeds = member_seeds(0, "ndm", 3)
    members = seeded_members(factory(backbone), seeds)
    handlers = [MemberCheckpoints(ckpt_dir, "ndm")] if ckpt_dir is not None else []
    return EnsembleTrainer(
        "cpu",
        epochs,
        members,
        adam_optimizers(members),
        objective_for(backbone),
        MemberBatches(images, seeds, batch_size=8),
        handlers=handlers,
        lr_schedule=lr_schedule,
        ensemble_mode=mode,
        **kwargs,
    )


def alone(backbone, images, epochs=2):
    """The per-member path: each member trained by itself, its own Adam, its own shuffle."""
    objective = objective_for(backbone)
    members = []
    for seed in member_seeds(0, "ndm", 3):
        net = seeded_members(factory(backbone), [seed])[0]
        optimizer = adam_optimizers([net])[0]
        batches = MemberBatches(images, [seed], batch_size=8)
        for epoch in range(1, epochs + 1):
            batches.set_epoch(epoch)
            for batch in batches:
                net.train()
                optimizer.zero_grad(set_to_none=True)
                objective(net, batch["image"][0]).backward()
                optimizer.step()
        members.append((net, optimizer))
    return members


def assert_close_states(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=1e-4), key


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fused_forward_is_the_members_forward_and_scripts(backbone):
    members = [m.eval() for m in seeded_members(factory(backbone), [0, 1, 2])]
    fused = FusedAE(members).eval()
    x = torch.randn(4, 1, 16, 16)
    expected = torch.stack([m(x) for m in members])
    assert torch.allclose(fused.member_outputs(x), expected, atol=1e-5)
    assert torch.allclose(torch.jit.script(fused).member_outputs(x), expected, atol=1e-5)
    for member, state in zip(members, unfuse_state_dict(fused)):
        assert_close_states(member.state_dict(), state, atol=0)


def gradient_free(backbone, images):
    """Names of parameters whose exact gradient is zero: biases whose shift BatchNorm cancels.

    Rounding leaves them a gradient 1e-5 to 1e-8 times the largest (real ones: above 1e-2) that Adam, which normalizes the gradient,
    turns into steps of +-lr, so two exact implementations may move them apart by lr per step.
    """
    net = factory(backbone)()
    objective_for(backbone)(net, images[:8]).backward()
    largest = max(p.grad.abs().max() for p in net.parameters())
    return {n for n, p in net.named_parameters() if p.grad.abs().max() < 1e-3 * largest}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", ["sequential", "fused"])
def test_both_forms_reproduce_the_per_member_path(backbone, mode, images):
    reference = alone(backbone, images)
    trainer = make_trainer(backbone, images, mode)
    assert trainer.ensemble_mode == mode
    trainer.run()
    free = gradient_free(backbone, images)
    assert "encode_fc.0.0.bias" in free and "encoder.0.0.weight" not in free
    exact = mode == "sequential"  # the same calls as the per-member path: bit-identical
    x = images[:4]
    initial = seeded_members(factory(backbone), member_seeds(0, "ndm", 3))
    for k, (net, optimizer) in enumerate(reference):
        got, want = trainer.members[k].state_dict(), net.state_dict()
        for key in want:
            # Skipped when fused: the gradient-free biases (rounding noise) and the running means
            # that average them; weights with near-zero gradients may differ by a fraction of lr.
            if not exact and (key in free or key.endswith("running_mean")):
                continue
            if exact:
                assert torch.equal(got[key], want[key]), key
                continue
            # Adam divides by the gradient's own scale, so a weight whose gradient is rounding noise
            # moves by up to lr per step either way: a few such weights (which ones depends on the
            # CPU's kernels) may differ by up to steps * lr; all others agree to 1e-4.
            difference = (got[key].float() - want[key].float()).abs()
            off = difference > 1e-4 + 1e-4 * want[key].float().abs()
            assert off.float().mean() <= 1e-3 and difference.max() <= STEPS * LR + 1e-6, key
        # the training updates themselves agree to 1% in norm (a mixed-up member would not)
        start = initial[k].state_dict()
        for key, _ in net.named_parameters():
            if key not in free:
                update, reference_update = got[key] - start[key], want[key] - start[key]
                assert (update - reference_update).norm() <= 1e-2 * reference_update.norm() + 1e-12, key
        # Batch statistics cancel the gradient-free biases exactly, so training-mode
        # reconstructions agree to float tolerance; evaluation mode carries the running-mean drift.
        with torch.no_grad():
            assert torch.allclose(trainer.members[k].train()(x), net.train()(x), atol=0 if exact else 1e-3)
            assert torch.allclose(trainer.members[k].eval()(x), net.eval()(x), atol=0 if exact else 2e-3)
        got, want = trainer.optimizers[k].state_dict()["state"], optimizer.state_dict()["state"]
        names = [n for n, _ in net.named_parameters()]
        for index in want:
            for name in ("exp_avg", "exp_avg_sq", "step"):
                if names[index] in free and name != "step":
                    continue  # moments of rounding noise
                if exact or name == "step":
                    assert torch.equal(got[index][name], want[index][name]), (names[index], name)
                else:  # moments follow the gradients: equal to 1% in norm (MemAE's shrinkage amplifies rounding)
                    gap = (got[index][name] - want[index][name]).norm()
                    assert gap <= 1e-2 * want[index][name].norm() + 1e-12, (names[index], name)


def test_optimizer_state_round_trip():
    members = seeded_members(factory("memae"), [0, 1])
    fused = FusedAE(members)
    optimizer = torch.optim.Adam(fused.parameters(), lr=1e-3)
    fused(torch.randn(4, 2, 16, 16)).square().mean().backward()
    optimizer.step()
    parts = split_optimizer_state(optimizer.state_dict(), fused, members[0])
    joined = join_optimizer_states(parts, fused, members[0])
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            assert torch.equal(joined["state"][index][name], value)
    for index, (name, parameter) in enumerate(members[1].named_parameters()):
        assert parts[1]["state"][index]["exp_avg"].shape == parameter.shape, name


def test_fused_run_resumes_to_the_same_weights(images, tmp_path):
    reference = make_trainer("ae", images, "fused", tmp_path / "ref", epochs=3, lr_schedule="cosine")
    reference.run()

    resumed = crash_then_resume(
        lambda: make_trainer("ae", images, "fused", tmp_path / "run", epochs=3, lr_schedule="cosine"),
        epoch=3,
        iteration_in_epoch=2,
    )
    for k in range(3):
        assert torch.equal(
            torch.load(final_weights_path(tmp_path / "run", "ndm", k))["encoder.0.0.weight"],
            reference.members[k].encoder[0][0].weight,
        )
        assert_close_states(resumed.members[k].state_dict(), reference.members[k].state_dict(), atol=0)
    # the cosine schedule reached the member optimizers, which the checkpoints hold
    assert all(o.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12) for o in resumed.optimizers)


def test_fused_without_a_fused_objective_falls_back_to_sequential(images, caplog):
    def plain_mse(net, x):
        return torch.mean((net(x) - x) ** 2)

    seeds = member_seeds(0, "ndm", 2)
    members = seeded_members(factory("ae"), seeds)
    with caplog.at_level(logging.INFO, logger="ddad"):
        trainer = EnsembleTrainer(
            "cpu",
            1,
            members,
            adam_optimizers(members),
            plain_mse,
            MemberBatches(images, seeds, batch_size=8),
            ensemble_mode="fused",
        )
    assert trainer.ensemble_mode == "sequential"
    assert "no fused form" in caplog.text


def test_modes_resolve_per_device_and_unknown_names_the_key():
    assert resolve_ensemble_mode("auto", "cpu") == "concurrent"
    assert resolve_ensemble_mode("auto", "cuda") == "fused"
    assert resolve_ensemble_mode("per_member", "cpu") == "per_member"
    with pytest.raises(ValueError, match="ensemble_mode"):
        resolve_ensemble_mode("parallel", "cpu")


def test_per_member_trainer_writes_one_final_file_per_member(images, tmp_path):
    seeds = member_seeds(0, "udm", 2)
    members = seeded_members(factory("ae"), seeds)
    before = [m.encoder[0][0].weight.clone() for m in members]
    trainer = build_ensemble_trainer(
        ensemble_mode="per_member",
        device="cpu",
        max_epochs=1,
        members=members,
        optimizers=adam_optimizers(members),
        objective=objective_for("ae"),
        data=MemberBatches(images, seeds, batch_size=8),
        module="udm",
        handlers=[MemberCheckpoints(tmp_path, "udm")],
        channels_last=False,
    )
    assert isinstance(trainer, PerMemberTrainer)
    trainer.run()
    for k in range(2):
        assert trainer.trainers[k].state.iteration == 3  # 20 images, batches of 8: 8 + 8 + 4
        saved = torch.load(final_weights_path(tmp_path, "udm", k))["encoder.0.0.weight"]
        assert torch.equal(saved, members[k].encoder[0][0].weight)
        assert not torch.equal(saved, before[k])


def test_members_receive_the_fused_weights():
    members = seeded_members(factory("aeu"), [3, 4])
    fused = FusedAE(members)
    with torch.no_grad():
        fused.decoder[-1].weight.add_(1.0)
    load_into_members(fused, members)
    assert torch.allclose(members[1].decoder[-1].weight, fused.decoder[-1].weight.chunk(2)[1])


def test_auto_mode_builds_the_concurrent_trainer_on_a_cpu(images):
    seeds = member_seeds(0, "ndm", 2)
    members = seeded_members(factory("ae"), seeds)
    built = build_ensemble_trainer(
        device="cpu",
        max_epochs=1,
        members=members,
        optimizers=adam_optimizers(members),
        objective=objective_for("ae"),
        data=MemberBatches(images, seeds, batch_size=8),
        threads=2,
    )
    assert isinstance(built, EnsembleTrainer) and built.ensemble_mode == "concurrent"  # auto on a CPU
