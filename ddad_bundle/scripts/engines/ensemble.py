"""Training the ensembles of reconstruction networks in one Ignite loop over cached tensors.

DDAD trains two modules, the NDM (on the known normals D_n) and the UDM (on D_n and the
unlabeled pool D_u), each an ensemble of K networks that differ only in their random
initialization and their shuffle order (Cai et al., DDAD, Sec. 2.1). Here the images of a
module's training pool are decoded once into one tensor (N, C, H, W); every iteration gives
each member its own mini-batch, drawn from its own per-epoch permutation, and each member
takes one optimizer step. One Ignite engine (a MONAI ``Trainer``) drives all 2K members of both
modules (a ``MemberGroup`` each), so MONAI/Ignite handlers (stats, TensorBoard, checkpoints,
progress bar) see one run; each member still takes exactly the steps it would take alone.

Ensemble modes (config key ``ensemble_mode``), all with the same seeds, batches and checkpoints:

- ``sequential``: the members step one after another on their batches of the same iteration;
- ``concurrent``: the same per-member steps spread over worker threads (config key
  ``threads``), each running torch with one intra-op thread. An AE op at 64x64 is too small to
  keep two cores busy, one member per core is not; the numbers do not depend on which thread
  ran which member, and equal sequential mode's under one torch thread;
- ``fused``: one forward and backward of ``scripts.networks.fused.FusedAE`` (grouped convolutions,
  batched matrix products) for all K members of a module and one Adam over the fused
  parameters, the loss being the sum of the members' mean losses; Adam is elementwise, so every
  member takes the step it would take alone. Member networks and optimizers are refreshed from
  the fused ones at the end of every epoch, so checkpoints stay one file per member;
- ``per_member``: the classic bundle idiom, one MONAI ``SupervisedTrainer`` per member fed by a
  MONAI ``DataLoader`` with its own seeded shuffle (``PerMemberTrainer``); the baseline of
  ``benchmarks/speed.py``;
- ``auto`` (default): ``fused`` on a GPU, where it removes K-1 of every K kernel launches,
  ``concurrent`` on a CPU, where grouped convolutions measured no faster per member and one
  member per core measured fastest (``docs/performance.md``).

Seeds, the documented rule: member k (0-based) of module ``ndm`` gets ``seed + k``, of ``udm``
``seed + 1000 + k``, the ASR-Net ``seed + 2000``. A member's weights are initialized right after
``torch.manual_seed(member_seed)``; its shuffle order in epoch e (1-based) is
``torch.randperm(N, generator=Generator().manual_seed(member_seed * 100_003 + e))``, so a
resumed run draws exactly the batches the uninterrupted run would have drawn.

Example::

    >>> ndm = MemberGroup("ndm", ndm_members, adam_optimizers(ndm_members), MemberBatches(normals, ndm_seeds, 64))
    >>> udm = MemberGroup("udm", udm_members, adam_optimizers(udm_members), MemberBatches(pool, udm_seeds, 64))
    >>> trainer = EnsembleTrainer(device, 250, objective=MSEObjective(), groups=[ndm, udm], ensemble_mode="auto")
    >>> trainer.run()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import torch
from ignite.engine import Events
from monai.engines import Trainer
from torch import nn

from ..networks import fused as fusion

logger = logging.getLogger("ddad")

ENSEMBLE_MODES = ("auto", "fused", "concurrent", "sequential", "per_member")
MODULE_SEED_OFFSETS = {"ndm": 0, "udm": 1000, "asr": 2000}


def member_seeds(seed: int, module: str, num_members: int) -> list[int]:
    """Seeds of the members of ``module`` ('ndm', 'udm' or 'asr'), derived from the run's one seed."""
    if module not in MODULE_SEED_OFFSETS:
        raise ValueError(f"module must be one of {sorted(MODULE_SEED_OFFSETS)}, got {module!r}")
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    return [int(seed) + MODULE_SEED_OFFSETS[module] + k for k in range(num_members)]


