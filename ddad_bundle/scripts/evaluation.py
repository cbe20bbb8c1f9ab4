"""Scoring the labeled test set with the trained modules: the DDAD evaluator.

``DiscrepancyEvaluator`` is a MONAI ``Evaluator`` (an Ignite engine) whose iteration runs every
NDM and UDM member on a batch (B, C, H, W), forms the anomaly maps of ``scripts.scores``
(and, when ASR-Nets are given, R_intra and R_dual), and outputs, per batch::

    {"scores": {name: (B,)}, "maps": {name: (B, 1, H, W)}, "label": (B,), "mask": (B, 1, H, W) | None,
     "member_A_rec": (K, B), "filename": [str] * B}

Image-level AUC and AP are MONAI's ``ROCAUC`` and ``AveragePrecision`` handlers attached as
metrics named ``<score>/auc`` and ``<score>/ap``; pixel-level AUROC (when every test image has a
mask) is ``ROCAUC`` over the flattened maps, ``<score>/pixel_auroc``.

Example (config)::

    "evaluator": {"_target_": "scripts.evaluation.DiscrepancyEvaluator", "device": "@device",
                  "val_data_loader": "@test#loader", "ndm_members": "@ndm#members", ...,
                  "additional_metrics": "$scripts.evaluation.score_metrics(@score_names, @pixel_metrics)"}
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from monai.engines import Evaluator
from monai.handlers import AveragePrecision, ROCAUC
from torch import nn

from .handlers import final_weights_path
from .scores import discrepancy_maps, image_scores, member_rec_scores

logger = logging.getLogger("ddad")


def load_members(factory: Callable[[], nn.Module], ckpt_dir, module: str, num_members: int, device="cpu"):
    """The trained members of ``module`` in eval mode; a missing file is named with the fix."""
    members = []
    for k in range(num_members):
        path = final_weights_path(ckpt_dir, module, k)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: the {module.upper()} member {k} has not finished training. Run the "
                f"'training' workflow with the same output_dir (and num_members={num_members}) first"
            )
        net = factory()
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except RuntimeError as error:
            raise RuntimeError(f"{path} does not fit the configured network (backbone, image_size, channels?): {error}")
        members.append(net.to(device).eval())
    return members


def test_datalist(entries: Sequence[dict]) -> list[dict]:
    """Test entries for MONAI: masks kept only when every image has one (pixel metrics need all)."""
    with_mask = sum("mask" in e for e in entries)
    if 0 < with_mask < len(entries):
        logger.warning("%d of %d test images have masks; pixel-level AUROC is skipped", with_mask, len(entries))
    keep = with_mask == len(entries)
    return [{k: v for k, v in e.items() if keep or k != "mask"} for e in entries]


def has_masks(entries: Sequence[dict]) -> bool:
    return len(entries) > 0 and all("mask" in e for e in entries)


def _pick_scores(name: str):
    return lambda output: (output["scores"][name], output["label"])


def _pick_pixels(name: str):
    return lambda output: (output["maps"][name].flatten(), output["mask"].flatten().round().long())


def score_metrics(score_names: Sequence[str], pixel_level: bool = False) -> dict:
    """MONAI metric handlers for every score: image AUC and AP, and pixel AUROC with masks."""
    metrics = {}
    for name in score_names:
        metrics[f"{name}/auc"] = ROCAUC(output_transform=_pick_scores(name))
        metrics[f"{name}/ap"] = AveragePrecision(output_transform=_pick_scores(name))
        if pixel_level:
            metrics[f"{name}/pixel_auroc"] = ROCAUC(output_transform=_pick_pixels(name))
    return metrics


def refined_map(asr_net: nn.Module, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """ASR-Net anomaly probability (B, 1, H, W) from stacked input maps."""
    logits = asr_net(torch.cat(list(maps), dim=1))
    return torch.softmax(logits, dim=1)[:, 1:2]


class DiscrepancyEvaluator(Evaluator):
    """Runs the frozen NDM/UDM members (and ASR-Nets) over a test loader; see the module docstring.

    Args:
        device: where the networks run.
        val_data_loader: MONAI DataLoader yielding {"image", "label", optional "mask"}.
        ndm_members, udm_members: trained members (``udm_members`` empty when there is no D_u).
        heteroscedastic: AE-U outputs (mean, log-variance).
        asr_dual, asr_intra: optional ASR-Nets giving R_dual and R_intra.
        map_scale: divisor applied to the maps before the ASR-Nets (fixed from training data).
    """

    def __init__(
        self,
        device,
        val_data_loader,
        ndm_members: Sequence[nn.Module],
        udm_members: Sequence[nn.Module] = (),
        heteroscedastic: bool = False,
        asr_dual: Optional[nn.Module] = None,
        asr_intra: Optional[nn.Module] = None,
        map_scale: Optional[dict] = None,
        additional_metrics: Optional[dict] = None,
        handlers=None,
        amp: bool = False,
    ):
        super().__init__(
            device=torch.device(device), val_data_loader=val_data_loader, additional_metrics=additional_metrics,
            val_handlers=handlers, amp=amp, decollate=False,
        )
        self.ndm_members = list(ndm_members)
        self.udm_members = list(udm_members)
        self.heteroscedastic = heteroscedastic
        self.asr_dual = asr_dual
        self.asr_intra = asr_intra
        self.map_scale = map_scale or {}

    def networks(self) -> list[nn.Module]:
        asr = [n for n in (self.asr_dual, self.asr_intra) if n is not None]
        return self.ndm_members + self.udm_members + asr

    def _stack(self, members: Sequence[nn.Module], x: torch.Tensor) -> Optional[torch.Tensor]:
        return torch.stack([m(x) for m in members]) if members else None

    def score_batch(self, x: torch.Tensor) -> dict:
        """Maps and image scores of a preprocessed batch (B, C, H, W)."""
        ndm = self._stack(self.ndm_members, x)
        maps = discrepancy_maps(x, ndm, self._stack(self.udm_members, x), self.heteroscedastic)
        scaled = {k: v / float(self.map_scale.get(k, 1.0)) for k, v in maps.items()}
        if self.asr_intra is not None:
            maps["R_intra"] = refined_map(self.asr_intra, [scaled["A_intra"]])
        if self.asr_dual is not None and "A_inter" in maps:
            maps["R_dual"] = refined_map(self.asr_dual, [scaled["A_inter"], scaled["A_intra"]])
        return {"maps": maps, "scores": image_scores(maps), "member_A_rec": member_rec_scores(x, ndm, self.heteroscedastic)}

    def _iteration(self, engine, batchdata: dict) -> dict:
        x = batchdata["image"].to(engine.state.device)
        with torch.no_grad(), engine.mode(*self.networks()):
            output = self.score_batch(torch.as_tensor(x))
        output["label"] = torch.as_tensor(batchdata["label"]).to(x.device)
        output["mask"] = batchdata["mask"].to(x.device) if "mask" in batchdata else None
        output["filename"] = list(batchdata["image"].meta.get("filename_or_obj", [])) if hasattr(
            batchdata["image"], "meta") else []
        return output
