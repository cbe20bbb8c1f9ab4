"""The trained SALAD model as one module: image batch in, image scores out.

``SaladPipeline(x)`` with a preprocessed batch (B, C, H, W) returns
``{"A_knn": (B,), "A_mse": (B,)}``: the paper's kNN score A(x) against the scoring bank
(``scripts.scoring.salad.KNNScore``) and the reconstruction error (mean squared error over the
pixels, the memory-AE baseline's score); ``maps(x)`` gives the squared-error map
(B, 1, H, W) behind A_mse. A_knn is an image-level score: SALAD yields no anomaly map for it.

The scoring bank (config keys ``salad_score_bank``, ``salad_bank_source``), fixed when training
ends (``finish_training``) and saved as ``models/salad_scoring_bank.pt``:

- ``normal`` (default): only the entries of the known normals D_n. The model trains on D_n + D_u
  and the pool is D_n first, so these are the bank's first |D_n| rows; the paper discards the
  anomalous patterns, which in this setting are the unknown D_u ones.
- ``all``: every entry.
- ``embeddings`` (default): the final network's embeddings of those images without augmentation;
  ``memory``: the trained memory bank's entries, as in the paper. The memory entries are running
  means of augmented views' embeddings taken while the network still moves; at the bundle's
  shortened schedules they lag the final network and scored far lower (docs/salad.md).

``DeployedSalad`` is what ``model.ts`` holds: input ``image`` (B, C, H, W), output ``pred``
(B, 1), the A_knn score. Threshold: ``save_threshold`` chooses it on the validation normals
(never the test set) at ``threshold_specificity`` and writes ``threshold.json`` in the run's
``models/`` folder, the same record DDAD writes.

Example::

    >>> pipeline = load_pipeline(network_def, "runs/x/models", n_normal=360)
    >>> pipeline(images)["A_knn"].shape
    torch.Size([B])
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from ..handlers.training import final_weights_path
from ..runtime.checkpoints import load_checkpoint
from ..runtime.files import torch_save_atomic, write_json_atomic
from .metrics import read_threshold, threshold_at_specificity
from .salad import KNNScore
from .scores import spatial_mean

logger = logging.getLogger("ddad")

SALAD_SCORES = ("A_knn", "A_mse")
PRIMARY_SCORE = "A_knn"
SCORE_BANKS = ("normal", "all")
BANK_SOURCES = ("memory", "embeddings")


class SaladPipeline(nn.Module):
    """Trained SALAD network + kNN score over the scoring bank; see the module docstring."""

    score_names = list(SALAD_SCORES)
    primary_score = PRIMARY_SCORE

    def __init__(self, net: nn.Module, entries: torch.Tensor, k: int = 100, mode: str = "angle"):
        super().__init__()
        self.net = net.eval()
        self.knn = KNNScore(entries, k, mode)

    def maps(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        recon, _ = self.net(x)
        return {"A_mse": (recon - x).pow(2).mean(dim=1, keepdim=True)}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        recon, z = self.net(x)
        # over channels and pixels at once: the same reduction as the image score of every map
        return {"A_knn": self.knn(z), "A_mse": spatial_mean((recon - x).pow(2))}


class DeployedSalad(nn.Module):
    """``model.ts``: image (B, C, H, W) -> ``pred``: the A_knn score (B, 1), image-level, no map;
    with ``score_name`` A_mse, the squared-error map (B, 1, H, W) whose mean is A_mse."""

    def __init__(self, pipeline: SaladPipeline, score_name: str = PRIMARY_SCORE):
        super().__init__()
        if score_name not in SALAD_SCORES:
            raise ValueError(f"deploy_score {score_name!r} is not a SALAD score (it has {', '.join(SALAD_SCORES)})")
        self.net = pipeline.net
        self.knn = pipeline.knn
        self.use_map: bool = score_name == "A_mse"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            image = image.as_subclass(torch.Tensor)  # a MetaTensor batch: the score needs none of its metadata
        if self.use_map:
            recon, _ = self.net(image)
            return (recon - image).pow(2).mean(dim=1, keepdim=True)
        return self.knn(self.net.embed(image))[:, None]


def deployment_threshold(record: dict, score: str | None = None) -> dict:
    """``threshold.json``'s record for the deployed SALAD score (``deploy_score``; None or ``auto``:
    A_knn), with ``score``, ``threshold`` and ``reason`` set to that score's."""
    table = dict(record.get("thresholds") or {record["score"]: record["threshold"]})
    chosen = PRIMARY_SCORE if score in (None, "auto") else str(score)
    if chosen not in table:
        raise ValueError(f"deploy_score {chosen!r}: SALAD's threshold.json holds {', '.join(sorted(table))}")
    reason = "SALAD's kNN score" if chosen == PRIMARY_SCORE else "requested explicitly (deploy_score)"
    return dict(record, score=chosen, threshold=float(table[chosen]), reason=reason)


def map_note(score_name: str) -> str | None:
    """What a scoring summary says about maps: A_knn is image-level (none), A_mse has a map."""
    if score_name == PRIMARY_SCORE:
        return "none: SALAD's kNN score is image-level (distance of the embedding to the normal memory bank)"
    return None


def load_model_state(ckpt_dir) -> dict:
    """The trained model's state dict (network ``net.*`` and ``bank.entries``), with the fix when missing."""
    path = final_weights_path(ckpt_dir, "salad", 0)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: SALAD has not finished training. Run the 'training' "
            "workflow with configs/salad_train.json and the same output_dir first"
        )
    return load_checkpoint(path)


