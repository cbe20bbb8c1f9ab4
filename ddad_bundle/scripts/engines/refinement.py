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

Synthesis (config key ``synthesis``): the paper's same-location foreign patch (``fpi``) or a
list of families of ``scripts.scoring.anomaly_families``, one drawn per altered image.

Model selection never looks at the test set: after every ``val_every`` epochs each refiner is
scored on a fixed validation set made from the held-out known normals: every held-out image
appears twice, as it is and altered by the ``synthesis_holdout`` family (a family not trained
on, so that the selection measures what generalises beyond the training recipe; the training
families when none is given). The epoch with the best ``selection_metric`` (ties: the later
epoch loses) is kept as ``asr_<name>.pt``; ``asr_selection.json`` records why, with the
diagnostics of ``scripts.scoring.refiner_diagnostics``: the patch response of every map before
training, the final training loss against the best constant prediction's, the held-out AUC with
its bootstrap interval and the probability that chance reaches it, the paired share and pixel
AUROC, and the rank correlation of the refined score with its input maps. A refiner is
``reliable`` only when it beats the constant prediction clearly and its held-out AUC passes
``RELIABLE_SELECTION_AUC``; ``deploy_score: auto`` deploys no other.

Example::

    >>> extractor = MapExtractor(ndm_members, udm_members)
    >>> trainer = RefinementTrainer("cpu", 100, {"dual": ASRNet(2), "intra": ASRNet(1)}, extractor,
    ...                             normal_images, seed=0)
    >>> trainer.run()
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from ignite.engine import Engine, Events
import numpy as np
from sklearn.metrics import roc_auc_score
from torch import nn

from ..scoring.anomaly_families import FamilySynthesizer, check_families
from ..scoring.refiner_diagnostics import (
    bootstrap_auc_interval,
    chance_probability,
    constant_prediction_loss,
    paired_share,
    patch_response,
    rank_correlations,
)
from .ensemble import BatchTrainer, MemberBatches, bf16_autocast, member_seeds
from ..runtime.checkpoints import load_checkpoint
from ..runtime.files import torch_save_atomic, write_json_atomic
from ..networks.fused import stack_members
from ..scoring.losses import asr_focal_loss
from ..networks.asr import ASRNet
from ..scoring.scores import REFINER_INPUTS, REFINER_SCORES, discrepancy_maps, refiner_input, spatial_mean
from ..scoring.synthesis import synthesize_batch

logger = logging.getLogger("ddad")

# Below this held-out AUC a refiner has not learned to tell its held-out normals from their
# synthetically altered copies, so its R score on real lesions is an extrapolation, not a
# learned detector. Measured: when the stage-1 maps do not respond to the synthetic patches
# (docs/README.md) the selection AUC stays at 0.50-0.59 and R_dual's test AUC ranged from 0.08
# to 0.96 between otherwise equal runs.
RELIABLE_SELECTION_AUC = 0.7
# ...and its final training loss must be clearly below the loss of the best constant prediction
# (a refiner at the constant's loss has learned a flat map, whatever its validation AUC says).
RELIABLE_LOSS_RATIO = 0.9
SELECTION_METRICS = ("auc", "paired_share", "pixel_auroc", "loss")
ASR_TARGETS = ("region", "image")


def as_target(labels: torch.Tensor, target: str) -> torch.Tensor:
    """The ASR-Net's training target from region masks (B, 1, H, W): the masks themselves
    (``region``) or, for ``image``, every pixel of an image that holds a region."""
    if target == "region":
        return labels
    return (labels.flatten(1).amax(1) > 0).to(labels.dtype).view(-1, 1, 1, 1).expand_as(labels).contiguous()


class MapExtractor(nn.Module):
    """Frozen stage-1 ensembles -> discrepancy maps (B, 1, H, W) of a batch (B, C, H, W).

    All NDM and UDM members run as one fused network (``scripts.networks.fused.stack_members``), one
    batched pass per stage-2 batch, as in evaluation and inference.
    """

    def __init__(
        self, ndm_members: Sequence[nn.Module], udm_members: Sequence[nn.Module] = (), heteroscedastic: bool = False
    ):
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


