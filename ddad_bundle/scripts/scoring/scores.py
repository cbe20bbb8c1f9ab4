"""DDAD anomaly maps and image scores from the outputs of the NDM and UDM ensembles.

Inputs: the image x (B, C, H, W); ``ndm`` and ``udm``: stacked member outputs (K, B, C', H, W),
C' = C for AE/MemAE, 2C for AE-U (reconstruction then log-variance). Every map is returned as
(B, 1, H, W), averaged over image channels; the image score is the map's mean over pixels.

Per pixel (Cai et al., DDAD, Eqs. 1-4 and the AE-U variant):

- ``A_rec``: each NDM member's own squared error (x - x_k)**2, averaged over members, i.e. the
  single-network baseline averaged over the K networks;
- ``A_rec_ensemble``: (x - mu_NDM)**2 with mu_NDM the mean NDM reconstruction;
- ``A_intra``: standard deviation over the K NDM reconstructions (K - 1 divisor, as the
  reference code);
- ``A_inter``: |mu_UDM - mu_NDM|;
- with AE-U: A_rec is divided by sigma**2 (each member by its own exp(s_k), the ensemble by
  sigma**2 = mean_k exp(s_k) over NDM members), A_intra and A_inter by sigma.

Example::

    >>> maps = discrepancy_maps(x, ndm_outputs, udm_outputs, heteroscedastic=False)
    >>> image_scores(maps)["A_inter"].shape
    torch.Size([B])
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

# The ASR-Nets: which maps each refines (its input channels, in this order) and the score it gives.
REFINER_INPUTS = {"dual": ("A_inter", "A_intra"), "intra": ("A_intra",)}
REFINER_SCORES = {"dual": "R_dual", "intra": "R_intra"}
SCORE_REFINERS = {score: refiner for refiner, score in REFINER_SCORES.items()}


def stack_maps(maps: Dict[str, torch.Tensor], names: List[str], scales: Dict[str, float]) -> torch.Tensor:
    """The maps ``names``, each divided by its training scale, as channels (B, len(names), H, W).

    Scriptable: the deployed pipeline (TorchScript) builds its ASR-Net input with it."""
    return torch.cat([maps[name] / scales[name] for name in names], dim=1)


def refiner_input(maps: Dict[str, torch.Tensor], refiner: str, scales: Dict[str, float]) -> torch.Tensor:
    """The input of the ASR-Net ``refiner`` ("dual" or "intra"): the one definition that stage-2
    training, evaluation, inference, export and the Deploy app share."""
    return stack_maps(maps, list(REFINER_INPUTS[refiner]), scales)


STAGE1_SCORES = ("A_rec", "A_rec_ensemble", "A_intra", "A_inter")
STAGE2_SCORES = ("R_intra", "R_dual")
ALL_SCORES = STAGE1_SCORES + STAGE2_SCORES


def split_output(outputs: torch.Tensor, channels: int, heteroscedastic: bool):
    """(reconstructions, log-variances or None) from stacked member outputs (K, B, C', H, W)."""
    if heteroscedastic:
        return outputs[:, :, :channels], outputs[:, :, channels : 2 * channels]
    return outputs[:, :, :channels], None


def _channel_mean(m: torch.Tensor) -> torch.Tensor:
    return m.mean(dim=1, keepdim=True)


def member_std(recon: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Standard deviation over the members (dim 0, K - 1 divisor) given their mean.

    Written out because ``Tensor.std(dim=0)`` reduces over the small outermost dimension with a
    slow strided kernel on CPU: 47 ms for (3, 64, 1, 64, 64) against about 1 ms here, which made
    the maps cost as much as the six AEs at inference (docs/performance.md).
    """
    return ((recon - mean.unsqueeze(0)) ** 2).sum(dim=0).div(recon.shape[0] - 1).sqrt()


def discrepancy_maps(
    x: torch.Tensor, ndm: torch.Tensor, udm: Optional[torch.Tensor] = None, heteroscedastic: bool = False
) -> Dict[str, torch.Tensor]:
    """Pixel maps (B, 1, H, W) of A_rec, A_rec_ensemble, A_intra and, when ``udm`` is given, A_inter."""
    if ndm.dim() != 5:
        raise ValueError(f"ndm outputs must be stacked as (K, B, C, H, W), got {ndm.dim()} dimensions")
    if ndm.shape[0] < 2:
        raise ValueError("A_intra needs at least 2 NDM members (config key 'num_members')")
    channels = x.shape[1]
    recon, log_var = split_output(ndm, channels, heteroscedastic)
    mean_ndm = recon.mean(dim=0)
    member_error = (x.unsqueeze(0) - recon) ** 2
    ensemble_error = (x - mean_ndm) ** 2
    intra = member_std(recon, mean_ndm)
    variance = torch.ones_like(mean_ndm)  # sigma^2; stays 1 for AE and MemAE
    if log_var is not None:
        member_error = member_error / torch.exp(log_var)
        variance = torch.exp(log_var).mean(dim=0)
        ensemble_error = ensemble_error / variance
        intra = intra / torch.sqrt(variance)
    maps = {
        "A_rec": _channel_mean(member_error.mean(dim=0)),
        "A_rec_ensemble": _channel_mean(ensemble_error),
        "A_intra": _channel_mean(intra),
    }
    if udm is not None:
        udm_recon, _ = split_output(udm, channels, heteroscedastic)
        inter = (udm_recon.mean(dim=0) - mean_ndm).abs()
        if log_var is not None:
            inter = inter / torch.sqrt(variance)
        maps["A_inter"] = _channel_mean(inter)
    return maps


def member_rec_scores(x: torch.Tensor, ndm: torch.Tensor, heteroscedastic: bool = False) -> torch.Tensor:
    """Each NDM member's own image-level A_rec, (K, B): the single-network baseline per member."""
    recon, log_var = split_output(ndm, x.shape[1], heteroscedastic)
    error = (x.unsqueeze(0) - recon) ** 2
    if log_var is not None:
        error = error / torch.exp(log_var)
    return error.flatten(2).mean(dim=2)


def spatial_mean(pred: torch.Tensor) -> torch.Tensor:
    """The image score (B,) of a batch of maps (B, 1, H, W) or scores (B, 1): the mean over all but
    the batch axis. The one definition of the image score: evaluation, stage-2 selection, the
    inference postprocessing (``ImageScored``) and the Deploy app all reduce a map with it."""
    return pred.flatten(1).mean(dim=1)


def image_score(maps: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Image score (B,) of one map: its mean over pixels."""
    return spatial_mean(maps[name])


def image_scores(maps: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Image score (B,) of every map."""
    return {name: image_score(maps, name) for name in maps}
