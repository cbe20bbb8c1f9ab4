"""Scoring the labeled test set with the trained modules: the DDAD evaluator.

``DiscrepancyEvaluator`` is a MONAI ``Evaluator`` (an Ignite engine) whose iteration runs every
NDM and UDM member on a batch (B, C, H, W), forms the anomaly maps of ``scripts.scores``
(and, when ASR-Nets are given, R_intra and R_dual), and outputs, per batch::

    {"scores": {name: (B,)}, "maps": {name: (B, 1, H, W)}, "label": (B,), "mask": (B, 1, H, W) | None,
     "member_A_rec": (K, B), "filename": [str] * B}

Image-level AUC and AP are MONAI's ``ROCAUC`` and ``AveragePrecision`` handlers attached as
metrics named ``<score>/auc`` and ``<score>/ap``. Pixel-level AUROC (when every test image has a
mask) is computed by ``scripts.reports.ScoreReport`` with scikit-learn: MONAI's ROC metric loops
in Python and takes minutes on the ~10^6 pixels of a test set.

Example (config)::

    "evaluator": {"_target_": "scripts.evaluation.DiscrepancyEvaluator", "device": "@device",
                  "val_data_loader": "@test#loader", "ndm_members": "@ndm#members", ...,
                  "additional_metrics": "$scripts.evaluation.score_metrics(@score_names)"}
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from monai.engines import Evaluator
from monai.handlers import AveragePrecision, ROCAUC
from torch import nn

from .handlers import final_weights_path
from .refinement import REFINER_SCORES, refiner_input
from .scores import STAGE1_SCORES, discrepancy_maps, image_scores, member_rec_scores

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


def score_metrics(score_names: Sequence[str]) -> dict:
    """MONAI metric handlers for every score: image-level AUC and AP."""
    metrics = {}
    for name in score_names:
        metrics[f"{name}/auc"] = ROCAUC(output_transform=_pick_scores(name))
        metrics[f"{name}/ap"] = AveragePrecision(output_transform=_pick_scores(name))
    return metrics


class DiscrepancyEvaluator(Evaluator):
    """Runs the frozen NDM/UDM members (and ASR-Nets) over a test loader; see the module docstring.

    Args:
        device: where the networks run.
        val_data_loader: MONAI DataLoader yielding {"image", "label", optional "mask"}.
        ndm_members, udm_members: trained members (``udm_members`` empty when there is no D_u).
        heteroscedastic: AE-U outputs (mean, log-variance).
        refiners: optional selected ASR-Nets {"dual": net, "intra": net} giving R_dual and R_intra.
        map_scale: divisors of the maps before the ASR-Nets (fixed from training data, see
            ``scripts.refinement``).
    """

    def __init__(
        self,
        device,
        val_data_loader,
        ndm_members: Sequence[nn.Module],
        udm_members: Sequence[nn.Module] = (),
        heteroscedastic: bool = False,
        refiners: Optional[dict] = None,
        map_scale: Optional[dict] = None,
        additional_metrics: Optional[dict] = None,
        handlers=None,
        amp: bool = False,
    ):
        # MONAI attaches metrics only together with a key metric: the first one plays that role.
        metrics = dict(additional_metrics or {})
        key_name = next(iter(metrics), None)
        key_metric = {key_name: metrics.pop(key_name)} if key_name else None
        super().__init__(
            device=torch.device(device), val_data_loader=val_data_loader, key_val_metric=key_metric,
            additional_metrics=metrics, val_handlers=handlers, amp=amp, decollate=False,
        )
        self.ndm_members = list(ndm_members)
        self.udm_members = list(udm_members)
        self.heteroscedastic = heteroscedastic
        self.refiners = dict(refiners or {})
        if self.refiners and not map_scale:
            raise ValueError("refiners need the map_scale they were trained with (saved in asr_<name>.pt)")
        self.map_scale = map_scale or {}

    def networks(self) -> list[nn.Module]:
        return self.ndm_members + self.udm_members + list(self.refiners.values())

    def _stack(self, members: Sequence[nn.Module], x: torch.Tensor) -> Optional[torch.Tensor]:
        return torch.stack([m(x) for m in members]) if members else None

    def score_batch(self, x: torch.Tensor) -> dict:
        """Maps and image scores of a preprocessed batch (B, C, H, W)."""
        ndm = self._stack(self.ndm_members, x)
        maps = discrepancy_maps(x, ndm, self._stack(self.udm_members, x), self.heteroscedastic)
        for name in ("intra", "dual"):
            if name in self.refiners:
                logits = self.refiners[name](refiner_input(maps, name, self.map_scale))
                maps[REFINER_SCORES[name]] = torch.softmax(logits, dim=1)[:, 1:2]
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


def score_names(has_unlabeled: bool, refiners: dict) -> list[str]:
    """Scores the evaluation can report: A_inter needs a UDM, R_* need the selected refiners."""
    names = [n for n in STAGE1_SCORES if has_unlabeled or n != "A_inter"]
    return names + [REFINER_SCORES[r] for r in ("intra", "dual") if r in refiners]
