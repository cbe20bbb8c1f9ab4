"""Stage-1 training on several processes (torchrun): the 2K ensemble members spread over the ranks.

DDAD's NDM and UDM are ensembles of K networks each that share nothing but their training pool:
member k's weights depend only on its seed (initialization and shuffle order, see
``scripts.engines.ensemble``) and on its pool. A process can therefore train any subset of the 2K members
and produce exactly the weights the single-process run produces for them; no gradients are
exchanged between members. This module decides which process trains which member, sets up the
process group, and, when there are more processes than members, runs one member on a group of
processes with ``DistributedDataParallel`` (DDP).

The assignment rule (``plan_members``), with U = number of members to train (2K, or K without
unlabeled data) and W = world size:

- W <= U: every member is one work unit weighing its pool size (an epoch of a member processes
  its pool once, so the work is proportional to N; the UDM's pool D_n + D_u is larger than the
  NDM's D_n). Units go, heaviest first (ties: NDM before UDM, lower index first), to the rank
  with the least work so far (ties: lowest rank): the "longest processing time first" rule.
- W > U: every rank trains exactly one member. Each member gets one rank, and each remaining rank
  goes to the member with the most work per rank (ties: as above). A member's ranks are
  consecutive (so a group tends to sit on one node) and form a DDP process group: each rank takes
  an equal slice of the member's batch (the same per-member shuffle, so the slices together are
  the single-process batch) and DDP averages the gradients over the group. The first rank of the
  group writes the member's checkpoints; the others only read them when resuming.

Exactness: spreading members is bit-identical to one process on CPU (tested). DDP within a
member gives the exact full-batch gradient for a network without batch statistics (tested with
a BatchNorm-free net); the DDAD backbones use BatchNorm, whose statistics are then computed per
slice, so the result is close to, not equal to, the single-process one. SyncBatchNorm would fix
this on GPUs but torch does not support it on CPU/gloo, so it is not used. BatchNorm running
statistics are taken from the group's first rank at every forward (DDP ``broadcast_buffers``),
and that rank's copy is the one saved.

Example (the overlay ``configs/multi_gpu_train.json`` wires all of this)::

    >>> plan = plan_members(3, {"ndm": 360, "udm": 760}, world_size=2)
    >>> plan.members("udm", rank=0), plan.members("ndm", rank=1)
    ([0, 2], [0, 1, 2])
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import ignite.distributed as idist
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..handlers.training import LossProgressBar, MemberCheckpoints, final_weights_path

logger = logging.getLogger("ddad")

MODULES = ("ndm", "udm")
BACKENDS = ("auto", "gloo", "nccl")


# ----------------------------------------------------------------------------- process and group


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name} must be an integer (set by torchrun), got {value!r}") from error


def rank() -> int:
    """This process's global rank: from the process group once it exists, else torchrun's RANK (0 alone)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else _env_int("RANK", 0)