def seeded_members(factory: Callable[[], nn.Module], seeds: Sequence[int]) -> list[nn.Module]:
    """One network per seed, each initialized right after seeding torch's global generator."""
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(factory())
    return members


def adam_optimizers(
    members: Sequence[nn.Module], lr: float = 5e-4, betas=(0.5, 0.999), weight_decay: float = 0.0, fused: bool = False
):
    """One Adam optimizer per member (the paper's stage-1 defaults).

    ``fused`` (config key ``fused_adam``) takes torch's single-kernel Adam: the same update
    rule, to float rounding, in one pass over the parameters. The AE keeps most of its 4.5 M
    weights in the fully connected bottleneck, so on a CPU the default per-tensor Adam costs
    about as much as a batch-16 forward and backward (docs/performance.md).
    """
    return [
        torch.optim.Adam(m.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None)
        for m in members
    ]


LR_SCHEDULES = ("constant", "cosine")


def lr_schedulers(optimizers, schedule: str, total_steps: int):
    """Per-member learning-rate schedules stepped every iteration.

    ``constant`` is the paper's setting. ``cosine`` decays the rate to 0 over the run; with a
    schedule much shorter than the paper's 250 epochs it lets the members settle instead of
    ending on the parameter noise of a constant rate, which otherwise dominates A_intra (the
    members' disagreement). Measured on the CXR phantoms in docs/README.md.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(
            f"unknown lr_schedule {schedule!r} (config key 'lr_schedule'); choose one of {', '.join(LR_SCHEDULES)}"
        )
    if schedule == "constant":
        return []
    total = max(int(total_steps), 1)
    factor = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    return [torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizers]


def bf16_native(device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU with bf16 support, or a CPU whose
    oneDNN has bf16 kernels (AVX-512 BF16 / AMX). Elsewhere autocast falls back to slow paths."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_amp(amp, device) -> bool:
    """Config key ``amp``: true, false, or 'auto' (bf16 autocast where ``bf16_native``)."""
    if isinstance(amp, str) and amp.lower() == "auto":
        return bf16_native(device)
    if isinstance(amp, bool):
        return amp
    raise ValueError(f"config key 'amp' must be true, false or 'auto', got {amp!r}")


def bf16_autocast(enabled: bool, device: torch.device):
    """bf16 autocast for a forward pass when ``enabled`` (config key ``amp``), else a no-op.

    bf16 needs no loss scaling, unlike fp16, and is supported by recent CPUs and GPUs alike.
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def resolve_ensemble_mode(mode: str, device) -> str:
    """The concrete mode for ``device``: ``auto`` is ``fused`` on CUDA, ``concurrent`` elsewhere."""
    if mode not in ENSEMBLE_MODES:
        raise ValueError(
            f"unknown ensemble_mode {mode!r} (config key 'ensemble_mode'); choose one of {', '.join(ENSEMBLE_MODES)}"
        )
    if mode != "auto":
        return mode
    return "fused" if torch.device(device).type == "cuda" else "concurrent"