@torch.no_grad()
def embed_all(net: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([net.embed(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])


def scoring_entries(
    state: dict,
    net: nn.Module,
    n_normal: int,
    score_bank: str = "normal",
    bank_source: str = "memory",
    pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scoring bank (M, D): D_n's rows or all, from the memory or re-embedded (see the docstring)."""
    if score_bank not in SCORE_BANKS:
        raise ValueError(f"salad_score_bank must be one of {SCORE_BANKS}, got {score_bank!r}")
    if bank_source not in BANK_SOURCES:
        raise ValueError(f"salad_bank_source must be one of {BANK_SOURCES}, got {bank_source!r}")
    entries = state["bank.entries"]
    if not 1 <= n_normal <= entries.shape[0]:
        raise ValueError(
            f"the trained memory bank has {entries.shape[0]} entries but the split lists {n_normal} "
            "normal images: evaluate with the split the model was trained on"
        )
    if bank_source == "embeddings":
        if pool is None or len(pool) != entries.shape[0]:
            raise ValueError(
                f"salad_bank_source 'embeddings' needs the {entries.shape[0]} training images "
                f"(got {None if pool is None else len(pool)})"
            )
        device = next(net.parameters()).device
        entries = embed_all(net, pool.to(device)).cpu()
    return entries[:n_normal] if score_bank == "normal" else entries


def scoring_bank_path(ckpt_dir) -> Path:
    return Path(ckpt_dir) / "salad_scoring_bank.pt"


def trained_network(network_def, ckpt_dir, state: dict | None = None, device="cpu") -> nn.Module:
    """The trained SALAD network of a run folder's ``models/``, in eval mode."""
    state = load_model_state(ckpt_dir) if state is None else state
    net = network_def()
    weights = {key[len("net.") :]: v for key, v in state.items() if key.startswith("net.")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise RuntimeError(
            f"{final_weights_path(ckpt_dir, 'salad', 0)} does not fit the configured SALAD network "
            f"(image_size, channels, salad_channels?): {error}"
        ) from error
    return net.to(device).eval()


def load_pipeline(network_def, ckpt_dir, k: int = 100, mode: str = "angle", device="cpu") -> SaladPipeline:
    """The trained ``SaladPipeline`` of a run folder: network and the scoring bank fixed at training end."""
    net = trained_network(network_def, ckpt_dir, device=device)
    path = scoring_bank_path(ckpt_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: SALAD's 'training' workflow writes it when training ends; "
            "run it (a finished run resumes and only rewrites the bank and threshold)"
        )
    bank = load_checkpoint(path)
    return SaladPipeline(net, bank["entries"].to(device), k, mode).to(device).eval()


def finish_training(
    network_def,
    ckpt_dir,
    n_normal: int,
    score_bank: str,
    bank_source: str,
    pool: torch.Tensor,
    validation_images: torch.Tensor,
    k: int = 100,
    mode: str = "angle",
    specificity: float = 0.95,
    device="cpu",
) -> Path:
    """After training: fix the scoring bank (``salad_scoring_bank.pt``) and the threshold (``threshold.json``)."""
    state = load_model_state(ckpt_dir)
    net = trained_network(network_def, ckpt_dir, state, device)
    entries = scoring_entries(state, net, int(n_normal), score_bank, bank_source, pool)
    # plain tensor: embeddings of cached images are MetaTensors, whose metadata torch.load(weights_only) refuses
    entries = entries.detach().cpu().as_subclass(torch.Tensor).contiguous()
    torch_save_atomic(
        {"entries": entries, "score_bank": score_bank, "bank_source": bank_source, "n_normal": int(n_normal)},
        scoring_bank_path(ckpt_dir),
    )
    pipeline = SaladPipeline(net, entries.to(device), k, mode).to(device).eval()
    return save_threshold(pipeline, validation_images, ckpt_dir, specificity, n_normal)


@torch.no_grad()
def image_scores(pipeline: SaladPipeline, images: torch.Tensor, batch_size: int = 64) -> Dict[str, torch.Tensor]:
    device = next(pipeline.parameters()).device
    parts = [pipeline(images[s : s + batch_size].to(device)) for s in range(0, len(images), batch_size)]
    return {name: torch.cat([p[name] for p in parts]).cpu() for name in parts[0]}


def save_threshold(
    pipeline: SaladPipeline,
    validation_images: torch.Tensor,
    ckpt_dir,
    specificity: float = 0.95,
    n_normal: int | None = None,
) -> Path:
    """Thresholds of every score on the validation normals; ``threshold.json`` as DDAD's (score A_knn)."""
    scores = image_scores(pipeline, validation_images)
    thresholds = {name: float(threshold_at_specificity(v.numpy(), specificity)) for name, v in scores.items()}
    record = {
        "method": "salad",
        "score": PRIMARY_SCORE,
        "threshold": thresholds[PRIMARY_SCORE],
        "thresholds": thresholds,
        "specificity": float(specificity),
        "n_validation": int(len(validation_images)),
        "k": pipeline.knn.k,
        "n_normal": int(n_normal if n_normal is not None else pipeline.knn.entries.shape[0]),
        "scoring_bank_entries": int(pipeline.knn.entries.shape[0]),
        "rule": "abnormal when score > threshold; at most (1 - specificity) of validation normals exceed it",
    }
    path = write_json_atomic(record, Path(ckpt_dir) / "threshold.json")
    logger.info("SALAD decision threshold %.6g (A_knn, specificity %.2f) -> %s", record["threshold"], specificity, path)
    return path


def load_threshold(ckpt_dir) -> dict:
    """SALAD's ``threshold.json`` (its training workflow writes it when training ends)."""
    return read_threshold(ckpt_dir, "training", method="salad")
