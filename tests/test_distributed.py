"""Stage 1 under torchrun (configs/multi_gpu_train.json, scripts/engines/distributed.py), on CPU with gloo.

- The assignment rule: every member trained once, heaviest first to the least-loaded rank, groups
  of consecutive ranks when there are more ranks than members.
- Two processes spreading the members give bit-identical weights to one process with the same seed.
- More processes than members: a member trained by a DDP group runs through the overlay, the
  group's replicas end identical and only the group's first rank writes the member's files.
- DDP within a member gives the full-batch gradient (checked with a network without BatchNorm).
"""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import BUNDLE_ROOT
from scripts.engines.distributed import ReplicaObjective, plan_members
from scripts.engines.ensemble import EnsembleTrainer, MemberBatches, adam_optimizers, seeded_members
from scripts.scoring.losses import MSEObjective

# A very small stage 1: 40 training normals (and 4 validation images), 20 unlabeled, 16x16 images, 2 epochs.
TINY_STAGE1 = {
    "epochs": 2,
    "image_size": 16,
    "batch_size": 8,
    "progress_bar": False,
    "phantom#size": 32,
    "phantom#n_normal": 40,
    "phantom#n_validation": 4,
    "phantom#n_unlabeled": 20,
    "phantom#n_test_normal": 2,
    "phantom#n_test_abnormal": 2,
}
CONFIGS = "['configs/common.json','configs/train.json','configs/multi_gpu_train.json']"