def shuffle_order(num_items: int, member_seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the training pool that a member uses in ``epoch`` (see module docstring)."""
    generator = torch.Generator().manual_seed(int(member_seed) * 100_003 + int(epoch))
    return torch.randperm(num_items, generator=generator)


class MemberBatches:
    """Per-member shuffled mini-batches of an in-memory image tensor.

    Yields ``{"image": Tensor (K, b, C, H, W)}``: slice k is member k's batch. A trailing batch
    of a single image is dropped because BatchNorm cannot train on it.
    """

    def __init__(self, images: torch.Tensor, seeds: Sequence[int], batch_size: int, name: str = "training pool"):
        if images.dim() != 4:
            raise ValueError(f"{name}: expected cached images (N, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[0] < 2:
            raise ValueError(f"{name} holds {images.shape[0]} image(s); at least 2 are needed to train")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        self.images = images
        self.seeds = list(seeds)
        self.batch_size = min(batch_size, images.shape[0])
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def to(self, device) -> "MemberBatches":
        """Keep the cached pool on ``device`` so batches are gathered there (no host copy per step)."""
        self.images = self.images.to(device)
        return self

    def __len__(self) -> int:
        full, rest = divmod(self.images.shape[0], self.batch_size)
        return full + (1 if rest >= 2 else 0)

    def __iter__(self) -> Iterator[dict]:
        n = self.images.shape[0]
        orders = torch.stack([shuffle_order(n, s, self.epoch) for s in self.seeds]).to(self.images.device)
        for i in range(len(self)):
            index = orders[:, i * self.batch_size : (i + 1) * self.batch_size]
            yield {"image": self.images[index]}


class MemberGroup:
    """The members of one module (``ndm`` or ``udm``) as one ``EnsembleTrainer`` drives them.

    Args:
        module: 'ndm' or 'udm' (logs, the ``<module>_loss`` output, checkpoint names).
        members: the module's K networks; optimizers: one per member.
        data: a ``MemberBatches`` over the module's cached training pool.
        handlers: handlers that belong to this module (its checkpoints, its loss logs).
        objective: ``objective(net, x) -> loss``; None takes the trainer's.
    """

    def __init__(
        self,
        module: str,
        members: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        data: "MemberBatches",
        handlers: Sequence = (),
        objective: Callable | None = None,
    ):
        if len(members) != len(optimizers):
            raise ValueError(f"{module}: {len(members)} members but {len(optimizers)} optimizers")
        if len(members) != len(data.seeds):
            raise ValueError(f"{module}: {len(members)} members but batches for {len(data.seeds)}")
        self.module = module
        self.members = list(members)
        self.optimizers = list(optimizers)
        self.data = data
        self.handlers = list(handlers or [])
        self.objective = objective
        self.schedulers: list = []
        self.last_losses: torch.Tensor | None = None


class JointBatches:
    """Iterates the pools of several groups in lockstep: iteration i holds each group's i-th batch,
    or None once a group's (smaller) pool has given all its batches of the epoch."""

    def __init__(self, pools: Sequence["MemberBatches"]):
        self.pools = list(pools)

    def set_epoch(self, epoch: int) -> None:
        for pool in self.pools:
            pool.set_epoch(epoch)

    def __len__(self) -> int:
        return max(len(pool) for pool in self.pools)

    def __iter__(self) -> Iterator[dict]:
        iterators = [iter(pool) for pool in self.pools]
        for i in range(len(self)):
            yield {"images": [next(it)["image"] if i < len(pool) else None for it, pool in zip(iterators, self.pools)]}


class BatchTrainer(Trainer):
    """A MONAI ``Trainer`` over batches the trainer draws itself (seeded per member, no DataLoader),
    with bf16 autocast applied by the subclass's step (``self.bf16``)."""

    def __init__(self, device, max_epochs: int, batches, amp: bool = False):
        super().__init__(device, max_epochs, batches, epoch_length=len(batches), amp=False, decollate=False)
        # MONAI's own amp flag would make Trainer.run build an fp16 GradScaler, which bf16 does not need.
        self.bf16 = bool(amp)


class EnsembleTrainer(BatchTrainer):
    """A MONAI/Ignite trainer that steps every member of one or more ensembles on its own batch.

    One engine can drive both modules (``groups=[ndm, udm]``): iteration i steps every member
    whose pool still has an i-th batch this epoch, so the NDM, whose pool D_n is smaller than the
    UDM's D_n + D_u, finishes its epoch in fewer iterations and each member's sequence of batches
    and optimizer steps is exactly the one it would take trained alone.

    Args:
        device: where the members train.
        max_epochs: epochs (250 in the paper).
        members, optimizers, objective, data, module: one group given directly (the single-module
            form); ``objective(net, x) -> loss`` (see ``scripts.scoring.losses``) is also the default of
            every group in ``groups``.
        handlers: MONAI/Ignite handlers to attach (each group's own handlers are attached too).
        amp: bf16 autocast for the forward pass.
        lr_schedule: 'constant' (the paper) or 'cosine' (decay to 0 over ``max_epochs``).
        ensemble_mode: 'sequential' (default here, for callers that predate the key), 'concurrent',
            'fused' or 'auto' (see the module docstring; 'per_member' is ``PerMemberTrainer``).
        channels_last: train in the channels-last memory format.
        threads: worker threads of 'concurrent' mode (0: ``torch.get_num_threads()``).
        groups: ``MemberGroup`` objects, one per module, instead of the single-group arguments.

    ``engine.state.output`` holds ``loss`` (mean over the members that stepped), ``member_losses``
    (every member's last loss) and ``<module>_loss`` per group. In fused mode ``members`` and
    ``optimizers`` are brought up to date at the end of every epoch (and loaded back at start,
    after a resume), so handlers that read them there see the same state as in sequential mode.
    ``members``, ``optimizers`` and ``schedulers`` list all groups' members in order;
    ``member_modules`` gives (module, index within the module) for each.
    """

    def __init__(
        self,
        device,
        max_epochs: int,
        members: Sequence[nn.Module] | None = None,
        optimizers: Sequence[torch.optim.Optimizer] | None = None,
        objective: Callable | None = None,
        data: MemberBatches | None = None,
        module: str = "ndm",
        handlers=None,
        amp: bool = False,
        lr_schedule: str = "constant",
        ensemble_mode: str = "sequential",
        channels_last: bool = False,
        threads: int = 0,
        groups: Sequence[MemberGroup] | None = None,
    ):
        if groups is None:
            groups = [MemberGroup(module, members, optimizers, data)]
        groups = [g for g in groups if g is not None]
        if not groups:
            raise ValueError("an ensemble trainer needs at least one group of members")
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (config key 'epochs'), got {max_epochs}")
        device = torch.device(device)
        mode = resolve_ensemble_mode(ensemble_mode, device)
        if mode == "per_member":
            raise ValueError("ensemble_mode 'per_member' runs PerMemberTrainer; build it with build_ensemble_trainer")
        for group in groups:
            group.objective = group.objective if group.objective is not None else objective
            if group.objective is None:
                raise ValueError(f"{group.module}: no objective given")
            group.data.to(device)
        batches = JointBatches([g.data for g in groups])
        super().__init__(device, max_epochs, batches, amp)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.groups = groups
        self.module = "+".join(g.module for g in groups)
        self.members = nn.ModuleList([m for g in groups for m in g.members]).to(
            device, memory_format=self.memory_format
        )
        self.optimizers = [o for g in groups for o in g.optimizers]
        self.member_modules = [(g.module, k) for g in groups for k in range(len(g.members))]
        for group in groups:
            group.schedulers = lr_schedulers(group.optimizers, lr_schedule, max_epochs * len(group.data))
        self.schedulers = [s for g in groups for s in g.schedulers]
        self.pool: ThreadPoolExecutor | None = None
        self.workers = min(int(threads) or torch.get_num_threads(), len(self.members))
        self.ensemble_mode = self._concrete_mode(mode, lr_schedule, max_epochs)
        self.add_event_handler(Events.EPOCH_STARTED, lambda engine: batches.set_epoch(engine.state.epoch))
        if self.ensemble_mode == "fused":
            # Registered before the handlers: checkpoints written at these events see fresh members.
            self.add_event_handler(Events.EPOCH_COMPLETED, self.sync_members)
            self.add_event_handler(Events.COMPLETED, self.sync_members)
        # Handlers attach after the members exist: checkpoint handlers need them.
        for handler in [h for g in groups for h in g.handlers] + list(handlers or []):
            handler.attach(self)
        if self.ensemble_mode == "fused":
            # Registered after the handlers: a resume loads the members first, then the fused copy.
            self.add_event_handler(Events.STARTED, self.sync_fused)

    def _concrete_mode(self, mode: str, lr_schedule: str, max_epochs: int) -> str:
        """The mode the loop runs: 'concurrent' needs two worker threads; 'fused' builds each group's
        fused network and optimizer, or says why the members train one by one."""
        if mode == "concurrent" and self.workers < 2:
            logger.info("%s: one worker thread available; training the members sequentially", self.module)
            return "sequential"
        if mode != "fused":
            return mode
        for group in self.groups:
            reason = self._fusion_obstacle(group)
            if reason is not None:
                logger.info(
                    "%s: ensemble_mode 'fused' unavailable (%s); training the members sequentially",
                    group.module,
                    reason,
                )
                return "sequential"
        for group in self.groups:
            group.fused = fusion.FusedAE(group.members).to(self.state.device, memory_format=self.memory_format)
            group.fused_objective = fusion.fused_objective(group.objective)
            group.fused_optimizer = torch.optim.Adam(group.fused.parameters(), **_hyper(group.optimizers[0]))
            group.fused_schedulers = lr_schedulers([group.fused_optimizer], lr_schedule, max_epochs * len(group.data))
        return "fused"

    @staticmethod
    def _fusion_obstacle(group: MemberGroup) -> str | None:
        reason = fusion.fusable(group.members)
        if reason is None and fusion.fused_objective(group.objective) is None:
            reason = f"objective {type(group.objective).__name__} has no fused form"
        if reason is None and not all(type(o) is torch.optim.Adam for o in group.optimizers):
            reason = "fusion needs one torch.optim.Adam per member"
        first = group.optimizers[0]
        if reason is None and any(
            o.param_groups[0].keys() != first.param_groups[0].keys() or _hyper(o) != _hyper(first)
            for o in group.optimizers
        ):
            reason = "the members' optimizers differ in their hyperparameters"
        return reason

    def sync_members(self, engine=None) -> None:
        """Fused networks, optimizers and schedules -> the members' (one checkpoint each)."""
        for group in self.groups:
            fusion.load_into_members(group.fused, group.members)
            states = fusion.split_optimizer_state(group.fused_optimizer.state_dict(), group.fused, group.members[0])
            for optimizer, state in zip(group.optimizers, states):
                optimizer.load_state_dict(state)
            for scheduler in group.schedulers:
                scheduler.load_state_dict(group.fused_schedulers[0].state_dict())

    def sync_fused(self, engine=None) -> None:
        """The members' networks, optimizers and schedules -> the fused ones (at start / after a resume)."""
        for group in self.groups:
            fusion.load_from_members(group.fused, group.members)
            states = [o.state_dict() for o in group.optimizers]
            group.fused_optimizer.load_state_dict(fusion.join_optimizer_states(states, group.fused, group.members[0]))
            for fused_scheduler in group.fused_schedulers:
                fused_scheduler.load_state_dict(group.schedulers[0].state_dict())

    def run(self) -> None:
        """Runs the loop; in 'concurrent' mode on a pool of worker threads with one torch thread each."""
        if self.ensemble_mode != "concurrent":
            return super().run()
        previous = torch.get_num_threads()
        # Small networks use two cores poorly within one op; one member per core uses them fully.
        # Set before the pool starts: each worker reads the thread count when it first runs an op.
        torch.set_num_threads(1)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ddad-member")
        try:
            return super().run()
        finally:
            self.pool.shutdown()
            self.pool = None
            torch.set_num_threads(previous)

    def _iteration(self, engine, batchdata: dict) -> dict:
        plan = []  # (group, its steps): every member of every group that has a batch this iteration
        for group, images in zip(self.groups, batchdata["images"]):
            if images is None:
                continue  # this group's pool has given all its batches of the epoch
            images = images.to(engine.state.device, non_blocking=engine.non_blocking)
            if self.ensemble_mode == "fused":
                steps = [functools.partial(self._fused_step, group, images)]
            else:
                steps = [functools.partial(self._member_step, group, k, images[k]) for k in range(len(group.members))]
            plan.append((group, steps))
        every_step = [step for _, steps in plan for step in steps]
        results = iter(self.pool.map(_call, every_step) if self.pool is not None else [step() for step in every_step])
        for group, steps in plan:
            losses = torch.stack([next(results) for _ in steps]).flatten().float()  # (K,) either way
            self._check_finite(group, losses, engine)
            group.last_losses = losses
        stepped = [group for group, _ in plan]
        output = {
            "loss": torch.cat([g.last_losses for g in stepped]).mean().item(),
            "member_losses": [v for g in self.groups for v in g.last_losses.tolist()],
        }
        output.update({f"{g.module}_loss": g.last_losses.mean().item() for g in self.groups})
        return output

    def _check_finite(self, group: MemberGroup, losses: torch.Tensor, engine) -> None:
        if not torch.isfinite(losses).all():
            raise FloatingPointError(
                f"{group.module}: non-finite loss {losses.tolist()} at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}; lower the learning rate (config key 'learning_rate')"
            )

    def _member_step(self, group: MemberGroup, k: int, images: torch.Tensor) -> torch.Tensor:
        net, optimizer = group.members[k], group.optimizers[k]
        net.train()
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(self.bf16, self.state.device):
            loss = group.objective(net, images.contiguous(memory_format=self.memory_format))
        loss.backward()
        optimizer.step()
        if group.schedulers:
            group.schedulers[k].step()
        return loss.detach()

    def _fused_step(self, group: MemberGroup, images: torch.Tensor) -> torch.Tensor:
        group.fused.train()
        group.fused_optimizer.zero_grad(set_to_none=True)
        grouped = fusion.grouped_batch(images).contiguous(memory_format=self.memory_format)
        with bf16_autocast(self.bf16, self.state.device):
            losses = group.fused_objective(group.fused, grouped)
        # Summing the members' mean losses gives each member exactly the gradient of its own loss.
        losses.sum().backward()
        group.fused_optimizer.step()
        for scheduler in group.fused_schedulers:
            scheduler.step()
        return losses.detach()


def _call(task: Callable):
    return task()


def _hyper(optimizer: torch.optim.Optimizer) -> dict:
    """The Adam hyperparameters of an optimizer's (single) parameter group."""
    group = optimizer.param_groups[0]
    return {k: group.get(k) for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "fused")}


