"""The trained DDAD model as one module: image batch in, anomaly maps out.

``DDADPipeline`` holds the NDM and UDM members, the selected ASR-Nets and the map scales they
were trained with. ``forward(x)`` with a preprocessed batch (B, C, H, W) returns the maps
(B, 1, H, W) of every score the trained model supports (``A_rec``, ``A_rec_ensemble``,
``A_intra``, ``A_inter`` with a UDM, ``R_intra`` and ``R_dual`` after stage 2); image scores are
the maps' spatial means. Evaluation and inference both run this one module, so the numbers they
report come from the same code.

All 2K members (NDM, then UDM) run as one ``scripts.networks.fused.FusedAE``: one batched pass of grouped
convolutions and batched matrix products gives the (2K, B, C', H, W) stage-1 outputs, which the
maps and the ASR-Nets then consume, so a batch costs a handful of large kernels instead of 2K
networks' worth of small ones.

Example::

    >>> pipeline = DDADPipeline(ndm_members, udm_members, refiners, scales)
    >>> maps = pipeline(images)            # {"A_rec": (B,1,H,W), ..., "R_dual": (B,1,H,W)}
"""

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..networks.fused import stack_members
from .scores import (
    REFINER_INPUTS,
    REFINER_SCORES,
    SCORE_REFINERS,
    discrepancy_maps,
    member_rec_scores,
    refiner_input,
    stack_maps,
)