def torchrun(nproc: int, overrides: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """The documented command, from the bundle folder: torchrun ... -m monai.bundle run training."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        CONFIGS,
        "--meta_file",
        "configs/metadata.json",
        "--logging_file",
        "configs/logging.conf",
    ]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(BUNDLE_ROOT))
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def load_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- the assignment rule


def test_plan_balances_pool_sizes_heaviest_first():
    plan = plan_members(3, {"ndm": 360, "udm": 760}, world_size=2)
    assert plan.members("udm", 0) == [0, 2] and plan.members("ndm", 0) == []
    assert plan.members("udm", 1) == [1] and plan.members("ndm", 1) == [0, 1, 2]
    assert (plan.load(0), plan.load(1)) == (1520, 1840)
    assert all(len(ranks) == 1 for ranks in plan.ranks)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5, 6])
def test_plan_trains_every_member_exactly_once(world_size):
    plan = plan_members(3, {"ndm": 100, "udm": 250}, world_size)
    for module in ("ndm", "udm"):
        owners = [sum(k in plan.members(module, r) for r in range(world_size)) for k in range(3)]
        assert owners == [1, 1, 1]
    assert all(plan.load(r) > 0 for r in range(world_size))  # no idle rank while W <= 2K


def test_more_ranks_than_members_gives_consecutive_groups_to_the_heaviest():
    plan = plan_members(1, {"ndm": 100, "udm": 250}, world_size=5)
    # 3 ranks for the UDM member (250/3 each), 2 for the NDM's (50 each); ranks follow member order
    assert plan.group("ndm", 0) == (0, 1) and plan.group("udm", 0) == (2, 3, 4)
    assert [plan.load(r) for r in range(5)] == pytest.approx([50, 50] + [250 / 3] * 3)


def test_without_unlabeled_data_only_the_ndm_is_planned():
    plan = plan_members(2, {"ndm": 100, "udm": 0}, world_size=2)
    assert [u.module for u in plan.units] == ["ndm", "ndm"]
    assert plan.members("ndm", 0) == [0] and plan.members("ndm", 1) == [1]


def test_plan_refuses_bad_arguments():
    with pytest.raises(ValueError, match="num_members"):
        plan_members(0, {"ndm": 10}, 2)
    with pytest.raises(ValueError, match="world_size"):
        plan_members(2, {"ndm": 10}, 0)
    with pytest.raises(ValueError, match="unknown modules"):
        plan_members(2, {"asr": 10}, 2)


# ----------------------------------------------------------------------------- torchrun, gloo, CPU


@pytest.mark.slow
def test_two_processes_give_the_single_process_weights(tmp_path):
    from scripts.runtime.workflows import run_workflow

    shared = dict(TINY_STAGE1, data_dir=str(tmp_path / "data"))
    result = torchrun(2, dict(shared, runs_dir=tmp_path / "multi"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the torchrun processes (OMP_NUM_THREADS=1): same kernels, same sums
    try:
        run_workflow("training", dict(shared, runs_dir=str(tmp_path / "single")))
    finally:
        torch.set_num_threads(threads)

    multi = tmp_path / "multi" / "cxr_phantom_ae" / "models"
    single = tmp_path / "single" / "cxr_phantom_ae" / "models"
    names = [f"{m}_member{k}.pt" for m in ("ndm", "udm") for k in range(3)]
    for name in names:
        a, b = load_weights(single / name), load_weights(multi / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    # each rank wrote its own members' resumable checkpoints, under their ensemble indices
    assert sorted(p.name for p in multi.glob("*.pt")) == sorted(
        names + [n.replace(".pt", f"_checkpoint_{epoch}.pt") for n in names for epoch in (1, 2)]
    )
    assert (multi.parent / "run_record_training.json").is_file()
    # the documented plan was used, over the real pools: D_n 40 (validation images are separate), D_n + D_u 60
    plan = plan_members(3, {"ndm": 40, "udm": 60}, world_size=2)
    assert plan.members("udm", 0) == [0, 2]  # a rank's members need not be consecutive
    assert plan.describe() in result.stdout + result.stderr


@pytest.mark.slow
def test_more_processes_than_members_trains_a_member_with_ddp(tmp_path):
    # two members (the fewest A_intra allows), three processes: one member is a DDP group of two
    overrides = dict(TINY_STAGE1, num_members=2, runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    overrides["phantom#n_unlabeled"] = 0
    result = torchrun(3, overrides)
    log = result.stdout + result.stderr
    assert "(1/2)" in log and "DDP replicas of a member hold the same parameters" in log
    models = tmp_path / "runs" / "cxr_phantom_ae" / "models"
    finals = ["ndm_member0.pt", "ndm_member1.pt"]
    checkpoints = [n.replace(".pt", f"_checkpoint_{e}.pt") for n in finals for e in (1, 2)]
    assert sorted(p.name for p in models.glob("*.pt")) == sorted(finals + checkpoints)
    weights = load_weights(models / "ndm_member0.pt")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- DDP slices are exact


def conv_net():
    """A reconstruction net without batch statistics, so slicing the batch changes nothing."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1))


def pool():
    # 23 images at batch 7: batches of 7, 7, 7 (sliced 4 + 3) and 2 (too small to slice: run whole)
    return torch.rand(23, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def train(objective_for, epochs=2):
    members = seeded_members(conv_net, [11])
    objective = objective_for(members[0])
    trainer = EnsembleTrainer(
        "cpu",
        epochs,
        members,
        adam_optimizers(members),
        objective,
        MemberBatches(pool(), [11], batch_size=7),
        module="ndm",
    )
    trainer.run()
    return trainer, objective


def _ddp_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        group = dist.new_group([0, 1])
        trainer, objective = train(lambda net: ReplicaObjective(MSEObjective(), {net: (group, rank, 2)}, "cpu"))
        objective.check_replicas()
        torch.save(trainer.members[0].state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_within_a_member_gives_the_full_batch_gradient(tmp_path):
    torch.multiprocessing.start_processes(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    reference, _ = train(lambda net: MSEObjective())
    expected = reference.members[0].state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in expected.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.allclose(ranks[0][key], value, rtol=1e-4, atol=1e-6), key
    # and the training did move the weights, so the comparison means something
    initial = seeded_members(conv_net, [11])[0].state_dict()
    assert any(not torch.allclose(initial[k], expected[k], atol=1e-3) for k in expected)
