"""Stage 2 of DDAD: training the Anomaly Score Refinement Net (ASR-Net) on frozen stage-1 maps.

Following DDAD-ASR (Cai et al., MedIA 2023, Sec. 3.3): known-normal images receive synthetic
patch anomalies (``scripts.scoring.synthesis``) on half of the samples; the frozen NDM and UDM ensembles
turn each image into discrepancy maps; the ASR-Net learns to segment the synthetic patch from
them with a focal loss (gamma = 2). Two refiners are trained side by side on the same batches:

- ``dual`` sees [A_inter, A_intra] and gives R_dual (needs a UDM, i.e. unlabeled images);
- ``intra`` sees [A_intra] and gives R_intra (needs only known normals).

Map scale: the raw maps' magnitudes depend on the data and on training, so each input map is
divided by a constant fixed before stage 2 starts, the mean of that map over the known-normal
training images (``map_scales``). The constants are stored with the selected weights and reused
by evaluation and inference.

Model selection never looks at the test set: after every ``val_every`` epochs each refiner is
scored on a fixed validation set made from the held-out known normals: every held-out image
appears twice, as it is and with a synthetic anomaly drawn once from the seed, so half of the
samples are synthetic. The epoch with the best image-level AUC (ties: the later epoch loses) is
kept as ``asr_<name>.pt`` with ``asr_selection.json`` recording why.

Example::

    >>> extractor = MapExtractor(ndm_members, udm_members)
    >>> trainer = RefinementTrainer("cpu", 100, {"dual": ASRNet(2), "intra": ASRNet(1)}, extractor,
    ...                             normal_images, seed=0)
    >>> trainer.run()
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from ignite.engine import Engine, Events
from monai.engines import Trainer
from sklearn.metrics import roc_auc_score
from torch import nn

from .ensemble import MemberBatches, bf16_autocast, member_seeds
from ..runtime.files import torch_save_atomic, write_json_atomic
from ..networks.fused import stack_members
from ..scoring.losses import asr_focal_loss
from ..networks.asr import ASRNet
from ..scoring.scores import discrepancy_maps
from ..scoring.synthesis import synthesize_batch

logger = logging.getLogger("ddad")

REFINER_INPUTS = {"dual": ("A_inter", "A_intra"), "intra": ("A_intra",)}
# Below this validation AUC a refiner has not learned to tell its held-out normals from their
# synthetically altered copies, so its R score on real lesions is an extrapolation, not a
# learned detector. Measured: when the stage-1 maps do not respond to the synthetic patches (short
# schedules, docs/README.md) the selection AUC stays at 0.50-0.56 and R_dual's test AUC ranged
# from 0.25 to 0.96 between otherwise equal runs.
RELIABLE_SELECTION_AUC = 0.6
REFINER_SCORES = {"dual": "R_dual", "intra": "R_intra"}


class MapExtractor(nn.Module):
    """Frozen stage-1 ensembles -> discrepancy maps (B, 1, H, W) of a batch (B, C, H, W).

    All NDM and UDM members run as one fused network (``scripts.networks.fused.stack_members``), one
    batched pass per stage-2 batch, as in evaluation and inference.
    """

    def __init__(self, ndm_members: Sequence[nn.Module], udm_members: Sequence[nn.Module] = (),
                 heteroscedastic: bool = False):
        super().__init__()
        self.ndm = nn.ModuleList(ndm_members)
        self.udm = nn.ModuleList(udm_members)
        self.members = stack_members(list(ndm_members) + list(udm_members))
        self.heteroscedastic = heteroscedastic
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # Stage-1 networks stay in eval mode (frozen BN statistics) whatever the caller asks.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self.members.member_outputs(x)  # (2K, B, C', H, W)
        k = len(self.ndm)
        udm = outputs[k:] if len(self.udm) else None
        return discrepancy_maps(x, outputs[:k], udm, self.heteroscedastic)


def refiner_names(has_unlabeled: bool) -> list[str]:
    """Refiners that can be trained: R_dual needs the UDM."""
    return ["dual", "intra"] if has_unlabeled else ["intra"]


def build_refiners(names: Sequence[str], seed: int, width: int = 128) -> Dict[str, nn.Module]:
    """One ASR-Net per refiner, initialized from the ASR seed (seed + 2000 + index)."""
    seeds = member_seeds(seed, "asr", len(names))
    refiners = {}
    for name, s in zip(names, seeds):
        torch.manual_seed(s)
        refiners[name] = ASRNet(len(REFINER_INPUTS[name]), width)
    return refiners


@torch.no_grad()
def map_scales(extractor: MapExtractor, images: torch.Tensor, batch_size: int = 256) -> Dict[str, float]:
    """Mean of every map over known-normal images: the constant each ASR input is divided by."""
    sums: Dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        for name, m in extractor(images[start : start + batch_size]).items():
            sums[name] = sums.get(name, 0.0) + float(m.double().sum())
    pixels = images.shape[0] * images.shape[2] * images.shape[3]
    return {name: max(total / pixels, 1e-12) for name, total in sums.items()}


def refiner_input(maps: Dict[str, torch.Tensor], name: str, scales: Dict[str, float]) -> torch.Tensor:
    return torch.cat([maps[k] / scales[k] for k in REFINER_INPUTS[name]], dim=1)


def make_validation_set(images: torch.Tensor, seed: int):
    """Held-out normals, each twice: as it is, and with a synthetic anomaly fixed by the seed.

    Half of the samples are synthetic by construction, so the selection AUC compares every
    image with its own altered copy and does not depend on how many patches a draw happens
    to apply on a small validation set.
    """
    if images.shape[0] < 2:
        raise ValueError(f"the validation set holds {images.shape[0]} image(s); ASR-Net selection needs at least 2")
    generator = torch.Generator().manual_seed(int(seed) + 2999)
    synthesized, labels, _ = synthesize_batch(images, generator, prob=1.0)
    return torch.cat([images, synthesized]), torch.cat([torch.zeros_like(labels), labels])


class RefinementTrainer(Trainer):
    """Ignite trainer of the ASR-Nets on synthetic anomalies over cached known normals.

    Args:
        device: where training runs.
        max_epochs: epochs (100 in the paper).
        refiners: {"dual": ASRNet(2), "intra": ASRNet(1)} (or only "intra").
        extractor: the frozen ``MapExtractor``.
        images: cached known-normal training images (N, C, H, W).
        seed: the run's seed; the shuffle and the synthesis generators derive from it.
        batch_size, learning_rate, weight_decay: the paper's 8, 1e-4, 1e-4.
        betas: Adam's betas; (0.5, 0.999) as in the reference implementation's refinement solver,
            the same as stage 1's.
        scales: map scales (computed from ``images`` when None).
        handlers: MONAI/Ignite handlers to attach.
        amp: bf16 autocast for the ASR-Net forward pass.
    """

    def __init__(self, device, max_epochs: int, refiners: Dict[str, nn.Module], extractor: MapExtractor,
                 images: torch.Tensor, seed: int = 0, batch_size: int = 8, learning_rate: float = 1e-4,
                 weight_decay: float = 1e-4, scales: Optional[Dict[str, float]] = None, handlers=None,
                 amp: bool = False, betas: Sequence[float] = (0.5, 0.999)):
        if images.shape[0] < 2:
            raise ValueError(f"stage 2 needs at least 2 known-normal images, got {images.shape[0]}")
        if batch_size < 2:
            raise ValueError(f"asr_batch_size must be >= 2 (synthesis takes donors from the batch), got {batch_size}")
        # The known normals are shuffled like a one-member ensemble seeded with the ASR seed.
        self.seed = member_seeds(seed, "asr", 1)[0]
        batches = MemberBatches(images, [self.seed], batch_size, name="known normals (stage 2)")
        device = torch.device(device)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=batches, epoch_length=len(batches),
                         handlers=None, amp=False, decollate=False)
        # bf16 autocast is applied by this class (self.bf16); MONAI's own amp flag would make
        # Trainer.run build an fp16 GradScaler, which bf16 does not need.
        self.bf16 = bool(amp)
        self.batches = batches
        self.refiners = nn.ModuleDict(refiners).to(device)
        self.members = list(self.refiners.values())
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"asr_betas must be two numbers in [0, 1), got {list(betas)}")
        self.optimizers = [torch.optim.Adam(r.parameters(), lr=learning_rate, betas=tuple(float(b) for b in betas),
                                            weight_decay=weight_decay) for r in self.members]
        self.extractor = extractor.to(device)
        self.loss = asr_focal_loss()
        self.scales = scales if scales is not None else map_scales(self.extractor, images.to(device))
        self.module = "asr"
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        for handler in handlers or []:
            handler.attach(self)

    def _start_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        self.batches.set_epoch(epoch)
        self._synthesis = torch.Generator().manual_seed(self.seed * 100_003 + 50_000 + epoch)

    def _iteration(self, engine: Engine, batchdata) -> dict:
        images, labels, _ = synthesize_batch(batchdata["image"][0], self._synthesis)
        images, labels = images.to(engine.state.device), labels.to(engine.state.device)
        maps = self.extractor(images)
        losses = {}
        for (name, refiner), optimizer in zip(self.refiners.items(), self.optimizers):
            refiner.train()
            optimizer.zero_grad(set_to_none=True)
            with bf16_autocast(self.bf16, engine.state.device):
                logits = refiner(refiner_input(maps, name, self.scales))
            loss = self.loss(logits.float(), labels)
            loss.backward()
            optimizer.step()
            losses[name] = loss.detach().item()
        return {"loss": sum(losses.values()) / len(losses), **{f"loss_{k}": v for k, v in losses.items()}}


@torch.no_grad()
def refined_scores(refiner: nn.Module, maps: Dict[str, torch.Tensor], name: str, scales: Dict[str, float],
                   batch_size: int = 64) -> torch.Tensor:
    """Image scores (N,): mean anomaly probability of the refiner over each image."""
    refiner.eval()
    x = refiner_input(maps, name, scales)
    scores = [torch.softmax(refiner(x[s : s + batch_size]), 1)[:, 1].flatten(1).mean(1) for s in range(0, len(x), batch_size)]
    return torch.cat(scores)


class RefinerSelection:
    """Keeps each refiner's best epoch by validation AUC; writes asr_<name>.pt and asr_selection.json.

    Args:
        ckpt_dir: the run's checkpoint folder.
        validation_images: held-out known normals (N, C, H, W), never test images.
        seed: fixes which validation images receive a synthetic anomaly.
        val_every: epochs between validations.
    """

    def __init__(self, ckpt_dir, validation_images: torch.Tensor, seed: int = 0, val_every: int = 1):
        self.ckpt_dir = Path(ckpt_dir)
        self.images, self.labels = make_validation_set(validation_images, seed)
        self.image_labels = (self.labels.flatten(1).amax(1) > 0).long()
        self.val_every = val_every
        self.best: Dict[str, dict] = {}
        self._maps: Optional[Dict[str, torch.Tensor]] = None

    def attach(self, engine: Engine) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.val_every), self.validate)
        engine.add_event_handler(Events.STARTED, self.load_previous)
        engine.add_event_handler(Events.COMPLETED, self.warn_if_unreliable)

    def load_previous(self, engine: Engine) -> None:
        """Keep the earlier best epochs only when this run resumed (attach after MemberCheckpoints)."""
        path = self.ckpt_dir / "asr_selection.json"
        self.best = {}
        if engine.state.epoch > 0 and path.is_file():
            self.best = json.loads(path.read_text()).get("refiners", {})

    def validate(self, engine: Engine) -> None:
        if self._maps is None:  # stage 1 is frozen and the validation set fixed: compute the maps once
            self._maps = engine.extractor(self.images.to(engine.state.device))
        maps = self._maps
        improved = False
        for name, refiner in engine.refiners.items():
            scores = refined_scores(refiner, maps, name, engine.scales).cpu().numpy()
            auc = float(roc_auc_score(self.image_labels.numpy(), scores))
            engine.state.metrics[f"val_{REFINER_SCORES[name]}_auc"] = auc
            if name not in self.best or auc > self.best[name]["val_auc"]:
                self.best[name] = {"val_auc": auc, "epoch": engine.state.epoch}
                torch_save_atomic({"state_dict": refiner.state_dict(), "scales": engine.scales,
                                   "inputs": list(REFINER_INPUTS[name])}, self.ckpt_dir / f"asr_{name}.pt")
                improved = True
            logger.info("asr %s: epoch %d validation AUC %.4f (best %.4f at epoch %d)", name, engine.state.epoch,
                        auc, self.best[name]["val_auc"], self.best[name]["epoch"])
        if improved or not (self.ckpt_dir / "asr_selection.json").exists():
            self._write_record()

    def _write_record(self) -> None:
        for entry in self.best.values():
            entry["reliable"] = bool(entry["val_auc"] >= RELIABLE_SELECTION_AUC)
        record = {"selection": "image-level AUC on held-out known normals with seeded synthetic anomalies",
                  "validation_images": int(len(self.images)), "validation_with_anomaly": int(self.image_labels.sum()),
                  "reliable_above_val_auc": RELIABLE_SELECTION_AUC, "refiners": self.best}
        write_json_atomic(record, self.ckpt_dir / "asr_selection.json")

    def warn_if_unreliable(self, engine: Engine) -> None:
        """At the end of training: say plainly when a refiner never learned the synthetic anomalies."""
        for name, entry in self.best.items():
            if entry["val_auc"] < RELIABLE_SELECTION_AUC:
                logger.warning(
                    "asr %s: best validation AUC %.3f < %.2f: the ASR-Net barely learned to find synthetic "
                    "anomalies in the stage-1 maps, so %s rests on a weak training signal; compare it with "
                    "A_inter/A_intra on labeled data before relying on it, or train stage 1 longer (config key "
                    "'epochs')", name, entry["val_auc"], RELIABLE_SELECTION_AUC, REFINER_SCORES[name])


def load_refiner(ckpt_dir, name: str, device="cpu", width: int = 128):
    """(ASR-Net in eval mode, map scales) of a selected refiner; a missing file names the fix."""
    path = Path(ckpt_dir) / f"asr_{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the 'training_asr' workflow with the same output_dir first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    net = ASRNet(len(saved["inputs"]), width)
    net.load_state_dict(saved["state_dict"])
    return net.to(device).eval(), saved["scales"]


def selected_refiners(ckpt_dir, device="cpu", width: int = 128) -> tuple[dict, dict]:
    """({name: ASR-Net}, map scales) of every refiner that stage 2 selected; empty before stage 2."""
    refiners, scales = {}, {}
    for name in ("dual", "intra"):
        if (Path(ckpt_dir) / f"asr_{name}.pt").is_file():
            refiners[name], scales = load_refiner(ckpt_dir, name, device, width)
    return refiners, scales