class PerMemberTrainer:
    """The classic bundle idiom, kept as the baseline: one MONAI ``SupervisedTrainer`` per member.

    Member k trains alone for ``max_epochs`` on a MONAI ``DataLoader`` over a MONAI ``Dataset``
    of the cached images, shuffled by ``torch.Generator().manual_seed(member_seed)`` (so its
    batches differ from ``MemberBatches``' orders). The same handlers are attached to every
    member's trainer except ``MemberCheckpoints``: this mode writes the members' final weights
    under the same names (``<module>_member<k>.pt``) but keeps no resumable checkpoints.

    Args: as ``EnsembleTrainer``; ``num_workers``: DataLoader worker processes.
    """

    def __init__(
        self,
        device,
        max_epochs: int,
        members: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        objective: Callable,
        data: MemberBatches,
        module: str = "ndm",
        handlers=None,
        amp: bool = False,
        lr_schedule: str = "constant",
        num_workers: int = 0,
    ):
        if len(members) != len(optimizers) or len(members) != len(data.seeds):
            raise ValueError(
                f"{module}: {len(members)} members, {len(optimizers)} optimizers, batches for {len(data.seeds)}"
            )
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (config key 'epochs'), got {max_epochs}")
        from ..handlers.training import MemberCheckpoints

        self.device = torch.device(device)
        self.max_epochs = int(max_epochs)
        self.members = nn.ModuleList(members).to(self.device)
        self.optimizers = list(optimizers)
        self.objective = objective
        self.data = data
        self.module = module
        self.amp = amp
        self.lr_schedule = lr_schedule
        self.num_workers = int(num_workers)
        handlers = list(handlers or [])
        self.checkpoints = [h for h in handlers if isinstance(h, MemberCheckpoints)]
        self.handlers = [h for h in handlers if not isinstance(h, MemberCheckpoints)]
        self.trainers: list = []

    def loader(self, k: int):
        from monai.data import DataLoader, Dataset

        images = self.data.images.cpu()
        batch = self.data.batch_size
        dataset = Dataset([{"image": image} for image in images])
        return DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(int(self.data.seeds[k])),
            drop_last=images.shape[0] % batch == 1,
        )  # BatchNorm cannot train on one image

    def member_trainer(self, k: int):
        from monai.engines import SupervisedTrainer

        net, optimizer = self.members[k], self.optimizers[k]
        loader = self.loader(k)
        schedulers = lr_schedulers([optimizer], self.lr_schedule, self.max_epochs * len(loader))

        def step(engine, batchdata):
            net.train()
            optimizer.zero_grad(set_to_none=True)
            with bf16_autocast(self.amp, self.device):
                loss = self.objective(net, batchdata["image"].to(self.device))
            loss.backward()
            optimizer.step()
            for scheduler in schedulers:
                scheduler.step()
            value = loss.item()
            return {"loss": value, f"{self.module}_loss": value}

        return SupervisedTrainer(
            device=self.device,
            max_epochs=self.max_epochs,
            train_data_loader=loader,
            network=net,
            optimizer=optimizer,
            loss_function=self.objective,
            iteration_update=step,
            train_handlers=self.handlers,
            decollate=False,
        )

    def run(self) -> None:
        from ..runtime.files import torch_save_atomic
        from ..handlers.training import final_weights_path

        self.trainers = []
        for k in range(len(self.members)):
            trainer = self.member_trainer(k)
            self.trainers.append(trainer)
            trainer.run()
            for checkpoints in self.checkpoints:
                torch_save_atomic(
                    self.members[k].state_dict(), final_weights_path(checkpoints.ckpt_dir, checkpoints.module, k)
                )
        logger.info(
            "%s: trained %d members one SupervisedTrainer each (ensemble_mode 'per_member')",
            self.module,
            len(self.members),
        )


