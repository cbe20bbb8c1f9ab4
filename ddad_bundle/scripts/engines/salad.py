"""Training SALAD: pre-training, then progressive aggregation rounds, in one Ignite loop.

The schedule (Bozorgtabar et al., MICCAI 2020, Sec. 2): ``pretrain_epochs`` of
L_mse + lambda L_ss, then one round of ``round_epochs`` per entry of ``neighbours`` (the k of
L_agg, growing from round to round) with L_mse + lambda (L_ss + L_agg), L_agg taken over the
batch's prototypical samples B_ps (``prototype_fractions``, one fraction per round). Epoch e of
the loop knows its phase from e alone (``SaladSchedule.phase``), so a run resumed from a
checkpoint continues in the round it was in.

One step, for a batch of B training images (indices i into the pool) in ``views`` random
augmentations each (``XrayAugment``): the network gives reconstructions and embeddings of the
B * views images; L_mse is the pixel MSE of every view against itself; every view embedding is
an anchor whose candidates are the memory bank entries followed by the batch's other view
embeddings; L_ss's positives are image i's bank entry and i's other views, L_agg's the k bank
entries nearest to the anchor. The bank entries of the batch are then updated with the mean of
their views' embeddings (``MemoryBank.update``).

The trained model (``SaladModel``: network + bank, one module so that checkpoints hold both) is
checkpointed by the bundle's ``scripts.handlers.training.MemberCheckpoints`` (module name
``salad``), which also resumes an interrupted run; the trainer exposes ``members`` and
``optimizers`` as that handler expects. Shuffling and augmentations are drawn from generators
seeded by (seed, epoch, iteration), never from a global stream, so a resumed run repeats the
exact batches and views of an uninterrupted one and ends with identical weights.

Example (config ``salad_train.json``)::

    "trainer": {"_target_": "scripts.engines.salad.SaladTrainer", "model": "@salad_model", ...}
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import Trainer
from torch import nn

from ..networks.salad import SALADNet
from ..scoring.salad import MemoryBank, nearest_entries, neighbour_mask, neighbourhood_nll, prototypical

logger = logging.getLogger("ddad")


class SaladModel(nn.Module):
    """The SALAD network and its memory bank (one entry per training image) as one module."""

    def __init__(self, net: SALADNet, num_entries: int, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        self.net = net
        self.bank = MemoryBank(num_entries, net.to_embedding.out_features, momentum, seed)

    def forward(self, x: torch.Tensor):
        return self.net(x)


def build_model(network_def, num_entries: int, momentum: float = 0.5, seed: int = 0) -> SaladModel:
    """A ``SaladModel`` whose network initialisation and bank draw both follow ``seed``."""
    torch.manual_seed(int(seed))
    return SaladModel(network_def(), num_entries, momentum, seed)


@dataclass
class SaladSchedule:
    """Pre-training epochs, then one round of ``round_epochs`` per k of ``neighbours``."""

    pretrain_epochs: int
    round_epochs: int
    neighbours: Sequence[int]
    prototype_fractions: Sequence[float] | None = None

    def __post_init__(self):
        self.neighbours = [int(k) for k in self.neighbours]
        fractions = self.prototype_fractions
        if fractions is None or len(fractions) == 0:
            fractions = [1.0] * len(self.neighbours)
        self.prototype_fractions = [float(f) for f in fractions]
        if self.pretrain_epochs < 0 or self.round_epochs < 1 and self.neighbours:
            raise ValueError(
                f"salad_pretrain_epochs must be >= 0 and salad_round_epochs >= 1, got "
                f"{self.pretrain_epochs} and {self.round_epochs}"
            )
        if len(self.prototype_fractions) != len(self.neighbours):
            raise ValueError(
                f"salad_prototype_fractions has {len(self.prototype_fractions)} entries but "
                f"salad_neighbours {len(self.neighbours)}: give one per round"
            )
        if any(k < 1 for k in self.neighbours):
            raise ValueError(f"salad_neighbours must all be >= 1, got {self.neighbours}")

    @property
    def max_epochs(self) -> int:
        total = self.pretrain_epochs + self.round_epochs * len(self.neighbours)
        if total < 1:
            raise ValueError("the SALAD schedule has no epochs: set salad_pretrain_epochs or salad_neighbours")
        return total

    def phase(self, epoch: int) -> tuple[int, int, float]:
        """(round, k, prototype fraction) of 1-based ``epoch``; round 0 and k 0 in pre-training."""
        if epoch <= self.pretrain_epochs or not self.neighbours:
            return 0, 0, 0.0
        r = min((epoch - self.pretrain_epochs - 1) // self.round_epochs, len(self.neighbours) - 1)
        return r + 1, self.neighbours[r], self.prototype_fractions[r]


def step_generator(seed: int, epoch: int, iteration: int = 0) -> torch.Generator:
    """A generator for (seed, epoch, iteration): the same draws however the run was interrupted."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 100_019 + int(iteration))


