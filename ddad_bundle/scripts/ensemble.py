"""Training an ensemble of reconstruction networks in one Ignite loop over cached tensors.

DDAD trains two modules, the NDM (on the known normals D_n) and the UDM (on D_n and the
unlabeled pool D_u), each an ensemble of K networks that differ only in their random
initialization and their shuffle order (Cai et al., DDAD, Sec. 2.1). Here the images of a
module's training pool are decoded once into one tensor (N, C, H, W); every iteration gives
each member its own mini-batch, drawn from its own per-epoch permutation, and each member
takes one optimizer step. One Ignite engine (a MONAI ``Trainer``) drives all K members, so
MONAI/Ignite handlers (stats, TensorBoard, checkpoints, progress bar) see one run per module.

Seeds, the documented rule: member k (0-based) of module ``ndm`` gets ``seed + k``, of ``udm``
``seed + 1000 + k``, the ASR-Net ``seed + 2000``. A member's weights are initialized right after
``torch.manual_seed(member_seed)``; its shuffle order in epoch e (1-based) is
``torch.randperm(N, generator=Generator().manual_seed(member_seed * 100_003 + e))``, so a
resumed run draws exactly the batches the uninterrupted run would have drawn.

Example::

    >>> seeds = member_seeds(0, "ndm", 3)            # [0, 1, 2]
    >>> members = seeded_members(lambda: AE(), seeds)
    >>> batches = MemberBatches(images, seeds, batch_size=64)
    >>> trainer = EnsembleTrainer(device, 250, members, optimizers, MSEObjective(), batches)
    >>> trainer.run()
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch
from ignite.engine import Events
from monai.engines import Trainer
from torch import nn

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

    def __len__(self) -> int:
        full, rest = divmod(self.images.shape[0], self.batch_size)
        return full + (1 if rest >= 2 else 0)

    def __iter__(self) -> Iterator[dict]:
        n = self.images.shape[0]
        orders = torch.stack([shuffle_order(n, s, self.epoch) for s in self.seeds])
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

    ``engine.state.output`` holds ``loss`` (mean over members) and ``member_losses``.
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
    ):
        if len(members) != len(optimizers):
            raise ValueError(f"{module}: {len(members)} members but {len(optimizers)} optimizers")
        if len(members) != len(data.seeds):
            raise ValueError(f"{module}: {len(members)} members but batches for {len(data.seeds)}")
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (config key 'epochs'), got {max_epochs}")
        device = torch.device(device)
        super().__init__(
            device=device, max_epochs=max_epochs, data_loader=data, epoch_length=len(data),
            handlers=None, amp=amp, decollate=False,
        )
        self.members = nn.ModuleList(members).to(device)
        self.optimizers = list(optimizers)
        self.objective = objective
        self.data = data
        self.module = module
        self.schedulers = lr_schedulers(self.optimizers, lr_schedule, max_epochs * len(data))
        self.add_event_handler(Events.EPOCH_STARTED, lambda engine: data.set_epoch(engine.state.epoch))
        # Handlers attach after the members exist: checkpoint handlers need them.
        for handler in handlers or []:
            handler.attach(self)

    def _iteration(self, engine, batchdata: dict) -> dict:
        images = batchdata["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        losses = []
        for k, (net, optimizer) in enumerate(zip(self.members, self.optimizers)):
            net.train()
            optimizer.zero_grad(set_to_none=True)
            with bf16_autocast(self.amp, self.state.device):
                loss = self.objective(net, images[k])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        for scheduler in self.schedulers:
            scheduler.step()
        member_losses = torch.stack(losses).float()
        if not torch.isfinite(member_losses).all():
            raise FloatingPointError(
                f"{self.module}: non-finite loss {member_losses.tolist()} at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}; lower the learning rate (config key 'learning_rate')"
            )
        return {"loss": member_losses.mean().item(), "member_losses": member_losses.tolist()}
