"""The ensemble trainer: member seeds, per-member shuffles, checkpoints, and exact resume."""

import logging

import pytest
import torch

from helpers import crash_then_resume
from scripts.engines.ensemble import (
    EnsembleTrainer,
    MemberBatches,
    MemberGroup,
    adam_optimizers,
    member_seeds,
    seeded_members,
    shuffle_order,
)
from scripts.handlers.training import MemberCheckpoints, final_weights_path
from scripts.scoring.losses import MSEObjective
from scripts.networks.backbones import AE


def tiny_ae():
    return AE(in_channels=1, image_size=16, latent_size=4)


def make_trainer(images, ckpt_dir, epochs, seed=0, module="ndm", handlers=None, lr_schedule="constant"):
    seeds = member_seeds(seed, module, 3)
    members = seeded_members(tiny_ae, seeds)
    handlers = handlers if handlers is not None else [MemberCheckpoints(ckpt_dir, module)]
    return EnsembleTrainer(
        "cpu",
        epochs,
        members,
        adam_optimizers(members),
        MSEObjective(),
        MemberBatches(images, seeds, batch_size=8),
        module=module,
        handlers=handlers,
        lr_schedule=lr_schedule,
    )


@pytest.fixture
def images():
    return torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1


def weights(trainer):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in trainer.members]


def assert_same_weights(a, b):
    for wa, wb in zip(a, b):
        for key in wa:
            assert torch.equal(wa[key], wb[key]), key


def test_member_seed_rule():
    assert member_seeds(5, "ndm", 3) == [5, 6, 7]
    assert member_seeds(5, "udm", 2) == [1005, 1006]
    assert member_seeds(5, "asr", 1) == [2005]
    with pytest.raises(ValueError, match="module"):
        member_seeds(0, "xyz", 3)


def test_members_differ_only_by_seed():
    a, b = seeded_members(tiny_ae, [1, 2])
    again = seeded_members(tiny_ae, [1])[0]
    assert not torch.equal(a.encoder[0][0].weight, b.encoder[0][0].weight)
    assert torch.equal(a.encoder[0][0].weight, again.encoder[0][0].weight)


def test_each_member_gets_its_own_shuffle_of_the_whole_pool():
    # image i is filled with the value i, so a batch tells which images it holds
    pool = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 1, 4, 4).contiguous()
    seeds = [0, 1, 2]
    batches = MemberBatches(pool, seeds, batch_size=8)
    batches.set_epoch(2)
    seen = [[] for _ in seeds]
    for batch in batches:
        assert batch["image"].shape[0] == 3
        for k in range(3):
            seen[k].append(batch["image"][k][:, 0, 0, 0].long())
    assert len(batches) == 3  # 8 + 8 + 4
    orders = [torch.cat(s) for s in seen]
    for k, order in enumerate(orders):
        assert sorted(order.tolist()) == list(range(20))  # every image exactly once per epoch
        assert torch.equal(order, shuffle_order(20, seeds[k], 2))  # in the member's own order for that epoch
    assert not torch.equal(orders[0], orders[1])


def test_shuffle_changes_with_epoch_and_is_reproducible():
    assert torch.equal(shuffle_order(10, 3, 1), shuffle_order(10, 3, 1))
    assert not torch.equal(shuffle_order(10, 3, 1), shuffle_order(10, 3, 2))


def test_single_image_trailing_batch_is_dropped():
    batches = MemberBatches(torch.zeros(17, 1, 16, 16), [0], batch_size=8)
    assert len(batches) == 2


def test_too_small_pool_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        MemberBatches(torch.zeros(1, 1, 16, 16), [0], batch_size=8, name="normal (D_n)")


def test_training_reduces_loss_and_keeps_two_checkpoints_per_member(images, tmp_path):
    trainer = make_trainer(images, tmp_path, epochs=1)
    trainer.run()
    first = trainer.state.output["loss"]
    trainer.state.max_epochs = 6
    trainer.run()
    assert trainer.state.output["loss"] < first
    for k in range(3):
        assert final_weights_path(tmp_path, "ndm", k).is_file()
        kept = sorted(p.name for p in tmp_path.glob(f"ndm_member{k}_checkpoint_*.pt"))
        assert kept == [f"ndm_member{k}_checkpoint_5.pt", f"ndm_member{k}_checkpoint_6.pt"]


def test_same_seed_same_weights(images, tmp_path):
    a = make_trainer(images, tmp_path / "a", epochs=2)
    b = make_trainer(images, tmp_path / "b", epochs=2)
    a.run()
    b.run()
    assert_same_weights(weights(a), weights(b))


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_interrupted_run_resumes_to_the_same_weights(images, tmp_path, lr_schedule):
    reference = make_trainer(images, tmp_path / "ref", epochs=3, lr_schedule=lr_schedule)
    reference.run()

    def nothing_final_yet():
        assert not final_weights_path(tmp_path / "run", "ndm", 0).exists()

    # a crash in the middle of epoch 3, after the epoch-2 checkpoints were written
    resumed = crash_then_resume(
        lambda: make_trainer(images, tmp_path / "run", epochs=3, lr_schedule=lr_schedule),
        epoch=3,
        iteration_in_epoch=2,
        after_crash=nothing_final_yet,
    )
    assert resumed.state.epoch == 3
    assert_same_weights(weights(resumed), weights(reference))