class XrayAugment:
    """Batched random views for X-rays: small affine (rotation, scale, shift) and intensity jitter.

    No flips: they swap the heart's side. Applied on (B, C, H, W) in [-1, 1] with one
    ``grid_sample`` per batch (a per-image MONAI transform chain costs more than the step itself
    at these sizes), drawn from the given generator so that a resumed run sees the same views.
    """

    def __init__(
        self,
        rotate_degrees: float = 5.0,
        scale: float = 0.05,
        shift: float = 0.05,
        brightness: float = 0.1,
        contrast: float = 0.1,
    ):
        self.rotate, self.scale, self.shift = math.radians(rotate_degrees), scale, shift
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]

        def uniform(low, high):
            return (torch.rand(b, generator=generator) * (high - low) + low).to(x)

        angle = uniform(-self.rotate, self.rotate)
        scale = uniform(1 - self.scale, 1 + self.scale)
        tx, ty = uniform(-self.shift, self.shift) * 2, uniform(-self.shift, self.shift) * 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # border padding: a shifted X-ray continues its edge instead of showing a black band
        moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        gain = uniform(1 - self.contrast, 1 + self.contrast).view(b, 1, 1, 1)
        offset = uniform(-self.brightness, self.brightness).view(b, 1, 1, 1)
        return (moved * gain + offset).clamp(-1.0, 1.0)


class SaladBatches:
    """Shuffled mini-batches of a cached pool (N, C, H, W): {"image": (b, C, H, W), "index": (b,)}.

    The order of epoch e comes from ``step_generator(seed, e)``; a trailing batch of one image is
    dropped (BatchNorm cannot train on it).
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int = 0, name: str = "training pool"):
        if images.dim() != 4 or images.shape[0] < 2:
            raise ValueError(f"{name}: expected at least 2 cached images (N, C, H, W), got shape {tuple(images.shape)}")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        self.images, self.seed, self.epoch = images, int(seed), 1
        self.batch_size = min(int(batch_size), images.shape[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, rest = divmod(self.images.shape[0], self.batch_size)
        return full + (1 if rest >= 2 else 0)

    def __iter__(self) -> Iterator[dict]:
        order = torch.randperm(self.images.shape[0], generator=step_generator(self.seed, self.epoch))
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield {"image": self.images[index], "index": index}


def salad_losses(
    model: SaladModel,
    images: torch.Tensor,
    index: torch.Tensor,
    views: int,
    augment: XrayAugment,
    generator: torch.Generator,
    tau: float,
    k: int = 0,
    fraction: float = 1.0,
) -> dict:
    """The step's losses {"mse", "ss", "agg", "z"} (see the module docstring); agg is 0 when k = 0."""
    b = images.shape[0]
    batch = torch.cat([augment(images, generator) for _ in range(views)])  # (views * B, C, H, W), view-major
    recon, z = model(batch)
    mse = F.mse_loss(recon, batch)
    bank = model.bank.entries
    n, m = bank.shape[0], bank.shape[0] + z.shape[0]
    candidates = torch.cat([bank, z])
    owner = torch.arange(b, device=z.device).repeat(views)  # the batch image of each view
    rows = torch.arange(z.shape[0], device=z.device)
    exclude = torch.zeros(z.shape[0], m, dtype=torch.bool, device=z.device)
    exclude[rows, n + rows] = True  # an anchor is never its own candidate
    positives = torch.zeros_like(exclude)
    positives[rows, index.to(z.device)[owner]] = True  # image i's bank entry
    positives[:, n:] = owner[:, None] == owner[None, :]  # i's other views
    ss = neighbourhood_nll(z, candidates, positives, tau, exclude)
    agg = z.new_zeros(())
    if k > 0:
        detached = z.detach()
        chosen = prototypical(detached, bank, k, fraction)
        near = neighbour_mask(nearest_entries(detached[chosen], bank, k), n)
        agg = neighbourhood_nll(z[chosen], bank, near, tau)
    return {"mse": mse, "ss": ss, "agg": agg, "z": z.detach().view(views, b, -1).mean(0)}