def make_validation_set(
    images: torch.Tensor, seed: int, families: Optional[Sequence[str]] = None, unlabeled: Optional[torch.Tensor] = None
):
    """Held-out normals, each twice: as it is, and with a synthetic anomaly fixed by the seed.

    Half of the samples are synthetic by construction, so the selection AUC compares every
    image with its own altered copy and does not depend on how many patches a draw happens
    to apply on a small validation set; the first N samples are the clean images, the next N
    their altered twins, in the same order. ``families``: the synthesis of the altered copies
    (None or ``["fpi"]``: the paper's patch, drawn as in earlier versions).
    """
    if images.shape[0] < 2:
        raise ValueError(f"the validation set holds {images.shape[0]} image(s); ASR-Net selection needs at least 2")
    if families is None or list(families) == ["fpi"]:
        generator = torch.Generator().manual_seed(int(seed) + 2999)
        synthesized, labels, _ = synthesize_batch(images, generator, prob=1.0)
    else:
        synthesized, labels, _ = FamilySynthesizer(families, unlabeled, prob=1.0, key="synthesis_holdout")(
            images, int(seed) + 2999
        )
    return torch.cat([images, synthesized]), torch.cat([torch.zeros_like(labels), labels])


class RefinementTrainer(BatchTrainer):
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
        synthesis: the synthetic-anomaly families trained on (config key ``synthesis``); ``["fpi"]``
            is the paper's recipe, drawn exactly as in earlier versions.
        unlabeled_images: D_u (N, C, H, W), the donors of ``fpi_unlabeled``.
        synthesis_prob: share of training samples that get a synthetic anomaly (paper: 0.5).
        target: what the ASR-Net learns to mark (config key ``asr_target``): ``region``, the
            synthetic region's pixels (the paper), or ``image``, every pixel of an altered image.
            The stage-1 networks compress the whole image through one latent code, so a local
            change moves A_intra and A_inter over the whole image rather than inside the region
            (docs/README.md, "Patch response"); ``image`` asks the refiner for what the maps show.
    """

    def __init__(
        self,
        device,
        max_epochs: int,
        refiners: Dict[str, nn.Module],
        extractor: MapExtractor,
        images: torch.Tensor,
        seed: int = 0,
        batch_size: int = 8,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-4,
        scales: Optional[Dict[str, float]] = None,
        handlers=None,
        amp: bool = False,
        betas: Sequence[float] = (0.5, 0.999),
        synthesis: Sequence[str] = ("fpi",),
        unlabeled_images: Optional[torch.Tensor] = None,
        synthesis_prob: float = 0.5,
        target: str = "region",
    ):
        if images.shape[0] < 2:
            raise ValueError(f"stage 2 needs at least 2 known-normal images, got {images.shape[0]}")
        if batch_size < 2:
            raise ValueError(f"asr_batch_size must be >= 2 (synthesis takes donors from the batch), got {batch_size}")
        # The known normals are shuffled like a one-member ensemble seeded with the ASR seed.
        self.seed = member_seeds(seed, "asr", 1)[0]
        batches = MemberBatches(images, [self.seed], batch_size, name="known normals (stage 2)")
        device = torch.device(device)
        super().__init__(device, max_epochs, batches, amp)
        self.batches = batches
        self.refiners = nn.ModuleDict(refiners).to(device)
        self.members = list(self.refiners.values())
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"asr_betas must be two numbers in [0, 1), got {list(betas)}")
        self.optimizers = [
            torch.optim.Adam(
                r.parameters(), lr=learning_rate, betas=tuple(float(b) for b in betas), weight_decay=weight_decay
            )
            for r in self.members
        ]
        self.extractor = extractor.to(device)
        self.loss = asr_focal_loss()
        self.scales = scales if scales is not None else map_scales(self.extractor, images.to(device))
        self.module = "asr"
        if target not in ASR_TARGETS:
            raise ValueError(f"config key 'asr_target' must be one of {', '.join(ASR_TARGETS)}, got {target!r}")
        self.target = target
        self.synthesis = check_families(synthesis)
        self.synthesis_prob = float(synthesis_prob)
        self.unlabeled_images = unlabeled_images
        self.families = (
            None
            if self.synthesis == ["fpi"]
            else FamilySynthesizer(self.synthesis, unlabeled_images, self.synthesis_prob)
        )
        self.epoch_losses: Dict[str, List[float]] = {name: [] for name in self.refiners}
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        for handler in handlers or []:
            handler.attach(self)

    def _start_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        self.batches.set_epoch(epoch)
        self._synthesis = torch.Generator().manual_seed(self.seed * 100_003 + 50_000 + epoch)
        self.epoch_losses = {name: [] for name in self.refiners}

    def synthesize(self, images: torch.Tensor, iteration: int):
        """(altered images, targets) of one training batch; seeded by the ASR seed, epoch and iteration."""
        if self.families is None:
            altered, labels, _ = synthesize_batch(images, self._synthesis, prob=self.synthesis_prob)
        else:
            altered, labels, _ = self.families(images, self.seed * 100_003 + 70_000 + iteration)
        return altered, as_target(labels, self.target)

    def label_sample(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Labels of one draw of the training synthesis on ``images`` from its own generator (the
        training stream is left untouched): what the best constant prediction is computed on."""
        if self.families is None:
            labels = synthesize_batch(images, torch.Generator().manual_seed(seed), prob=self.synthesis_prob)[1]
        else:
            labels = self.families(images, seed)[1]
        return as_target(labels, self.target)

    def _iteration(self, engine: Engine, batchdata) -> dict:
        images, labels = self.synthesize(batchdata["image"][0], engine.state.iteration)
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
            self.epoch_losses[name].append(losses[name])
        return {"loss": sum(losses.values()) / len(losses), **{f"loss_{k}": v for k, v in losses.items()}}


