"""Training an ensemble of reconstruction networks in one Ignite loop over cached tensors.

DDAD trains two modules, the NDM (on the known normals D_n) and the UDM (on D_n and the
unlabeled pool D_u), each an ensemble of K networks that differ only in their random
initialization and their shuffle order (Cai et al., DDAD, Sec. 2.1). Here the images of a
module's training pool are decoded once into one tensor (N, C, H, W); every iteration gives
each member its own mini-batch, drawn from its own per-epoch permutation, and each member
takes one optimizer step. One Ignite engine (a MONAI ``Trainer``) drives all K members, so
MONAI/Ignite handlers (stats, TensorBoard, checkpoints, progress bar) see one run per module.

Ensemble modes (config key ``ensemble_mode``), all with the same seeds, batches and checkpoints:

- ``sequential``: the members step one after another on their batches of the same iteration;
- ``fused``: one forward and backward of ``scripts.fused.FusedAE`` (grouped convolutions,
  batched matrix products) for all K members and one Adam over the fused parameters, the loss
  being the sum of the members' mean losses; Adam is elementwise, so every member takes the step
  it would take alone. Member networks and optimizers are refreshed from the fused ones at the
  end of every epoch, so checkpoints stay one file per member;
- ``per_member``: the classic bundle idiom, one MONAI ``SupervisedTrainer`` per member fed by a
  MONAI ``DataLoader`` with its own seeded shuffle (``PerMemberTrainer``); the baseline of
  ``benchmarks/speed.py``;
- ``auto`` (default): ``fused`` on a GPU, where it removes K-1 of every K kernel launches,
  ``sequential`` on a CPU, where grouped convolutions measured no faster per member
  (``docs/performance.md``).

Seeds, the documented rule: member k (0-based) of module ``ndm`` gets ``seed + k``, of ``udm``
``seed + 1000 + k``, the ASR-Net ``seed + 2000``. A member's weights are initialized right after
``torch.manual_seed(member_seed)``; its shuffle order in epoch e (1-based) is
``torch.randperm(N, generator=Generator().manual_seed(member_seed * 100_003 + e))``, so a
resumed run draws exactly the batches the uninterrupted run would have drawn.

Example::

    >>> seeds = member_seeds(0, "ndm", 3)            # [0, 1, 2]
    >>> members = seeded_members(lambda: AE(), seeds)
    >>> batches = MemberBatches(images, seeds, batch_size=64)
    >>> trainer = EnsembleTrainer(device, 250, members, optimizers, MSEObjective(), batches, ensemble_mode="fused")
    >>> trainer.run()
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Iterator, Sequence

import torch
from ignite.engine import Events
from monai.engines import Trainer
from torch import nn

from . import fused as fusion

logger = logging.getLogger("ddad")

ENSEMBLE_MODES = ("auto", "fused", "sequential", "per_member")
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


def adam_optimizers(members: Sequence[nn.Module], lr: float = 5e-4, betas=(0.5, 0.999), weight_decay: float = 0.0):
    """One Adam optimizer per member (the paper's stage-1 defaults)."""
    return [torch.optim.Adam(m.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay) for m in members]


LR_SCHEDULES = ("constant", "cosine")


def lr_schedulers(optimizers, schedule: str, total_steps: int):
    """Per-member learning-rate schedules stepped every iteration.

    ``constant`` is the paper's setting. ``cosine`` decays the rate to 0 over the run; with a
    schedule much shorter than the paper's 250 epochs it lets the members settle instead of
    ending on the parameter noise of a constant rate, which otherwise dominates A_intra (the
    members' disagreement). Measured on the CXR phantoms in docs/README.md.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r} (config key 'lr_schedule'); choose one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant":
        return []
    total = max(int(total_steps), 1)
    factor = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    return [torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizers]


def bf16_autocast(enabled: bool, device: torch.device):
    """bf16 autocast for a forward pass when ``enabled`` (config key ``amp``), else a no-op.

    bf16 needs no loss scaling, unlike fp16, and is supported by recent CPUs and GPUs alike.
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def resolve_ensemble_mode(mode: str, device) -> str:
    """The concrete mode for ``device``: ``auto`` is ``fused`` on CUDA, ``sequential`` elsewhere."""
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble_mode {mode!r} (config key 'ensemble_mode'); choose one of {', '.join(ENSEMBLE_MODES)}")
    if mode != "auto":
        return mode
    return "fused" if torch.device(device).type == "cuda" else "sequential"


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


class EnsembleTrainer(Trainer):
    """A MONAI/Ignite trainer that steps every member of one ensemble on its own batch.

    Args:
        device: where the members train.
        max_epochs: epochs (250 in the paper).
        members: the K networks; optimizers: one per member.
        objective: ``objective(net, x) -> loss`` (see ``scripts.losses``).
        data: a ``MemberBatches`` over the module's cached training pool.
        module: name used in logs and checkpoints ('ndm' or 'udm').
        handlers: MONAI/Ignite handlers to attach.
        amp: bf16 autocast for the forward pass.
        lr_schedule: 'constant' (the paper) or 'cosine' (decay to 0 over ``max_epochs``).
        ensemble_mode: 'sequential' (default here, for callers that predate the key), 'fused' or
            'auto' (see the module docstring; 'per_member' is ``PerMemberTrainer``).
        channels_last: train in the channels-last memory format.

    ``engine.state.output`` holds ``loss`` (mean over members) and ``member_losses``. In fused
    mode ``members`` and ``optimizers`` are brought up to date at the end of every epoch (and
    loaded back at start, after a resume), so handlers that read them there see the same state
    as in sequential mode.
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
        ensemble_mode: str = "sequential",
        channels_last: bool = False,
    ):
        if len(members) != len(optimizers):
            raise ValueError(f"{module}: {len(members)} members but {len(optimizers)} optimizers")
        if len(members) != len(data.seeds):
            raise ValueError(f"{module}: {len(members)} members but batches for {len(data.seeds)}")
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (config key 'epochs'), got {max_epochs}")
        device = torch.device(device)
        mode = resolve_ensemble_mode(ensemble_mode, device)
        if mode == "per_member":
            raise ValueError("ensemble_mode 'per_member' runs PerMemberTrainer; build it with build_ensemble_trainer")
        super().__init__(
            device=device, max_epochs=max_epochs, data_loader=data.to(device), epoch_length=len(data),
            handlers=None, amp=amp, decollate=False,
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.members = nn.ModuleList(members).to(device, memory_format=self.memory_format)
        self.optimizers = list(optimizers)
        self.objective = objective
        self.data = data
        self.module = module
        self.schedulers = lr_schedulers(self.optimizers, lr_schedule, max_epochs * len(data))
        self.ensemble_mode = self._fusion_or_fallback(mode, lr_schedule, max_epochs * len(data))
        self.add_event_handler(Events.EPOCH_STARTED, lambda engine: data.set_epoch(engine.state.epoch))
        if self.ensemble_mode == "fused":
            # Registered before the handlers: checkpoints written at these events see fresh members.
            self.add_event_handler(Events.EPOCH_COMPLETED, self.sync_members)
            self.add_event_handler(Events.COMPLETED, self.sync_members)
        # Handlers attach after the members exist: checkpoint handlers need them.
        for handler in handlers or []:
            handler.attach(self)
        if self.ensemble_mode == "fused":
            # Registered after the handlers: a resume loads the members first, then the fused copy.
            self.add_event_handler(Events.STARTED, self.sync_fused)

    def _fusion_or_fallback(self, mode: str, lr_schedule: str, total_steps: int) -> str:
        """Build the fused network and its optimizer, or say why this ensemble trains sequentially."""
        if mode != "fused":
            return mode
        reason = fusion.fusable(self.members)
        objective = fusion.fused_objective(self.objective)
        if reason is None and objective is None:
            reason = f"objective {type(self.objective).__name__} has no fused form"
        if reason is None and not all(type(o) is torch.optim.Adam for o in self.optimizers):
            reason = "fusion needs one torch.optim.Adam per member"
        if reason is None and any(o.param_groups[0].keys() != self.optimizers[0].param_groups[0].keys() or
                                  _hyper(o) != _hyper(self.optimizers[0]) for o in self.optimizers):
            reason = "the members' optimizers differ in their hyperparameters"
        if reason is not None:
            logger.info("%s: ensemble_mode 'fused' unavailable (%s); training the members sequentially", self.module, reason)
            return "sequential"
        self.fused = fusion.FusedAE(self.members).to(self.state.device, memory_format=self.memory_format)
        self.fused_objective = objective
        self.fused_optimizer = torch.optim.Adam(self.fused.parameters(), **_hyper(self.optimizers[0]))
        self.fused_schedulers = lr_schedulers([self.fused_optimizer], lr_schedule, total_steps)
        return "fused"

    def sync_members(self, engine=None) -> None:
        """Fused network, optimizer and schedule -> the K members' (one checkpoint each)."""
        fusion.load_into_members(self.fused, self.members)
        states = fusion.split_optimizer_state(self.fused_optimizer.state_dict(), self.fused, self.members[0])
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)
        for scheduler, fused_scheduler in zip(self.schedulers, self.fused_schedulers * len(self.schedulers)):
            scheduler.load_state_dict(fused_scheduler.state_dict())

    def sync_fused(self, engine=None) -> None:
        """The K members' networks, optimizers and schedule -> the fused ones (at start / after a resume)."""
        fusion.load_from_members(self.fused, self.members)
        states = [o.state_dict() for o in self.optimizers]
        self.fused_optimizer.load_state_dict(fusion.join_optimizer_states(states, self.fused, self.members[0]))
        for fused_scheduler in self.fused_schedulers:
            fused_scheduler.load_state_dict(self.schedulers[0].state_dict())

    def _iteration(self, engine, batchdata: dict) -> dict:
        images = batchdata["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        if self.ensemble_mode == "fused":
            member_losses = self._fused_step(images)
        else:
            member_losses = self._sequential_step(images)
        if not torch.isfinite(member_losses).all():
            raise FloatingPointError(
                f"{self.module}: non-finite loss {member_losses.tolist()} at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}; lower the learning rate (config key 'learning_rate')"
            )
        return {"loss": member_losses.mean().item(), "member_losses": member_losses.tolist()}

    def _sequential_step(self, images: torch.Tensor) -> torch.Tensor:
        losses = []
        for k, (net, optimizer) in enumerate(zip(self.members, self.optimizers)):
            net.train()
            optimizer.zero_grad(set_to_none=True)
            with bf16_autocast(self.amp, self.state.device):
                loss = self.objective(net, images[k].contiguous(memory_format=self.memory_format))
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        for scheduler in self.schedulers:
            scheduler.step()
        return torch.stack(losses).float()

    def _fused_step(self, images: torch.Tensor) -> torch.Tensor:
        self.fused.train()
        self.fused_optimizer.zero_grad(set_to_none=True)
        grouped = fusion.grouped_batch(images).contiguous(memory_format=self.memory_format)
        with bf16_autocast(self.amp, self.state.device):
            losses = self.fused_objective(self.fused, grouped)
        # Summing the members' mean losses gives each member exactly the gradient of its own loss.
        losses.sum().backward()
        self.fused_optimizer.step()
        for scheduler in self.fused_schedulers:
            scheduler.step()
        return losses.detach().float()


def _hyper(optimizer: torch.optim.Optimizer) -> dict:
    """The Adam hyperparameters of an optimizer's (single) parameter group."""
    group = optimizer.param_groups[0]
    return {k: group[k] for k in ("lr", "betas", "eps", "weight_decay", "amsgrad")}


class PerMemberTrainer:
    """The classic bundle idiom, kept as the baseline: one MONAI ``SupervisedTrainer`` per member.

    Member k trains alone for ``max_epochs`` on a MONAI ``DataLoader`` over a MONAI ``Dataset``
    of the cached images, shuffled by ``torch.Generator().manual_seed(member_seed)`` (so its
    batches differ from ``MemberBatches``' orders). The same handlers are attached to every
    member's trainer except ``MemberCheckpoints``: this mode writes the members' final weights
    under the same names (``<module>_member<k>.pt``) but keeps no resumable checkpoints.

    Args: as ``EnsembleTrainer``; ``num_workers``: DataLoader worker processes.
    """

    def __init__(self, device, max_epochs: int, members: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
                 objective: Callable, data: MemberBatches, module: str = "ndm", handlers=None, amp: bool = False,
                 lr_schedule: str = "constant", num_workers: int = 0):
        if len(members) != len(optimizers) or len(members) != len(data.seeds):
            raise ValueError(f"{module}: {len(members)} members, {len(optimizers)} optimizers, batches for {len(data.seeds)}")
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (config key 'epochs'), got {max_epochs}")
        from .handlers import MemberCheckpoints

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
        return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(int(self.data.seeds[k])),
                          drop_last=images.shape[0] % batch == 1)  # BatchNorm cannot train on one image

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
            return {"loss": loss.item()}

        return SupervisedTrainer(device=self.device, max_epochs=self.max_epochs, train_data_loader=loader, network=net,
                                 optimizer=optimizer, loss_function=self.objective, iteration_update=step,
                                 train_handlers=self.handlers, decollate=False)

    def run(self) -> None:
        from .files import torch_save_atomic
        from .handlers import final_weights_path

        self.trainers = []
        for k in range(len(self.members)):
            trainer = self.member_trainer(k)
            self.trainers.append(trainer)
            trainer.run()
            for checkpoints in self.checkpoints:
                torch_save_atomic(self.members[k].state_dict(), final_weights_path(checkpoints.ckpt_dir, checkpoints.module, k))
        logger.info("%s: trained %d members one SupervisedTrainer each (ensemble_mode 'per_member')",
                    self.module, len(self.members))


def build_ensemble_trainer(ensemble_mode: str = "auto", num_workers: int = 0, **kwargs):
    """The trainer of one module for config key ``ensemble_mode``: a ``PerMemberTrainer`` for
    'per_member', else an ``EnsembleTrainer`` (``auto`` resolved for ``kwargs['device']``)."""
    mode = resolve_ensemble_mode(ensemble_mode, kwargs.get("device", "cpu"))
    if mode == "per_member":
        kwargs.pop("channels_last", None)
        return PerMemberTrainer(num_workers=num_workers, **kwargs)
    return EnsembleTrainer(ensemble_mode=mode, **kwargs)