class TrainerSequence:
    """Several trainers run one after another (one per group: ``ensemble_mode`` 'per_member', or
    ``one_loop_per_module``); ``trainers`` lists them in run order."""

    def __init__(self, trainers: Sequence):
        self.trainers = list(trainers)

    def run(self) -> None:
        for trainer in self.trainers:
            trainer.run()


def build_ensemble_trainer(
    ensemble_mode: str = "auto", num_workers: int = 0, groups=None, one_loop_per_module: bool = False, **kwargs
):
    """The stage-1 trainer for config key ``ensemble_mode``: an ``EnsembleTrainer`` over all
    ``groups`` (``auto`` resolved for ``kwargs['device']``), or for 'per_member' a
    ``TrainerSequence`` (one ``PerMemberTrainer`` per group, each with its group's handlers and the
    shared ones). Without ``groups``, one module given by members/optimizers/data/module.

    ``one_loop_per_module``: each group (module) trains in a loop of its own, the NDM's first
    (the torchrun overlay: DDP collectives of one loop then pair up in the same order on every rank).
    """
    if one_loop_per_module and groups is not None:
        return TrainerSequence(
            [build_ensemble_trainer(ensemble_mode, num_workers, [g], **kwargs) for g in groups if g is not None]
        )
    mode = resolve_ensemble_mode(ensemble_mode, kwargs.get("device", "cpu"))
    if mode != "per_member":
        return EnsembleTrainer(ensemble_mode=mode, groups=groups, **kwargs)
    kwargs.pop("channels_last", None)
    kwargs.pop("threads", None)
    if groups is None:
        return PerMemberTrainer(num_workers=num_workers, **kwargs)
    shared = list(kwargs.pop("handlers", None) or [])
    trainers = []
    for group in [g for g in groups if g is not None]:
        objective = group.objective if group.objective is not None else kwargs.get("objective")
        options = dict(kwargs, objective=objective)
        trainers.append(
            PerMemberTrainer(
                members=group.members,
                optimizers=group.optimizers,
                data=group.data,
                module=group.module,
                handlers=group.handlers + shared,
                num_workers=num_workers,
                **options,
            )
        )
    return TrainerSequence(trainers)
