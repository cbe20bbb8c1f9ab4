"""K reconstruction networks of one architecture run as one module (a fused ensemble).

DDAD's modules are ensembles of K small autoencoders that differ only in their initialization
and shuffle order (Cai et al., DDAD, MICCAI 2022 / MedIA 2023). Each one is too small to keep a
GPU busy, so running them one after another pays the per-kernel launch cost K times. Here the K
members become one network built from ordinary, TorchScript-scriptable modules:

- every convolution is a grouped ``Conv2d`` / ``ConvTranspose2d`` with ``groups=K`` over K x C
  channels (group k is member k);
- every BatchNorm normalizes K x C channels, i.e. each member's channels over its own batch;
- every fully connected layer is a batched matrix product over the K members (``GroupedLinear``);
- MemAE's memory is one (K, slots, L) tensor addressed per member.

Tensor layouts. Training feeds each member its own batch, stacked along channels: ``x``
(B, K*C, H, W), channel block k = member k's images. Inference feeds one batch to every member:
``x`` (B, C, H, W), repeated to (B, K*C, H, W) inside. ``forward`` returns (B, K*C', H, W)
(C' = C, or 2C for AE-U); ``member_outputs`` returns (K, B, C', H, W), the stacked layout of
``scripts.scoring.scores``.

Member weights stay the canonical form: ``FusedAE(members)`` copies K trained or freshly
initialized networks in, ``unfuse_state_dict`` / ``load_into_members`` give K ordinary state
dicts back (one checkpoint file per member), and ``split_optimizer_state`` /
``join_optimizer_states`` do the same for the state of an elementwise optimizer (Adam) over the
fused parameters, so one Adam over the fused parameters with loss = sum of member losses takes
exactly the per-member steps.

Example::

    >>> members = seeded_members(lambda: AE(1, 64, 16), [0, 1, 2])
    >>> fused = FusedAE(members)
    >>> fused.member_outputs(torch.zeros(8, 1, 64, 64)).shape
    torch.Size([3, 8, 1, 64, 64])
"""

from __future__ import annotations

import copy
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..scoring.losses import (
    HeteroscedasticObjective,
    MemAEObjective,
    MSEObjective,
    attention_entropies,
    heteroscedastic_terms,
)
from .backbones import AE, MemAE


