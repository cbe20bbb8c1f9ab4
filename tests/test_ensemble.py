"""The ensemble trainer: member seeds, per-member shuffles, checkpoints, and exact resume."""

import pytest
import torch
from ignite.engine import Events

from scripts.ensemble import EnsembleTrainer, MemberBatches, adam_optimizers, member_seeds, seeded_members, shuffle_order
from scripts.handlers import MemberCheckpoints, final_weights_path
from scripts.losses import MSEObjective
from scripts.networks import AE


def tiny_ae():
    return AE(in_channels=1, image_size=16, latent_size=4)


def make_trainer(images, ckpt_dir, epochs, seed=0, module="ndm", handlers=None, lr_schedule="constant"):
    seeds = member_seeds(seed, module, 3)
    members = seeded_members(tiny_ae, seeds)
    handlers = handlers if handlers is not None else [MemberCheckpoints(ckpt_dir, module)]
    return EnsembleTrainer("cpu", epochs, members, adam_optimizers(members), MSEObjective(),
                           MemberBatches(images, seeds, batch_size=8), module=module, handlers=handlers,
                           lr_schedule=lr_schedule)


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


def test_each_member_gets_its_own_shuffle_of_the_whole_pool(images):
    batches = MemberBatches(images, [0, 1, 2], batch_size=8)
    seen = [[] for _ in range(3)]
    for batch in batches:
        assert batch["image"].shape[0] == 3
        for k in range(3):
            seen[k].append(batch["image"][k])
    assert len(batches) == 3  # 8 + 8 + 4
    firsts = [torch.cat(s) for s in seen]
    assert all(f.shape[0] == 20 for f in firsts)
    assert not torch.equal(firsts[0], firsts[1])
    # every member sees every image exactly once per epoch
    for f in firsts:
        assert torch.equal(f.sum(0), images.sum(0)) or torch.allclose(f.sum(0), images.sum(0), atol=1e-5)


def test_shuffle_changes_with_epoch_and_is_reproducible():
    assert torch.equal(shuffle_order(10, 3, 1), shuffle_order(10, 3, 1))
    assert not torch.equal(shuffle_order(10, 3, 1), shuffle_order(10, 3, 2))


def test_single_image_trailing_batch_is_dropped():
    batches = MemberBatches(torch.zeros(17, 1, 16, 16), [0], batch_size=8)
    assert len(batches) == 2


def test_too_small_pool_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        MemberBatches(torch.zeros(1, 1, 16, 16), [0], batch_size=8, name="normal (D_n)")


def test_training_reduces_loss_and_writes_one_checkpoint_per_member(images, tmp_path):
    trainer = make_trainer(images, tmp_path, epochs=1)
    trainer.run()
    first = trainer.state.output["loss"]
    trainer.state.max_epochs = 6
    trainer.run()
    assert trainer.state.output["loss"] < first
    for k in range(3):
        assert final_weights_path(tmp_path, "ndm", k).is_file()
        assert len(list(tmp_path.glob(f"ndm_member{k}_checkpoint_*.pt"))) == 1


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

    class Interrupt(Exception):
        pass

    interrupted = make_trainer(images, tmp_path / "run", epochs=3, lr_schedule=lr_schedule)

    @interrupted.on(Events.ITERATION_COMPLETED)
    def crash(engine):
        # a crash in the middle of epoch 3, after the epoch-2 checkpoints were written
        if engine.state.epoch == 3 and engine.state.iteration % engine.state.epoch_length == 2:
            raise Interrupt()

    with pytest.raises(Interrupt):
        interrupted.run()
    assert not final_weights_path(tmp_path / "run", "ndm", 0).exists()

    resumed = make_trainer(images, tmp_path / "run", epochs=3, lr_schedule=lr_schedule)  # a fresh process
    resumed.run()
    assert resumed.state.epoch == 3
    assert_same_weights(weights(resumed), weights(reference))


def test_disagreeing_checkpoints_are_refused(images, tmp_path):
    make_trainer(images, tmp_path, epochs=1).run()
    next(tmp_path.glob("ndm_member1_checkpoint_*.pt")).unlink()
    with pytest.raises(RuntimeError, match="disagree"):
        make_trainer(images, tmp_path, epochs=2).run()


def test_cosine_schedule_decays_to_zero(images, tmp_path):
    trainer = make_trainer(images, tmp_path, epochs=2, lr_schedule="cosine")
    trainer.run()
    assert all(group["lr"] == pytest.approx(0.0, abs=1e-12) for opt in trainer.optimizers for group in opt.param_groups)


def test_unknown_schedule_names_the_key(images, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule"):
        make_trainer(images, tmp_path, epochs=1, lr_schedule="step")
