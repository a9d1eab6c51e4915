"""What a group's channel mapping must satisfy: grouped-conv tying of its masks, and a consistent mapping."""

from __future__ import annotations

import torch

from compressor.graph.groups import Member
from compressor.graph.layers import _channels


def _tie(grouped: list[Member], size: int) -> Member | None:
    """The grouped-conv member constraining a group's masks (None: none, or constraints we cannot meet).

    One grouped conv per group (or several with the same channel mapping and side), covering all of its
    channels one root channel each.
    """
    if not grouped:
        return None
    first = grouped[0]
    same = all(m.side == first.side and m.idxs == first.idxs and m.root_idxs == first.root_idxs
               and m.module.groups == first.module.groups for m in grouped)  # fmt: skip
    channels = _channels(first.module, first.side)
    if not same or channels != size or len(first.idxs) != size or channels % first.module.groups:
        return None
    return first


def _legal_mask(tied: Member, mask: torch.Tensor) -> torch.Tensor:
    """Project ``mask`` (root channels) onto what the grouped conv ``tied`` allows, keeping its count."""
    groups = tied.module.groups
    size = len(mask)
    keep = int(mask.sum())
    if keep % groups:
        raise ValueError(f"{keep} kept channels cannot be split evenly over {groups} conv groups of {tied.name}")
    idxs = torch.tensor(tied.idxs)
    roots = torch.tensor(tied.root_idxs)
    layer = torch.zeros(size, dtype=torch.bool)
    layer[idxs] = mask.cpu()[roots]
    blocks = layer.view(groups, size // groups)
    per = keep // groups
    legal = torch.zeros_like(blocks)
    if tied.side == "in":  # the same positions in every conv group: the ones most groups kept
        votes = blocks.sum(0).float() - torch.arange(blocks.shape[1]) * 1e-6  # ties: lower index first
        legal[:, torch.argsort(votes, descending=True)[:per]] = True
    else:  # the same count in every conv group: the kept ones first, then by index
        for b in range(groups):
            order = torch.argsort((~blocks[b]).float() + torch.arange(blocks.shape[1]) * 1e-6)
            legal[b, order[:per]] = True
    out = torch.zeros_like(mask)
    out[roots] = legal.flatten()[idxs].to(mask.device)
    return out


def _consistent(m: Member, root_size: int) -> bool:
    """Unique, in-range layer channels, each covered root channel mapping to the same number of them.

    A member may cover part of the root's channels (a conv reading one chunk of a split output); the
    out-side members, which define the group's width, must cover all of them.
    """
    size = _channels(m.module, m.side)
    if len(set(m.idxs)) != len(m.idxs) or not m.idxs:
        return False
    if size is not None and (max(m.idxs) >= size or len(m.idxs) > size):
        return False
    counts = torch.bincount(torch.tensor(m.root_idxs, dtype=torch.long), minlength=root_size)
    covered = counts[counts > 0]
    if m.side == "out" and len(covered) != root_size:
        return False
    return bool((covered == covered[0]).all())
