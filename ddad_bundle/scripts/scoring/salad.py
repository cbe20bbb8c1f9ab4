"""SALAD's latent losses, memory bank and kNN anomaly score (Bozorgtabar et al., MICCAI 2020).

Notation: z (B, D) L2-normalised embeddings of a batch, m (N, D) the memory bank (one unit
vector per training image), tau the temperature.

- ``probabilities``: p_ij = exp(c_j . z_i / tau) / sum_k exp(c_k . z_i / tau) over candidates c
  (the bank, optionally followed by the batch's own embeddings), an anchor never its own candidate.
- ``neighbourhood_nll``: -mean_i log sum_{j in P_i} p_ij for a positive set P_i per anchor. With P_i
  the entries of image i's augmented views it is the sample-specific loss L_ss; with P_i the k
  bank entries nearest to z_i (``nearest_entries``) it is the aggregation loss L_agg. The paper
  writes both as sums over i; the bundle takes the mean so that lambda does not depend on the batch
  size.
- ``MemoryBank``: m_i <- normalize((1 - t) m_i + t z_i), entries initialised as random unit vectors.
  The paper's update is the convex combination; the renormalisation keeps the entries unit vectors
  so that m_j . z_i stays a cosine similarity (documented in docs/salad.md).
- ``KNNScore``: the paper's A(x) = (1/K) sum_{k<=K} w_k, w_k = arccos d(z, m_k) / sum_j arccos d(z, m_j),
  over the K bank entries nearest to z (d the cosine similarity), normalised to [0, 1]. Taken
  literally, with j over the same K neighbours, A is the constant 1/K, so the formula needs a
  reading; two are offered (``mode``, config key ``salad_score_mode``):

  - ``angle`` (default): the weights' numerators, normalised by the largest possible angle:
    A = (1/K) sum_k arccos d(z, m_k) / pi, the mean angular distance to the K nearest entries;
  - ``bank_ratio``: j over the whole scoring bank of N entries, scaled by N:
    A = mean angle to the K nearest / mean angle to all N entries.

  ``bank_ratio`` divides by a quantity that also grows for anomalies (far from everything) and
  measured lower on phantoms (docs/salad.md), hence the default. Scriptable: it is the deployed
  model's last step.

Example::

    >>> bank = MemoryBank(num_entries=360, dim=200, seed=0)
    >>> loss = neighbourhood_nll(z, bank.entries, positives, tau=0.1)
    >>> score = KNNScore(bank.entries[:300], k=100)(z)      # (B,) in [0, 1]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


SCORE_MODES = ("angle", "bank_ratio")


def _check_tau(tau: float) -> float:
    if not tau > 0:
        raise ValueError(f"tau (config key 'salad_tau') must be > 0, got {tau}")
    return float(tau)


def probabilities(
    anchors: torch.Tensor, candidates: torch.Tensor, tau: float, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """p (B, M): softmax over the M candidates of c_j . z_i / tau; ``exclude`` (B, M) bool masks
    candidates out (an anchor's own column when the batch is among the candidates)."""
    logits = anchors @ candidates.t() / _check_tau(tau)
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return logits.softmax(dim=1)


def neighbourhood_nll(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    tau: float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """-mean_i log sum_{j: positives[i, j]} p_ij; ``positives`` (B, M) bool, at least one per row."""
    if positives.shape != (anchors.shape[0], candidates.shape[0]):
        raise ValueError(
            f"positives must be (anchors, candidates) = {(anchors.shape[0], candidates.shape[0])}, "
            f"got {tuple(positives.shape)}"
        )
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every anchor needs at least one positive candidate")
    logits = anchors @ candidates.t() / _check_tau(tau)
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
        positives = positives & ~exclude
    # log sum_{P} p = logsumexp over positives - logsumexp over all candidates (stable in float32)
    positive_logits = logits.masked_fill(~positives, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(positive_logits, dim=1)).mean()


def nearest_entries(z: torch.Tensor, entries: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices of the k entries with the highest cosine similarity to each z (z and entries unit)."""
    if not 1 <= k <= entries.shape[0]:
        raise ValueError(
            f"k = {k} neighbours asked of a memory bank of {entries.shape[0]} entries "
            f"(config key 'salad_neighbours' / 'salad_k'): choose 1 <= k <= {entries.shape[0]}"
        )
    return (z @ entries.t()).topk(k, dim=1).indices


def neighbour_mask(indices: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """(B, M) bool with True at each row's ``indices`` (B, k)."""
    mask = torch.zeros(indices.shape[0], num_candidates, dtype=torch.bool, device=indices.device)
    return mask.scatter_(1, indices, True)


def prototypical(z: torch.Tensor, entries: torch.Tensor, k: int, fraction: float) -> torch.Tensor:
    """B_ps: indices of the ceil(fraction * B) batch samples with the tightest neighbourhoods, i.e. the
    highest mean cosine similarity to their k nearest bank entries (the bundle's reading of the paper's
    prototypical samples, docs/salad.md)."""
    if not 0 < fraction <= 1:
        raise ValueError(
            f"prototype fraction must lie in (0, 1], got {fraction} (config key 'salad_prototype_fractions')"
        )
    similarity = (z @ entries.t()).topk(k, dim=1).values.mean(dim=1)
    count = max(1, math.ceil(fraction * z.shape[0]))
    return similarity.topk(count).indices


class MemoryBank(nn.Module):
    """One unit vector per training image, ``entries`` (N, D), a buffer (saved in checkpoints).

    Args:
        num_entries: N, the training images.
        dim: D, the embedding size.
        momentum: t of m_i <- (1 - t) m_i + t z_i.
        seed: seed of the random unit initialisation.
    """

    def __init__(self, num_entries: int, dim: int = 200, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        if num_entries < 1:
            raise ValueError(f"a memory bank needs at least one entry, got {num_entries}")
        if not 0 < momentum <= 1:
            raise ValueError(
                f"memory momentum t (config key 'salad_memory_momentum') must lie in (0, 1], got {momentum}"
            )
        self.momentum = float(momentum)
        generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer(
            "entries", F.normalize(torch.randn(int(num_entries), int(dim), generator=generator), dim=1)
        )

    @torch.no_grad()
    def update(self, indices: torch.Tensor, z: torch.Tensor) -> None:
        """m_i <- normalize((1 - t) m_i + t z_i) for the batch's images ``indices`` (B,), z (B, D)."""
        blended = (1 - self.momentum) * self.entries[indices] + self.momentum * z.detach().to(self.entries.dtype)
        self.entries[indices] = F.normalize(blended, dim=1)


class KNNScore(nn.Module):
    """A(x) in [0, 1] from the K nearest of the bank's normal entries (see the module docstring).

    Args:
        entries: (N, D) unit vectors, the bank at scoring time (D_n's entries by default).
        k: K (100 in the paper); more than N is refused.
        mode: 'angle' or 'bank_ratio' (see the module docstring).
    """

    def __init__(self, entries: torch.Tensor, k: int = 100, mode: str = "angle"):
        super().__init__()
        if entries.dim() != 2 or entries.shape[0] < 1:
            raise ValueError(f"the scoring bank must be (N, D) with N >= 1, got shape {tuple(entries.shape)}")
        if not 1 <= int(k) <= entries.shape[0]:
            raise ValueError(
                f"K = {k} nearest entries asked of a scoring bank of {entries.shape[0]} entries "
                f"(config key 'salad_k'): choose K <= {entries.shape[0]}, or score against all "
                "entries ('salad_score_bank': 'all')"
            )
        if mode not in SCORE_MODES:
            raise ValueError(f"salad_score_mode must be one of {SCORE_MODES}, got {mode!r}")
        self.k = int(k)
        self.bank_ratio = mode == "bank_ratio"
        self.register_buffer("entries", F.normalize(entries.detach().float().as_subclass(torch.Tensor), dim=1).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cosine = (F.normalize(z.float(), dim=1) @ self.entries.t()).clamp(-1.0, 1.0)
        angles = torch.arccos(cosine)  # (B, N), nearest entries = smallest angles
        nearest = angles.topk(self.k, dim=1, largest=False).values.mean(dim=1)
        if self.bank_ratio:
            return nearest / angles.mean(dim=1).clamp_min(1e-12)
        return nearest / math.pi