class SaladTrainer(Trainer):
    """A MONAI/Ignite trainer of one ``SaladModel`` over ``SaladBatches`` with a ``SaladSchedule``.

    Args:
        device: where it trains.
        model: network + memory bank (``build_model``).
        optimizer: Adam (the paper: lr 1e-4, betas (0.5, 0.999)).
        data: ``SaladBatches`` over D_n + D_u (the bank has one entry per image of it).
        schedule: pre-training and aggregation rounds.
        weight: lambda of the latent losses (0.25).
        tau: temperature (0.1).
        views: augmented views per image (positives of L_ss).
        seed: seed of the augmentations.
        handlers: MONAI/Ignite handlers (checkpoints: ``MemberCheckpoints(module='salad')``).

    ``engine.state.output``: {"loss", "mse", "ss", "agg", "round", "k"} as floats.
    """

    def __init__(
        self,
        device,
        model: SaladModel,
        optimizer: torch.optim.Optimizer,
        data: SaladBatches,
        schedule: SaladSchedule,
        weight: float = 0.25,
        tau: float = 0.1,
        views: int = 2,
        seed: int = 0,
        augment: XrayAugment | None = None,
        handlers=None,
    ):
        if views < 1:
            raise ValueError(f"salad_views must be >= 1, got {views}")
        if model.bank.entries.shape[0] != data.images.shape[0]:
            raise ValueError(
                f"the memory bank has {model.bank.entries.shape[0]} entries but the training pool "
                f"{data.images.shape[0]} images: one entry per training image"
            )
        device = torch.device(device)
        data.images = data.images.to(device)
        super().__init__(
            device=device,
            max_epochs=schedule.max_epochs,
            data_loader=data,
            epoch_length=len(data),
            handlers=None,
            amp=False,
            decollate=False,
        )
        self.model = model.to(device)
        self.members, self.optimizers, self.schedulers = nn.ModuleList([self.model]), [optimizer], []
        self.data, self.schedule = data, schedule
        self.weight, self.tau, self.views, self.seed = float(weight), float(tau), int(views), int(seed)
        self.augment = augment or XrayAugment()
        self.add_event_handler(Events.EPOCH_STARTED, lambda engine: data.set_epoch(engine.state.epoch))
        self.add_event_handler(Events.EPOCH_STARTED, self._log_phase)
        for handler in handlers or []:
            handler.attach(self)

    def _log_phase(self, engine) -> None:
        r, k, fraction = self.schedule.phase(engine.state.epoch)
        if engine.state.epoch == 1 or self.schedule.phase(engine.state.epoch - 1)[0] != r:
            logger.info(
                "salad epoch %d: %s",
                engine.state.epoch,
                "pre-training (L_mse + L_ss)"
                if r == 0
                else f"aggregation round {r}: k = {k}, B_ps = {fraction:.0%} of each batch",
            )

    def _iteration(self, engine, batchdata: dict) -> dict:
        r, k, fraction = self.schedule.phase(engine.state.epoch)
        images = batchdata["image"].to(engine.state.device)
        index = batchdata["index"].to(engine.state.device)
        self.model.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        generator = step_generator(self.seed, engine.state.epoch, engine.state.iteration)
        parts = salad_losses(self.model, images, index, self.views, self.augment, generator, self.tau, k, fraction)
        loss = parts["mse"] + self.weight * (parts["ss"] + parts["agg"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"salad: non-finite loss at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}; lower the learning rate (config key 'salad_lr')"
            )
        loss.backward()
        optimizer.step()
        self.model.bank.update(index, parts["z"])
        return {
            "loss": loss.item(),
            "mse": parts["mse"].item(),
            "ss": parts["ss"].item(),
            "agg": parts["agg"].item(),
            "round": r,
            "k": k,
        }