def test_a_run_killed_while_writing_its_first_checkpoints_starts_over(images, tmp_path, caplog):
    # member 0 wrote its epoch-1 checkpoint, member 1 had not yet: no epoch finished for the ensemble
    reference = make_trainer(images, tmp_path / "ref", epochs=2)
    reference.run()
    make_trainer(images, tmp_path / "run", epochs=1).run()
    next((tmp_path / "run").glob("ndm_member1_checkpoint_*.pt")).unlink()
    resumed = make_trainer(images, tmp_path / "run", epochs=2)
    resumed.run()
    assert "starting from epoch 0: no epoch among [1] has a checkpoint of every member" in caplog.text
    assert_same_weights(weights(resumed), weights(reference))


def test_a_damaged_only_checkpoint_is_refused(images, tmp_path):
    make_trainer(images, tmp_path, epochs=1).run()
    only = next(tmp_path.glob("ndm_member1_checkpoint_*.pt"))
    only.write_bytes(only.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=r"no epoch among \[1\] has an intact checkpoint for every member"):
        make_trainer(images, tmp_path, epochs=2).run()


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(images, tmp_path, damage, caplog):
    reference = make_trainer(images, tmp_path / "ref", epochs=4)
    reference.run()
    newest = tmp_path / "run" / "ndm_member1_checkpoint_3.pt"

    def damage_newest():
        if damage == "truncated":  # a copy cut short: half the bytes
            newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        else:
            newest.unlink()

    with caplog.at_level(logging.WARNING, logger="ddad"):  # a crash in epoch 4, then the damage
        resumed = crash_then_resume(
            lambda: make_trainer(images, tmp_path / "run", epochs=4), 4, 1, after_crash=damage_newest
        )
    assert "resuming from epoch 2: the checkpoints of epoch 3 are incomplete or damaged" in caplog.text
    if damage == "truncated":
        assert "ndm_member1_checkpoint_3.pt: unreadable" in caplog.text
    assert_same_weights(weights(resumed), weights(reference))


def test_cosine_schedule_decays_to_zero(images, tmp_path):
    trainer = make_trainer(images, tmp_path, epochs=2, lr_schedule="cosine")
    trainer.run()
    assert all(group["lr"] == pytest.approx(0.0, abs=1e-12) for opt in trainer.optimizers for group in opt.param_groups)


def test_unknown_schedule_names_the_key(images, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule"):
        make_trainer(images, tmp_path, epochs=1, lr_schedule="step")


# ---- both modules in one loop, and the concurrent mode ---------------------------------------


def module_group(module, pool, ckpt_dir=None, seed=0, fused_adam=False):
    seeds = member_seeds(seed, module, 3)
    members = seeded_members(tiny_ae, seeds)
    handlers = [MemberCheckpoints(ckpt_dir, module)] if ckpt_dir is not None else []
    return MemberGroup(
        module,
        members,
        adam_optimizers(members, fused=fused_adam),
        MemberBatches(pool, seeds, batch_size=8),
        handlers=handlers,
    )


@pytest.fixture
def pools(images):
    """D_n (20 images: 3 batches) and D_n + D_u (36 images: 5 batches), as the two modules see them."""
    extra = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(8)) * 2 - 1
    return images, torch.cat([images, extra])


def joint_trainer(pools, ckpt_dir=None, epochs=2, mode="sequential", **kwargs):
    groups = [module_group("ndm", pools[0], ckpt_dir), module_group("udm", pools[1], ckpt_dir)]
    return EnsembleTrainer("cpu", epochs, objective=MSEObjective(), groups=groups, ensemble_mode=mode, **kwargs)


def test_one_loop_for_both_modules_equals_each_module_trained_alone(pools, tmp_path):
    alone = [
        make_trainer(pool, tmp_path / "alone", epochs=2, module=module, handlers=[])
        for module, pool in zip(("ndm", "udm"), pools)
    ]
    for trainer in alone:
        trainer.run()
    joint = joint_trainer(pools, tmp_path / "joint", lr_schedule="constant")
    joint.run()
    assert joint.state.epoch_length == 5  # the UDM's pool; the NDM's 3 batches come first
    assert joint.member_modules == [("ndm", 0), ("ndm", 1), ("ndm", 2), ("udm", 0), ("udm", 1), ("udm", 2)]
    assert_same_weights(weights(joint), weights(alone[0]) + weights(alone[1]))
    assert {"loss", "ndm_loss", "udm_loss", "member_losses"} <= set(joint.state.output)
    for module, trainer in zip(("ndm", "udm"), alone):
        for k in range(3):
            saved = torch.load(final_weights_path(tmp_path / "joint", module, k))
            assert torch.equal(saved["encoder.0.0.weight"], trainer.members[k].encoder[0][0].weight)
            assert len(list((tmp_path / "joint").glob(f"{module}_member{k}_checkpoint_*.pt"))) == 2


