"""Whether stage 2 has anything to learn, and whether a refiner learned it.

An ASR-Net sees only the stage-1 maps. When a synthetic anomaly does not change them, the
focal loss is minimised by a constant prediction and the refiner's image score becomes a
constant plus noise, whose sign on real lesions is a coin toss. These measures say so before and
after training; ``scripts.engines.refinement`` writes them to ``asr_selection.json`` and
evaluation copies them into ``metrics.json``.

- ``patch_response``: per map (A_rec, A_intra, A_inter), the mean inside the synthetic region over
  the same pixels of the clean image, the share of images whose altered copy scores above its
  clean twin (``paired_share``) and the pixel AUROC of the map against the region;
- ``constant_prediction_loss``: the loss of the best constant prediction for the labels in use,
  found by a search over the constant with the training loss itself (not a formula);
- ``paired_share``, ``chance_probability``, ``bootstrap_auc_interval``: selection measures that
  do not reward chance (see ``RefinerSelection``);
- ``rank_correlations``: Spearman correlation of a refined image score with its input maps'.

Example::

    >>> loss, p = constant_prediction_loss(asr_focal_loss(), labels)   # labels (N, 1, H, W)
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import numpy as np
import torch
from scipy.stats import norm, spearmanr
from sklearn.metrics import roc_auc_score

from .scores import spatial_mean

RESPONSE_MAPS = ("A_rec", "A_intra", "A_inter")
# A map "responds" to a synthesis when the altered image scores above its clean twin clearly more
# often than a coin toss would: in at least this share of the sample.
RESPONSIVE_PAIRED_SHARE = 0.65


def paired_share(clean: np.ndarray, altered: np.ndarray) -> float:
    """Share of images whose altered copy scores above its own clean copy (ties count half)."""
    clean, altered = np.asarray(clean, dtype=np.float64), np.asarray(altered, dtype=np.float64)
    if clean.shape != altered.shape or clean.size == 0:
        raise ValueError(f"paired scores must have one equal, non-zero length, got {clean.shape} and {altered.shape}")
    return float(np.mean((altered > clean) + 0.5 * (altered == clean)))


def chance_probability(auc: float, n_positive: int, n_negative: int, n_tries: int = 1) -> float:
    """Probability that a score with no signal reaches ``auc`` (Mann-Whitney normal approximation),
    at least once in ``n_tries`` independent tries (the epochs a selection picks the best of)."""
    if n_positive < 1 or n_negative < 1:
        raise ValueError("chance_probability needs at least one positive and one negative sample")
    sd = math.sqrt((n_positive + n_negative + 1) / (12.0 * n_positive * n_negative))
    single = float(norm.sf((auc - 0.5) / sd))
    return float(1.0 - (1.0 - single) ** max(int(n_tries), 1))


def bootstrap_auc_interval(
    labels: np.ndarray, scores: np.ndarray, n_boot: int = 500, seed: int = 0, level: float = 0.95
) -> list[float]:
    """Stratified bootstrap interval of the AUC (resampling positives and negatives separately)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        p, n = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        values.append(roc_auc_score(np.r_[np.ones(p.size), np.zeros(n.size)], np.r_[p, n]))
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


@torch.no_grad()
def patch_response(
    extract: Callable[[torch.Tensor], Dict[str, torch.Tensor]],
    clean: torch.Tensor,
    altered: torch.Tensor,
    labels: torch.Tensor,
    maps: Sequence[str] = RESPONSE_MAPS,
    batch_size: int = 64,
) -> Dict[str, dict]:
    """How each stage-1 map reacts to the synthetic regions of ``altered`` (copies of ``clean``).

    Args:
        extract: images (B, C, H, W) -> {map name: (B, 1, H, W)} (the frozen ``MapExtractor``).
        clean, altered: (N, C, H, W) images; ``altered[i]`` is ``clean[i]`` with a synthetic region.
        labels: (N, 1, H, W) 0/1 masks of the regions (images with an empty mask are skipped).

    Returns ``{map: {"inside", "clean_same_pixels", "ratio", "paired_share", "pixel_auroc"}}``.
    """
    keep = labels.flatten(1).amax(1) > 0
    clean, altered, labels = clean[keep], altered[keep], labels[keep]
    if len(clean) == 0:
        raise ValueError("patch_response needs at least one image with a synthetic region")
    sums: Dict[str, Dict[str, list]] = {}
    for s in range(0, len(clean), batch_size):
        m_clean, m_alt = extract(clean[s : s + batch_size]), extract(altered[s : s + batch_size])
        mask = labels[s : s + batch_size].to(next(iter(m_alt.values())).device) > 0.5
        for name in maps:
            if name not in m_alt:
                continue
            acc = sums.setdefault(name, {"inside": [], "clean": [], "img_clean": [], "img_alt": [], "pix": []})
            acc["inside"].append(float(m_alt[name][mask].double().sum()))
            acc["clean"].append(float(m_clean[name][mask].double().sum()))
            acc["img_clean"].append(spatial_mean(m_clean[name]).cpu())
            acc["img_alt"].append(spatial_mean(m_alt[name]).cpu())
            acc["pix"].append((m_alt[name].float().cpu().numpy().ravel(), mask.cpu().numpy().ravel()))
    pixels = float(labels.sum())
    result = {}
    for name, acc in sums.items():
        inside, before = sum(acc["inside"]) / pixels, sum(acc["clean"]) / pixels
        values = np.concatenate([p[0] for p in acc["pix"]])
        truth = np.concatenate([p[1] for p in acc["pix"]])
        result[name] = {
            "inside": inside,
            "clean_same_pixels": before,
            "ratio": inside / before if before > 0 else float("inf"),
            "paired_share": paired_share(torch.cat(acc["img_clean"]).numpy(), torch.cat(acc["img_alt"]).numpy()),
            "pixel_auroc": float(roc_auc_score(truth, values)) if 0 < truth.sum() < truth.size else float("nan"),
        }
        result[name]["responds"] = bool(result[name]["paired_share"] >= RESPONSIVE_PAIRED_SHARE)
    return result


def constant_prediction_loss(loss_fn: Callable, labels: torch.Tensor) -> tuple[float, float]:
    """(loss, anomaly probability) of the best prediction that ignores its input, for ``labels``.

    Evaluates the training loss itself on a constant two-class logit over a golden-section search,
    so the number is right for whatever loss and label distribution stage 2 uses.
    """
    target = labels.float()

    def loss_at(logit: float) -> float:
        logits = torch.zeros((target.shape[0], 2) + tuple(target.shape[2:]), dtype=torch.float32)
        logits[:, 1] = logit
        return float(loss_fn(logits, target))

    low, high = -20.0, 20.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss_at(a), loss_at(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss_at(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss_at(b)
    best = (low + high) / 2
    return loss_at(best), float(1.0 / (1.0 + math.exp(-best)))


def rank_correlations(refined: np.ndarray, inputs: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Spearman correlation of a refined image score with each of its input maps' image scores."""
    out = {}
    for name, values in inputs.items():
        rho = spearmanr(refined, values).statistic
        out[name] = float(rho) if np.isfinite(rho) else 0.0
    return out