class DDADPipeline(nn.Module):
    """NDM/UDM ensembles + ASR-Nets; see the module docstring.

    Args:
        ndm_members: trained NDM networks (at least 2).
        udm_members: trained UDM networks (empty without unlabeled images).
        refiners: {"dual": ASRNet, "intra": ASRNet}, either or both, or empty before stage 2.
        map_scale: the refiners' input scales (``asr_<name>.pt``).
        heteroscedastic: AE-U outputs.
        channels_last: run the convolutions in the channels-last memory format (about 20% faster
            on CPU for the fused members and the 128-channel ASR-Net, docs/performance.md).
    """

    def __init__(
        self,
        ndm_members: Sequence[nn.Module],
        udm_members: Sequence[nn.Module] = (),
        refiners: Optional[dict] = None,
        map_scale: Optional[dict] = None,
        heteroscedastic: bool = False,
        channels_last: bool = True,
    ):
        super().__init__()
        refiners = dict(refiners or {})
        if refiners and not map_scale:
            raise ValueError("refiners need the map_scale they were trained with (saved in asr_<name>.pt)")
        if "dual" in refiners and not udm_members:
            raise ValueError("the 'dual' refiner needs UDM members (R_dual uses A_inter)")
        if len(ndm_members) < 2:
            raise ValueError("A_intra needs at least 2 NDM members (config key 'num_members')")
        self.num_ndm = len(ndm_members)
        self.num_udm = len(udm_members)
        # NDM and UDM members share one architecture: one fused network runs all of them.
        self.members = stack_members(list(ndm_members) + list(udm_members))
        self.refiners = nn.ModuleDict(refiners)
        self.map_scale = dict(map_scale or {})
        self.heteroscedastic = heteroscedastic
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)
        self.eval()

    @property
    def score_names(self) -> list[str]:
        names = ["A_rec", "A_rec_ensemble", "A_intra"] + (["A_inter"] if self.num_udm else [])
        return names + [REFINER_SCORES[r] for r in ("intra", "dual") if r in self.refiners]

    @property
    def primary_score(self) -> str:
        """The most refined score the model computes: R_dual, else R_intra, else A_inter, else A_intra.

        Not the deployment default: ``deploy_score: auto`` deploys a refined score only where stage 2
        marked its refiner reliable (``scripts.engines.inference.choose_deploy_score``)."""
        for name in ("R_dual", "R_intra", "A_inter", "A_intra"):
            if name in self.score_names:
                return name
        return "A_rec_ensemble"

    def stage1(self, x: torch.Tensor):
        """NDM outputs (K, B, C', H, W) and UDM outputs (or None) of a batch (B, C, H, W), in one pass."""
        outputs = self.members.member_outputs(x.contiguous(memory_format=self.memory_format))
        return outputs[: self.num_ndm], (outputs[self.num_ndm :] if self.num_udm else None)

    def maps_from(self, x: torch.Tensor, ndm: torch.Tensor, udm: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """All maps from the stage-1 outputs of ``x``; the ASR-Nets refine them."""
        maps = discrepancy_maps(x, ndm, udm, self.heteroscedastic)
        for name in ("intra", "dual"):
            if name in self.refiners:
                logits = self.refiners[name](
                    refiner_input(maps, name, self.map_scale).contiguous(memory_format=self.memory_format)
                )
                maps[REFINER_SCORES[name]] = torch.softmax(logits, dim=1)[:, 1:2]
        return maps

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.maps_from(x, *self.stage1(x))

    def maps_and_member_scores(self, x: torch.Tensor):
        """The maps and each NDM member's own image-level A_rec (K, B), from one stage-1 pass."""
        ndm, udm = self.stage1(x)
        return self.maps_from(x, ndm, udm), member_rec_scores(x, ndm, self.heteroscedastic)


class DeployedPipeline(nn.Module):
    """The trained model as one TorchScript-scriptable module: ``image`` (B, C, H, W) in,
    ``pred`` (B, 1, H, W) out, the map of the deployment score: ``score_name`` (config key
    ``deploy_score``, resolved by ``scripts.engines.inference.deployment_threshold``). All NDM and UDM members (fused), the discrepancy
    maps (``scripts.scoring.scores.discrepancy_maps``, scripted as they are) and the ASR-Net run inside.
    The image score is the spatial mean of ``pred``; the inference config computes it.
    """

    # declared on the class (as types: this module has no `from __future__ import annotations`):
    # TorchScript cannot infer the element types of an empty list or dict
    refiner_inputs: List[str]
    map_scale: Dict[str, float]

    def __init__(self, pipeline: DDADPipeline, score_name: Optional[str] = None):
        super().__init__()
        self.score_name: str = score_name or pipeline.primary_score
        if self.score_name not in pipeline.score_names:
            raise ValueError(
                f"deploy_score {self.score_name!r} is not a score of this model "
                f"(it has {', '.join(pipeline.score_names)})"
            )
        self.members = pipeline.members
        self.num_ndm: int = pipeline.num_ndm
        self.has_udm: bool = pipeline.num_udm > 0
        self.heteroscedastic: bool = bool(pipeline.heteroscedastic)
        refiner = SCORE_REFINERS.get(self.score_name)
        self.use_refiner: bool = refiner is not None
        self.refiner = pipeline.refiners[refiner] if refiner is not None else nn.Identity()
        # the ASR-Net's input, as scores.refiner_input builds it in training and evaluation
        self.refiner_inputs = list(REFINER_INPUTS[refiner]) if refiner is not None else []
        self.map_scale = {name: float(pipeline.map_scale[name]) for name in self.refiner_inputs}
        self.channels_last: bool = pipeline.memory_format == torch.channels_last
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            # a MetaTensor batch from the inference loader: its batch metadata would be sliced along
            # the member axis below; the maps need none of it (Invertd reads the input's own)
            image = image.as_subclass(torch.Tensor)
        x = image.contiguous(memory_format=torch.channels_last) if self.channels_last else image
        outputs = self.members.member_outputs(x)  # (2K, B, C', H, W): all members, one fused pass
        ndm = outputs[: self.num_ndm]
        udm: Optional[torch.Tensor] = outputs[self.num_ndm :] if self.has_udm else None
        maps = discrepancy_maps(image, ndm, udm, self.heteroscedastic)
        if not self.use_refiner:
            return maps[self.score_name]
        refiner_in = stack_maps(maps, self.refiner_inputs, self.map_scale)
        if self.channels_last:
            refiner_in = refiner_in.contiguous(memory_format=torch.channels_last)
        return torch.softmax(self.refiner(refiner_in), dim=1)[:, 1:2]