@pytest.mark.parametrize("fused_adam", [False, True])
def test_concurrent_mode_equals_sequential_under_one_torch_thread(pools, fused_adam):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = EnsembleTrainer(
            "cpu",
            2,
            objective=MSEObjective(),
            ensemble_mode="sequential",
            groups=[module_group(m, p, fused_adam=fused_adam) for m, p in zip(("ndm", "udm"), pools)],
        )
        reference.run()
    finally:
        torch.set_num_threads(previous)
    concurrent = EnsembleTrainer(
        "cpu",
        2,
        objective=MSEObjective(),
        ensemble_mode="concurrent",
        threads=2,
        groups=[module_group(m, p, fused_adam=fused_adam) for m, p in zip(("ndm", "udm"), pools)],
    )
    assert concurrent.ensemble_mode == "concurrent" and concurrent.workers == 2
    concurrent.run()
    assert torch.get_num_threads() == previous  # the run gives the process its thread count back
    assert concurrent.pool is None
    assert_same_weights(weights(concurrent), weights(reference))


def test_fused_adam_takes_the_same_steps_to_float_tolerance(images):
    plain = make_trainer(images, None, epochs=2, handlers=[])
    plain.run()
    seeds = member_seeds(0, "ndm", 3)
    members = seeded_members(tiny_ae, seeds)
    fused = EnsembleTrainer(
        "cpu",
        2,
        members,
        adam_optimizers(members, fused=True),
        MSEObjective(),
        MemberBatches(images, seeds, batch_size=8),
    )
    fused.run()
    assert fused.optimizers[0].defaults["fused"] is True
    steps, lr = 6, 5e-4
    for a, b in zip(weights(fused), weights(plain)):
        for key in a:
            if key.endswith("bias") or key.endswith("running_mean"):
                # biases that feed BatchNorm have a rounding-noise gradient, which Adam turns into
                # steps of +-lr; the running means average them
                assert (a[key] - b[key]).abs().max() <= steps * lr + 1e-6, key
            else:
                assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


def test_joint_run_resumes_both_modules_to_the_same_weights(pools, tmp_path):
    reference = joint_trainer(pools, tmp_path / "ref", epochs=3, mode="concurrent", threads=2, lr_schedule="cosine")
    reference.run()
    # the NDM has finished its 3 batches of epoch 3, the UDM has not finished its 5
    resumed = crash_then_resume(
        lambda: joint_trainer(pools, tmp_path / "run", epochs=3, mode="concurrent", threads=2, lr_schedule="cosine"),
        epoch=3,
        iteration_in_epoch=4,
    )
    assert_same_weights(weights(resumed), weights(reference))


def test_modules_resuming_from_different_epochs_are_refused(pools, tmp_path):
    joint_trainer(pools, tmp_path, epochs=1).run()
    for k in range(3):  # the UDM's checkpoints from an older run
        next(tmp_path.glob(f"udm_member{k}_checkpoint_*.pt")).rename(tmp_path / f"udm_member{k}_checkpoint_0.pt")
    joint_trainer(pools, tmp_path / "other", epochs=2).run()
    for k in range(3):
        next((tmp_path / "other").glob(f"ndm_member{k}_checkpoint_*.pt")).rename(
            tmp_path / f"ndm_member{k}_checkpoint_2.pt"
        )
        (tmp_path / f"ndm_member{k}_checkpoint_1.pt").unlink()
    with pytest.raises(RuntimeError, match=r"no epoch among \[0, 2\] has an intact checkpoint"):
        joint_trainer(pools, tmp_path, epochs=3).run()


def test_amp_key_takes_true_false_or_auto():
    from scripts.engines.ensemble import bf16_native, resolve_amp

    assert resolve_amp(True, "cpu") is True and resolve_amp(False, "cpu") is False
    assert resolve_amp("auto", "cpu") == bf16_native("cpu")
    assert resolve_amp("auto", "meta") is False  # no native bf16 known for that device
    with pytest.raises(ValueError, match="'amp'"):
        resolve_amp("yes", "cpu")


def test_amp_trains_under_bf16_autocast_without_a_grad_scaler(images, recwarn):
    plain = make_trainer(images, None, epochs=1, handlers=[])
    plain.run()
    seeds = member_seeds(0, "ndm", 3)
    members = seeded_members(tiny_ae, seeds)
    bf16 = EnsembleTrainer(
        "cpu",
        1,
        members,
        adam_optimizers(members),
        MSEObjective(),
        MemberBatches(images, seeds, batch_size=8),
        amp=True,
    )
    bf16.run()
    assert bf16.bf16 and bf16.scaler is None  # MONAI's fp16 scaler is not built for bf16
    assert not any("GradScaler" in str(w.message) for w in recwarn)
    changed = [not torch.equal(a, b) for a, b in zip(weights(bf16)[0].values(), weights(plain)[0].values())]
    assert any(changed)  # bf16 rounding reached the weights: autocast was on