@torch.no_grad()
def refined_scores(
    refiner: nn.Module, maps: Dict[str, torch.Tensor], name: str, scales: Dict[str, float], batch_size: int = 64
) -> torch.Tensor:
    """Image scores (N,): mean anomaly probability of the refiner over each image."""
    refiner.eval()
    x = refiner_input(maps, name, scales)
    scores = [
        spatial_mean(torch.softmax(refiner(x[s : s + batch_size]), 1)[:, 1]) for s in range(0, len(x), batch_size)
    ]
    return torch.cat(scores)


class RefinerSelection:
    """Keeps each refiner's best epoch on held-out synthetic anomalies; writes asr_<name>.pt and
    asr_selection.json with the stage-2 diagnostics (see the module docstring).

    Args:
        ckpt_dir: the run's checkpoint folder.
        validation_images: held-out known normals (N, C, H, W), never test images.
        seed: fixes the validation anomalies and the diagnostic samples.
        val_every: epochs between validations.
        holdout: the synthesis family of the validation anomalies (config key
            ``synthesis_holdout``); None: the trainer's own ``synthesis``.
        metric: what selects the epoch (config key ``selection_metric``): ``auc`` (unpaired
            image-level AUC), ``paired_share`` (share of images whose altered copy scores above
            its clean copy), ``pixel_auroc`` (against the synthetic masks) or ``loss`` (validation
            focal loss, lower is better).
        unlabeled_images: D_u, the donors of ``fpi_unlabeled``.
        n_diagnostic: training normals in the fixed patch-response sample.
    """

    def __init__(
        self,
        ckpt_dir,
        validation_images: torch.Tensor,
        seed: int = 0,
        val_every: int = 1,
        holdout: Optional[Sequence[str] | str] = None,
        metric: str = "auc",
        unlabeled_images: Optional[torch.Tensor] = None,
        n_diagnostic: int = 64,
    ):
        if metric not in SELECTION_METRICS:
            raise ValueError(
                f"config key 'selection_metric' must be one of {', '.join(SELECTION_METRICS)}, got {metric!r}"
            )
        self.ckpt_dir = Path(ckpt_dir)
        self.validation_images = validation_images
        self.seed = int(seed)
        self.holdout = None if holdout in (None, [], "") else check_families(holdout, "synthesis_holdout")
        self.unlabeled = unlabeled_images
        self.metric = metric
        self.val_every = val_every
        self.n_diagnostic = int(n_diagnostic)
        self.best: Dict[str, dict] = {}
        self.history: Dict[str, list] = {}
        self.diagnostics: dict = {}
        self._maps: Optional[Dict[str, torch.Tensor]] = None

    def attach(self, engine: Engine) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.families = self.holdout or engine.synthesis
        self.images, self.labels = make_validation_set(self.validation_images, self.seed, self.families, self.unlabeled)
        self.image_labels = (self.labels.flatten(1).amax(1) > 0).long()
        engine.add_event_handler(Events.STARTED, self.load_previous)
        engine.add_event_handler(Events.STARTED, self.measure_patch_response)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.val_every), self.validate)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    # ------------------------------------------------------------------ before training
    def load_previous(self, engine: Engine) -> None:
        """Keep the earlier best epochs only when this run resumed (attach after MemberCheckpoints)."""
        path = self.ckpt_dir / "asr_selection.json"
        self.best, self.history = {}, {}
        resumed = engine.state.epoch
        if resumed > 0 and path.is_file():
            previous = json.loads(path.read_text())
            self.best = previous.get("refiners", {})
            self.history = previous.get("history", {})
        validated = {entry["epoch"] for entries in self.history.values() for entry in entries}
        if resumed > 0 and resumed % self.val_every == 0 and resumed not in validated:
            # The run stopped after saving this epoch's checkpoints and before validating them: the
            # restored weights are that epoch's, so validate them now, or the selection would never
            # see the epoch (its training loss is gone with the run and is recorded as NaN).
            logger.info("asr: validating epoch %d, saved but not validated before the run stopped", resumed)
            self.validate(engine)

    def measure_patch_response(self, engine: Engine) -> None:
        """How the frozen maps react to the training and held-out synthesis, before stage 2 learns."""
        device = engine.state.device
        generator = torch.Generator().manual_seed(self.seed + 3999)
        pool = engine.batches.images
        train = pool[torch.randperm(len(pool), generator=generator)[: self.n_diagnostic].to(pool.device)].cpu()
        clean_val = self.images[: len(self.images) // 2]
        response = {}
        for role, families in (("training", engine.synthesis), ("held_out", self.families)):
            synth = FamilySynthesizer(families, self.unlabeled, prob=1.0)
            altered, labels, _ = synth(train, self.seed + 4999)
            entry = {
                "families": list(families),
                "training_normals": patch_response(engine.extractor, train.to(device), altered.to(device), labels),
            }
            if role == "held_out":
                entry["held_out_normals"] = patch_response(
                    engine.extractor,
                    clean_val.to(device),
                    self.images[len(clean_val) :].to(device),
                    self.labels[len(clean_val) :],
                )
            response[role] = entry
        # The constant predictor faces the training label distribution (synthesis probability included).
        labels = engine.label_sample(train, self.seed + 5999)
        loss, probability = constant_prediction_loss(engine.loss, labels)
        self.diagnostics = {
            "patch_response": response,
            "constant_prediction": {
                "loss": loss,
                "anomaly_probability": probability,
                "positive_pixel_share": float(labels.mean()),
            },
        }
        for name in engine.refiners:
            silent = [
                m
                for m in REFINER_INPUTS[name]
                if not response["training"]["training_normals"].get(m, {}).get("responds", False)
            ]
            if silent:
                logger.warning(
                    "asr %s: its input map%s %s barely respond%s to the %s synthesis on the training "
                    "normals (paired share below %.2f): there is little for the ASR-Net to learn",
                    name,
                    "s" if len(silent) > 1 else "",
                    ", ".join(silent),
                    "" if len(silent) > 1 else "s",
                    "+".join(engine.synthesis),
                    0.65,
                )
        self._write_record()

    # ------------------------------------------------------------------ every val_every epochs
    def _measure(self, engine: Engine, name: str, refiner: nn.Module) -> tuple[dict, np.ndarray]:
        # One refiner pass gives the loss, the pixel probabilities and the image scores
        # (the same mean anomaly probability as refined_scores).
        with torch.no_grad():
            refiner.eval()
            x = refiner_input(self._maps, name, engine.scales)
            logits = torch.cat([refiner(x[s : s + 64]) for s in range(0, len(x), 64)]).float()
            loss = float(engine.loss(logits, as_target(self.labels, engine.target).to(logits.device)))
            probabilities = torch.softmax(logits, 1)[:, 1]
        scores = spatial_mean(probabilities).cpu().numpy()
        n = len(scores) // 2
        prob = probabilities[n:].flatten().cpu().numpy()
        mask = self.labels[n:].flatten().numpy() > 0.5
        measures = {
            "val_auc": float(roc_auc_score(self.image_labels.numpy(), scores)),
            "paired_share": paired_share(scores[:n], scores[n:]),
            "pixel_auroc": float(roc_auc_score(mask, prob)) if 0 < mask.sum() < mask.size else float("nan"),
            "val_loss": loss,
        }
        return measures, scores

    def _better(self, new: dict, old: Optional[dict]) -> bool:
        if old is None:
            return True
        if self.metric == "loss":
            return new["val_loss"] < old["val_loss"]
        key = "val_auc" if self.metric == "auc" else self.metric
        return new[key] > old[key]

    def validate(self, engine: Engine) -> None:
        if self._maps is None:  # stage 1 is frozen and the validation set fixed: compute the maps once
            self._maps = engine.extractor(self.images.to(engine.state.device))
        for name, refiner in engine.refiners.items():
            measures, scores = self._measure(engine, name, refiner)
            epoch = engine.state.epoch
            train_loss = engine.epoch_losses.get(name) or []
            measures["train_loss"] = float(np.mean(train_loss)) if train_loss else float("nan")
            self.history.setdefault(name, []).append({"epoch": epoch, **measures})
            engine.state.metrics[f"val_{REFINER_SCORES[name]}_auc"] = measures["val_auc"]
            if self._better(measures, self.best.get(name)):
                self.best[name] = {**measures, "epoch": epoch}
                self.best[name].update(self._at_best(name, scores))
                torch_save_atomic(
                    {"state_dict": refiner.state_dict(), "scales": engine.scales, "inputs": list(REFINER_INPUTS[name])},
                    self.ckpt_dir / f"asr_{name}.pt",
                )
            logger.info(
                "asr %s: epoch %d held-out AUC %.4f, paired %.3f, pixel AUROC %.3f, val loss %.5f "
                "(best by %s at epoch %d)",
                name,
                epoch,
                measures["val_auc"],
                measures["paired_share"],
                measures["pixel_auroc"],
                measures["val_loss"],
                self.metric,
                self.best[name]["epoch"],
            )
        self._write_record()

    def _at_best(self, name: str, scores: np.ndarray) -> dict:
        """What only the selected epoch needs: its AUC interval and rank correlation with the inputs."""
        inputs = {m: spatial_mean(self._maps[m]).cpu().numpy() for m in REFINER_INPUTS[name]}
        return {
            "val_auc_ci95": bootstrap_auc_interval(self.image_labels.numpy(), scores, n_boot=200, seed=self.seed),
            "rank_correlation_with_inputs": rank_correlations(scores, inputs),
        }

    # ------------------------------------------------------------------ after training
    def finish(self, engine: Engine) -> None:
        """Judge every refiner (``reliable``) and say plainly when one never learned."""
        constant = self.diagnostics.get("constant_prediction", {}).get("loss")
        n_neg = int((self.image_labels == 0).sum())
        n_pos = int(self.image_labels.sum())
        for name, entry in self.best.items():
            losses = engine.epoch_losses.get(name) or []
            final = float(np.mean(losses)) if losses else entry.get("train_loss", float("nan"))
            tries = len(self.history.get(name, [])) or 1
            entry["final_train_loss"] = final
            entry["constant_prediction_loss"] = constant
            entry["loss_ratio"] = final / constant if constant and math.isfinite(final) else float("nan")
            entry["chance_probability"] = chance_probability(entry["val_auc"], n_pos, n_neg, tries)
        self._write_record()
        for name, entry in self.best.items():
            if not entry["reliable"]:
                logger.warning(
                    "asr %s: not reliable (held-out AUC %.3f, needs %.2f; final training loss %.3g = %.2f x the best "
                    "constant prediction's, needs <= %.2f): %s has no learned signal and deploy_score auto will not "
                    "deploy it; see asr_selection.json",
                    name,
                    entry["val_auc"],
                    RELIABLE_SELECTION_AUC,
                    entry["final_train_loss"],
                    entry["loss_ratio"],
                    RELIABLE_LOSS_RATIO,
                    REFINER_SCORES[name],
                )

    def _write_record(self) -> None:
        for entry in self.best.values():
            ratio = entry.get("loss_ratio")
            beats_constant = ratio is not None and math.isfinite(ratio) and ratio <= RELIABLE_LOSS_RATIO
            entry["reliable"] = bool(entry["val_auc"] >= RELIABLE_SELECTION_AUC and beats_constant)
        record = {
            "selection": f"{self.metric} on held-out known normals, each clean and altered by "
            f"{'+'.join(self.families)} (seeded)",
            "selection_metric": self.metric,
            "validation_families": list(self.families),
            "validation_images": int(len(self.images)),
            "validation_with_anomaly": int(self.image_labels.sum()),
            "reliable_above_val_auc": RELIABLE_SELECTION_AUC,
            "reliable_below_loss_ratio": RELIABLE_LOSS_RATIO,
            "refiners": self.best,
            "diagnostics": self.diagnostics,
            "history": self.history,
        }
        write_json_atomic(record, self.ckpt_dir / "asr_selection.json")


def load_refiner(ckpt_dir, name: str, device="cpu", width: int = 128):
    """(ASR-Net in eval mode, map scales) of a selected refiner; a missing file names the fix."""
    path = Path(ckpt_dir) / f"asr_{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the 'training_asr' workflow with the same output_dir first"
        )
    saved = load_checkpoint(path, weights_only=False)
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