class GroupedLinear(nn.Module):
    """K independent linear layers applied as one batched matrix product.

    Input (B, K*in_features), block k = member k's features; output (B, K*out_features).
    ``weight`` (K, out, in) and ``bias`` (K, out) stack the members' ``nn.Linear`` parameters.
    """

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.groups = len(linears)
        self.in_features = linears[0].in_features
        self.out_features = linears[0].out_features
        self.weight = nn.Parameter(torch.stack([lin.weight.detach() for lin in linears]).clone())
        self.bias = nn.Parameter(torch.stack([lin.bias.detach() for lin in linears]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        per_member = x.reshape(batch, self.groups, self.in_features).transpose(0, 1)  # (K, B, in)
        out = torch.baddbmm(self.bias.unsqueeze(1), per_member, self.weight.transpose(1, 2))  # (K, B, out)
        return out.transpose(0, 1).reshape(batch, self.groups * self.out_features)


def _grouped_conv(convs: Sequence[nn.Module]) -> nn.Module:
    """One grouped convolution holding the K members' convolutions (weights concatenated on dim 0)."""
    first = convs[0]
    groups = len(convs)
    kind = nn.ConvTranspose2d if isinstance(first, nn.ConvTranspose2d) else nn.Conv2d
    fused = kind(
        first.in_channels * groups,
        first.out_channels * groups,
        first.kernel_size,
        first.stride,
        first.padding,
        groups=groups,
        bias=first.bias is not None,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([c.weight for c in convs]))
        if first.bias is not None:
            fused.bias.copy_(torch.cat([c.bias for c in convs]))
    return fused


def _grouped_batchnorm(norms: Sequence[nn.Module]) -> nn.Module:
    first = norms[0]
    kind = type(first)
    fused = kind(first.num_features * len(norms), eps=first.eps, momentum=first.momentum)
    fused.load_state_dict(
        join_state_dicts(
            [n.state_dict() for n in norms],
            {k: "shared" if k.endswith("num_batches_tracked") else "cat" for k in first.state_dict()},
        )
    )
    return fused


def _fuse_layer(layers: Sequence[nn.Module]) -> nn.Module:
    """The fused counterpart of K corresponding layers of the members (recursing into containers)."""
    first = layers[0]
    if isinstance(first, (nn.Conv2d, nn.ConvTranspose2d)):
        return _grouped_conv(layers)
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _grouped_batchnorm(layers)
    if isinstance(first, nn.Linear):
        return GroupedLinear(layers)
    if isinstance(first, nn.ReLU):
        return nn.ReLU(inplace=first.inplace)
    if isinstance(first, nn.Sequential):
        return nn.Sequential(*[_fuse_layer([layer[i] for layer in layers]) for i in range(len(first))])
    raise TypeError(f"cannot fuse a layer of type {type(first).__name__}")


def fusable(members: Sequence[nn.Module]) -> Optional[str]:
    """None when the members can be fused, else the reason they cannot (for a log line)."""
    if len(members) < 1:
        return "no members"
    kinds = {type(m) for m in members}
    if len(kinds) != 1:
        return f"members of different types {sorted(k.__name__ for k in kinds)}"
    if not isinstance(members[0], AE):
        return f"{type(members[0]).__name__} is not one of the DDAD backbones (AE, MemAE, AE-U)"
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in members]
    if any(s != shapes[0] for s in shapes):
        return "members of different shapes"
    return None


class FusedAE(nn.Module):
    """K DDAD backbones (AE, MemAE or AE-U, all of one kind and shape) as one network.

    Args:
        members: the K networks; their weights and BatchNorm statistics are copied in.

    Attributes mirror ``scripts.networks.backbones.AE`` (``encoder``, ``encode_fc``, ``decode_fc``,
    ``decoder``, ``memory``), so a fused state-dict key names the same tensor as a member key.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        reason = fusable(members)
        if reason is not None:
            raise ValueError(f"cannot fuse these members: {reason}")
        first = members[0]
        self.num_members = len(members)
        self.in_channels = first.in_channels
        self.out_channels = first.out_channels
        self.bottleneck_channels = first.bottleneck_channels
        self.bottleneck_side = first.bottleneck_side
        self.latent_size = first.encode_fc[-1].out_features
        self.encoder = _fuse_layer([m.encoder for m in members])
        self.encode_fc = _fuse_layer([m.encode_fc for m in members])
        self.decode_fc = _fuse_layer([m.decode_fc for m in members])
        self.decoder = _fuse_layer([m.decoder for m in members])
        self.has_memory = isinstance(first, MemAE)
        memory: Optional[nn.Parameter] = None
        if self.has_memory:
            memory = nn.Parameter(torch.stack([m.memory.detach() for m in members]).clone())  # (K, slots, L)
        self.memory = memory
        self.train(first.training)

    def _grouped_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.in_channels * self.num_members:
            return x
        if x.shape[1] == self.in_channels:
            return x.repeat(1, self.num_members, 1, 1)  # one batch for every member (inference)
        raise ValueError(
            f"expected {self.in_channels} or {self.in_channels * self.num_members} channels, got {x.shape[1]}"
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes (K, B, L) of a grouped (B, K*C, H, W) or shared (B, C, H, W) batch."""
        h = self.encoder(self._grouped_input(x))
        z = self.encode_fc(h.reshape(h.shape[0], -1))  # channel blocks flatten member by member
        return z.reshape(z.shape[0], self.num_members, self.latent_size).transpose(0, 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Grouped outputs (B, K*C', H, W) of latent codes (K, B, L)."""
        batch = z.shape[1]
        h = self.decode_fc(z.transpose(0, 1).reshape(batch, self.num_members * self.latent_size))
        side = self.bottleneck_side
        return self.decoder(h.reshape(batch, self.num_members * self.bottleneck_channels, side, side))

    @torch.jit.export
    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Grouped outputs (B, K*C', H, W) and memory attention (K, B, slots); (K, B, 0) without memory."""
        z = self.encode(x)
        memory = self.memory
        if memory is None:
            return self.decode(z), z.new_zeros(z.shape[0], z.shape[1], 0)
        attention = torch.softmax(torch.bmm(z, memory.transpose(1, 2)), dim=2)
        return self.decode(torch.bmm(attention, memory)), attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]

    @torch.jit.export
    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output (K, B, C', H, W) for one shared batch (B, C, H, W)."""
        out = self.forward(x)
        return out.reshape(out.shape[0], self.num_members, self.out_channels, out.shape[2], out.shape[3]).transpose(
            0, 1
        )


# ---- member <-> fused state conversion -------------------------------------------------------


def state_layouts(fused: FusedAE) -> Dict[str, str]:
    """How each fused state-dict entry holds the K member tensors.

    'cat': concatenated on dim 0 (grouped convolutions, BatchNorm); 'stack': stacked on a new
    dim 0 (GroupedLinear, memory); 'shared': one value for all (BatchNorm's batch counter).
    """
    layouts = {}
    stacked = {
        f"{name}.{p}" if name else p
        for name, mod in fused.named_modules()
        if isinstance(mod, GroupedLinear)
        for p in ("weight", "bias")
    }
    for key in fused.state_dict():
        if key.endswith("num_batches_tracked"):
            layouts[key] = "shared"
        elif key in stacked or key == "memory":
            layouts[key] = "stack"
        else:
            layouts[key] = "cat"
    return layouts


def _split(tensor: torch.Tensor, layout: str, k: int) -> List[torch.Tensor]:
    if layout == "shared":
        return [tensor] * k
    if layout == "stack":
        return list(tensor.unbind(0))
    return list(tensor.chunk(k, 0))


def _join(tensors: Sequence[torch.Tensor], layout: str) -> torch.Tensor:
    if layout == "shared":
        return tensors[0]
    if layout == "stack":
        return torch.stack(list(tensors))
    return torch.cat(list(tensors))


def join_state_dicts(states: Sequence[Dict[str, torch.Tensor]], layouts: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """One fused state dict from K member state dicts."""
    return {key: _join([s[key] for s in states], layout) for key, layout in layouts.items()}


def unfuse_state_dict(fused: FusedAE) -> List[Dict[str, torch.Tensor]]:
    """K member state dicts (copies, so each saves as its own small file) from a fused network."""
    layouts = state_layouts(fused)
    states: List[Dict[str, torch.Tensor]] = [{} for _ in range(fused.num_members)]
    for key, tensor in fused.state_dict().items():
        for k, part in enumerate(_split(tensor.detach(), layouts[key], fused.num_members)):
            states[k][key] = part.clone()
    return states


def load_into_members(fused: FusedAE, members: Sequence[nn.Module]) -> None:
    """Copy the fused weights and BatchNorm statistics back into the K member networks."""
    for member, state in zip(members, unfuse_state_dict(fused)):
        member.load_state_dict(state)


def load_from_members(fused: FusedAE, members: Sequence[nn.Module]) -> None:
    """Copy K member networks' weights and BatchNorm statistics into the fused network."""
    fused.load_state_dict(join_state_dicts([m.state_dict() for m in members], state_layouts(fused)))


def _param_layouts(fused: FusedAE, member: nn.Module) -> List[str]:
    """Layouts of the fused parameters in optimizer order, checked against the member's order."""
    names = [n for n, _ in fused.named_parameters()]
    member_names = [n for n, _ in member.named_parameters()]
    if names != member_names:
        raise ValueError(f"fused parameters {names} do not line up with the member's {member_names}")
    layouts = state_layouts(fused)
    return [layouts[n] for n in names]


def split_optimizer_state(state: dict, fused: FusedAE, member: nn.Module) -> List[dict]:
    """K member optimizer state dicts from the state dict of an elementwise optimizer over ``fused``.

    Scalar entries (Adam's ``step``) are shared; tensors shaped like a parameter are split
    with that parameter's layout. Hyperparameters (lr, betas...) are copied to every member.
    """
    layouts = _param_layouts(fused, member)
    k = fused.num_members
    groups = [dict(g) for g in state["param_groups"]]
    members = [{"state": {}, "param_groups": copy.deepcopy(groups)} for _ in range(k)]
    for index, entries in state["state"].items():
        for name, value in entries.items():
            parts = _split(value, layouts[index], k) if torch.is_tensor(value) and value.dim() > 0 else [value] * k
            for m in range(k):
                members[m]["state"].setdefault(index, {})[name] = (
                    parts[m].clone() if torch.is_tensor(parts[m]) else parts[m]
                )
    return members


def join_optimizer_states(states: Sequence[dict], fused: FusedAE, member: nn.Module) -> dict:
    """The fused optimizer state dict from K member optimizer state dicts (inverse of the split)."""
    layouts = _param_layouts(fused, member)
    joined = {"state": {}, "param_groups": copy.deepcopy(states[0]["param_groups"])}
    for index in states[0]["state"]:
        entries = {}
        for name, value in states[0]["state"][index].items():
            if torch.is_tensor(value) and value.dim() > 0:
                entries[name] = _join([s["state"][index][name] for s in states], layouts[index])
            else:
                entries[name] = value
        joined["state"][index] = entries
    return joined


# ---- fused objectives ------------------------------------------------------------------------


class FusedObjective(nn.Module):
    """Per-member losses (K,) of a fused network on a grouped batch (B, K*C, H, W).

    The same three objectives as ``scripts.scoring.losses`` (built from its terms), each averaged
    over one member's batch, so summing them gives every member the gradient of its own loss.
    """

    def __init__(self, kind: str, entropy_weight: float = 0.0):
        super().__init__()
        if kind not in ("mse", "memae", "heteroscedastic"):
            raise ValueError(f"kind must be 'mse', 'memae' or 'heteroscedastic', got {kind!r}")
        self.kind = kind
        self.entropy_weight = float(entropy_weight)

    def forward(self, net: FusedAE, x: torch.Tensor) -> torch.Tensor:
        k = net.num_members
        output, attention = net.forward_with_attention(x)
        output = output.float()
        batch, channels = x.shape[0], x.shape[1] // k
        target = x.reshape(batch, k, channels, -1)
        out = output.reshape(batch, k, output.shape[1] // k, -1)
        if self.kind == "heteroscedastic":
            return heteroscedastic_terms(out, target, channel_dim=2).mean(dim=(0, 2, 3))
        losses = ((out - target) ** 2).mean(dim=(0, 2, 3))
        if self.kind == "memae":
            # attention (K, B, slots): each member's mean entropy over its batch
            losses = losses + self.entropy_weight * attention_entropies(attention.float()).mean(dim=1)
        return losses


def fused_objective(objective: nn.Module) -> Optional[FusedObjective]:
    """The fused form of a ``scripts.scoring.losses`` reconstruction objective, or None if it has none."""
    if isinstance(objective, MemAEObjective):
        return FusedObjective("memae", objective.entropy_weight)
    if isinstance(objective, HeteroscedasticObjective):
        return FusedObjective("heteroscedastic")
    if isinstance(objective, MSEObjective):
        return FusedObjective("mse")
    return None


def grouped_batch(images: torch.Tensor) -> torch.Tensor:
    """Per-member batches (K, B, C, H, W) as one grouped batch (B, K*C, H, W)."""
    k, b, c, h, w = images.shape
    return images.transpose(0, 1).reshape(b, k * c, h, w)


class LoopedMembers(nn.Module):
    """Members that cannot be fused, called one after another; the same interface as ``FusedAE``."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.num_members = len(members)

    @torch.jit.export
    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        outputs: List[torch.Tensor] = []
        for member in self.members:
            outputs.append(member(x))
        return torch.stack(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member_outputs(x)


def stack_members(members: Sequence[nn.Module]) -> nn.Module:
    """A ``FusedAE`` of the members for inference, or ``LoopedMembers`` (with a log line) if they do not fuse."""
    reason = fusable(members)
    if reason is None:
        return FusedAE(members)
    logging.getLogger("ddad").info("members run one after another: %s", reason)
    return LoopedMembers(members)