def world_size() -> int:
    """Number of processes: from the process group once it exists, else torchrun's WORLD_SIZE (1 alone)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """True on the process that writes the run's shared records (rank 0)."""
    return rank() == 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when torch sees a GPU, else the CPU (config key ``device`` of the overlay)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, count = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {local_rank} but only {count} GPU(s) visible: start at most {count} "
            f"processes per node (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def init_process_group(backend: str = "auto", timeout_minutes: float = 1440.0) -> bool:
    """Join torchrun's process group; returns False (and does nothing) outside torchrun.

    ``backend`` (config key ``dist_backend``): 'auto' takes nccl when torch sees a GPU, else gloo.
    ``timeout_minutes`` (config key ``dist_timeout_minutes``): how long a collective may wait.
    Ranks with lighter shares wait at the final barrier for the heaviest one, which can be hours
    at the paper's schedule, hence the long default; torchrun still stops every process at once
    when one fails.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown dist_backend {backend!r} (config key 'dist_backend'); choose one of {', '.join(BACKENDS)}"
        )
    if not timeout_minutes > 0:
        raise ValueError(f"dist_timeout_minutes must be > 0, got {timeout_minutes}")
    if "WORLD_SIZE" not in os.environ:
        logger.info("no torchrun environment (WORLD_SIZE unset): training every member in this one process")
        return False
    if dist.is_initialized():
        return True
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("dist_backend 'nccl' needs a GPU; use 'gloo' (or 'auto') on CPU")
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=float(timeout_minutes)))
    # Ignite learns about the group lazily, on its first idist.get_rank(), with a collective
    # (it creates a gloo group to count processes per node). Every rank syncs it here, together,
    # or a rank whose handlers ask for its rank would wait for ranks whose handlers do not.
    idist.sync()
    logger.info("rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    return True


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        idist.sync()  # back to Ignite's single-process model


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def wait_for_main() -> None:
    """Other ranks wait here until rank 0 calls ``release_others`` (rank 0 passes at once).

    Put the step that writes shared files (phantom generation, the folder data set's split file)
    between the two, in the config's ``initialize`` list: rank 0 writes them while the others wait,
    then the others find them complete and only read.
    """
    if not is_main():
        barrier()


def release_others(*_ready) -> None:
    """Rank 0's half of ``wait_for_main``; the arguments are what had to be ready (already resolved)."""
    if is_main():
        barrier()


# ----------------------------------------------------------------------------- assignment


@dataclass(frozen=True)
class Unit:
    """One ensemble member to train: module 'ndm' or 'udm', index k, work = its pool size."""

    module: str
    member: int
    work: int


@dataclass(frozen=True)
class MemberPlan:
    """Which ranks train which members; ``ranks[i]`` are the ranks of ``units[i]`` (writer first)."""

    world_size: int
    units: tuple
    ranks: tuple

    def members(self, module: str, rank: int) -> list[int]:
        """Indices k of ``module``'s members that ``rank`` trains, ascending."""
        return sorted(u.member for u, r in zip(self.units, self.ranks) if u.module == module and rank in r)

    def group(self, module: str, member: int) -> tuple:
        for unit, ranks in zip(self.units, self.ranks):
            if unit.module == module and unit.member == member:
                return ranks
        raise KeyError(f"no member {member} of {module} in the plan")

    def load(self, rank: int) -> float:
        """Work of ``rank``: its units' pool sizes, a shared unit counting 1/group size."""
        return sum(u.work / len(r) for u, r in zip(self.units, self.ranks) if rank in r)

    def describe(self) -> str:
        lines = []
        for r in range(self.world_size):
            mine = [
                f"{u.module}{u.member}" + (f"(1/{len(rs)})" if len(rs) > 1 else "")
                for u, rs in zip(self.units, self.ranks)
                if r in rs
            ]
            lines.append(f"rank {r}: {', '.join(mine)} (work {self.load(r):g})")
        return "; ".join(lines)


def plan_members(num_members: int, pool_sizes: dict, world_size: int) -> MemberPlan:
    """The documented assignment of the 2K members to ``world_size`` ranks (module docstring).

    ``pool_sizes``: images in each module's training pool; a module with 0 (no unlabeled data for
    the UDM) or absent is not trained.
    """
    if int(num_members) < 1:
        raise ValueError(f"num_members must be >= 1 (config key 'num_members'), got {num_members}")
    if int(world_size) < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    unknown = set(pool_sizes) - set(MODULES)
    if unknown:
        raise ValueError(f"pool_sizes names unknown modules {sorted(unknown)}; expected {MODULES}")
    units = [
        Unit(m, k, int(pool_sizes[m]))
        for m in MODULES
        if int(pool_sizes.get(m) or 0) > 0
        for k in range(int(num_members))
    ]
    if not units:
        raise ValueError("nothing to train: every pool in pool_sizes is empty")
    order = sorted(range(len(units)), key=lambda i: (-units[i].work, i))  # heaviest first, then NDM, then k
    if world_size <= len(units):
        loads, owner = [0] * world_size, [0] * len(units)
        for i in order:
            r = min(range(world_size), key=lambda j: (loads[j], j))
            owner[i], loads[r] = r, loads[r] + units[i].work
        ranks = tuple((owner[i],) for i in range(len(units)))
    else:
        counts = [1] * len(units)
        for _ in range(world_size - len(units)):
            best = min(order, key=lambda i: (-units[i].work / counts[i], order.index(i)))
            counts[best] += 1
        starts = [sum(counts[:i]) for i in range(len(units))]
        ranks = tuple(tuple(range(starts[i], starts[i] + counts[i])) for i in range(len(units)))
    return MemberPlan(int(world_size), tuple(units), ranks)


def select(values: Sequence, indices: Sequence[int]) -> list:
    """``[values[k] for k in indices]``: e.g. the seeds of the members this rank trains."""
    return [values[k] for k in indices]


# ----------------------------------------------------------------------------- DDP within a member


class _Dispatch(nn.Module):
    """Lets DDP run any ``forward*`` method of the net (MemAE's loss calls ``forward_with_attention``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, method: str = "forward"):
        return getattr(self.net, method)(x)


class _ReplicaView:
    """What the objective sees in place of the net: every ``forward*`` call goes through DDP."""

    def __init__(self, ddp: DistributedDataParallel, net: nn.Module):
        self._ddp, self._net = ddp, net

    def __call__(self, x):
        return self._ddp(x)

    def __getattr__(self, name):
        if name.startswith("forward"):
            return lambda x: self._ddp(x, method=name)
        return getattr(self._net, name)


class ReplicaObjective:
    """An objective for members trained by a DDP group: slices the batch, DDP averages the gradients.

    Called by the trainer as ``objective(net, x)`` with the member's whole batch x (B, C, H, W).
    Rank j of a group of g takes slice j of ``torch.tensor_split(x, g)`` (sizes n_j differ by at
    most 1) and returns ``objective(net, x_j) * g * n_j / B``: DDP's average over the group is then
    sum_j n_j/B * grad(mean loss over slice j), the gradient of the mean over the whole batch. A
    batch too small to give every rank 2 images (BatchNorm needs 2) is computed whole on every rank,
    which gives the same gradient on each. Members without a group use ``objective`` unchanged.

    Args:
        objective: the module's objective (``scripts.scoring.losses``).
        groups: raw member network -> (process group, rank within it, group size).
        device: where the members train.
    """

    def __init__(self, objective, groups: dict, device):
        self.objective = objective
        self.device = torch.device(device)
        self.replicas = {}
        for net, (group, group_rank, size) in groups.items():
            net.to(self.device)  # DDP wraps a module on its device; Module.to keeps the optimizer's tensors
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = DistributedDataParallel(_Dispatch(net), device_ids=ids, process_group=group)
            self.replicas[id(net)] = (net, ddp, group, group_rank, size)

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        entry = self.replicas.get(id(net))
        if entry is None:
            return self.objective(net, x)
        net, ddp, _, group_rank, size = entry
        batch = x.shape[0]
        if batch < 2 * size:
            return self.objective(_ReplicaView(ddp, net), x)
        part = torch.tensor_split(x, size)[group_rank]
        return self.objective(_ReplicaView(ddp, net), part) * (size * part.shape[0] / batch)

    def check_replicas(self) -> None:
        """Raise unless every rank of each group holds the same parameters (run after training)."""
        for net, _, group, _, _ in self.replicas.values():
            flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
            leader = flat.clone()
            dist.broadcast(leader, src=dist.get_global_rank(group, 0), group=group)
            differs = torch.tensor([0.0 if torch.equal(flat, leader) else 1.0], device=flat.device)
            dist.all_reduce(differs, op=dist.ReduceOp.MAX, group=group)
            if differs.item() > 0:
                raise RuntimeError(
                    f"rank {rank()}: the DDP replicas of a member hold different parameters "
                    f"after training ({(flat - leader).abs().max().item():.3g} max difference)"
                )
            if dist.get_rank(group) == 0:
                logger.info(
                    "the %d DDP replicas of a member hold the same parameters after training",
                    dist.get_world_size(group),
                )


class ReplicaResume(MemberCheckpoints):
    """For the ranks of a DDP group after the first: resume from the writer's checkpoints, write nothing."""

    def attach(self, engine) -> None:
        self.positions = self._engine_members(engine)
        self._register_resume(engine)


# ----------------------------------------------------------------------------- the overlay's object


class MemberSpread:
    """This process's share of stage-1 training under torchrun (the overlay's ``distributed`` key).

    Builds the plan from the pool sizes and creates one process group per shared member (every rank
    must take part in creating every group, so this runs once, in the config's ``initialize``).

    Args:
        num_members: K (config key ``num_members``).
        pool_sizes: {'ndm': len(D_n), 'udm': len(D_n) + len(D_u) or 0}.
    """

    def __init__(self, num_members: int, pool_sizes: dict):
        self.rank, self.world_size = rank(), world_size()
        self.plan = plan_members(num_members, pool_sizes, self.world_size)
        self.groups = {}
        for unit, ranks in zip(self.plan.units, self.plan.ranks):
            if len(ranks) > 1:
                group = dist.new_group(ranks=list(ranks))  # collective: called on every rank, same order
                if self.rank in ranks:
                    self.groups[(unit.module, unit.member)] = (group, ranks.index(self.rank), len(ranks))
        self.objectives = []
        if is_main():
            logger.info("members over %d process(es): %s", self.world_size, self.plan.describe())

    def members(self, module: str) -> list[int]:
        """Global indices k of ``module``'s members this rank trains."""
        return self.plan.members(module, self.rank)

    def objective(self, objective, module: str, members: Sequence[nn.Module], device):
        """``objective``, wrapped for DDP when this rank shares one of ``module``'s members."""
        ids = self.members(module)
        if len(ids) != len(members):
            raise ValueError(
                f"{module}: {len(members)} members built but the plan gives this rank {ids} "
                f"(config key '{module}#members' must follow '{module}#member_ids')"
            )
        groups = {net: self.groups[(module, k)] for k, net in zip(ids, members) if (module, k) in self.groups}
        if not groups:
            return objective
        wrapped = ReplicaObjective(objective, groups, device)
        self.objectives.append(wrapped)
        return wrapped

    def writes(self, module: str, member: int) -> bool:
        return self.plan.group(module, member)[0] == self.rank

    def handlers(self, handlers: Sequence, module: str) -> list:
        """The module's handlers for this rank: checkpoints under global member indices, written by
        the member's first rank only; the progress bar on rank 0 only."""
        ids = self.members(module)
        found = [h for h in handlers if isinstance(h, MemberCheckpoints)]
        if len(found) != 1:
            raise ValueError(
                f"config key '{module}#handlers' must hold exactly one scripts.handlers.training.MemberCheckpoints, "
                f"found {len(found)}"
            )
        result = []
        for handler in handlers:
            if isinstance(handler, MemberCheckpoints):
                writer = all(self.writes(module, k) for k in ids)
                kind = MemberCheckpoints if writer else ReplicaResume
                handler = kind(handler.ckpt_dir, handler.module, handler.save_every, handler.resume, member_ids=ids)
            elif isinstance(handler, LossProgressBar) and not is_main():
                handler = LossProgressBar(handler.module, enabled=False)
            result.append(handler)
        return result

    def finish(self, ckpt_dir) -> list:
        """After training: replicas checked equal, all ranks synchronized, every final weight file present.

        Returns the final weight files (on every rank) so the workflows that follow find them all.
        """
        for objective in self.objectives:
            objective.check_replicas()
        barrier()
        paths = [final_weights_path(ckpt_dir, u.module, u.member) for u in self.plan.units]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise RuntimeError(f"rank {self.rank}: after training, final weights are missing: {missing}")
        if is_main():
            logger.info("all %d members' final weights are in %s", len(paths), ckpt_dir)
        return paths
