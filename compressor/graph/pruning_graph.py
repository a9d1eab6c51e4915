"""The :class:`PruningGraph`: a model's DepGraph groups plus everything to mask, count and materialize them."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch_pruning import ops as tp_ops

from compressor.config import DEFAULT_PRUNE as _P
from compressor.errors import BadInput
from compressor.graph import limits
from compressor.graph.calls import Call, _record_calls
from compressor.graph.constraints import _consistent, _legal_mask, _tie
from compressor.graph.costs import _build_costs
from compressor.graph.groups import ChannelGroup, Masks, Member
from compressor.graph.layers import _is_grouped
from compressor.graph.limits import _memory_limit
from compressor.graph.opaque import _OpaqueShuffle
from compressor.graph.outputs import _classifiers
from compressor.graph.rules import _check_overrides, _matches, resolve_ignore
from compressor.graph.tp import _build_dg, _sync_static_attrs
from compressor.graph.zeroing import _zero
from compressor.runtime.bounded import LimitExceeded, bounded


class PruningGraph:
    """DepGraph groups of a model plus everything needed to mask, count and materialize them.

    Layers are left alone (never pruned) when they are the classifier, match ``ignore`` (names, globs or
    ``type:ClassName``), are the stem with ``ignore_stem``, or are coupled to such a layer, to an op Torch-Pruning
    cannot map (channel shuffle, grouped convolutions) or to too few channels; :meth:`left_alone` says which and
    why. Building is bounded by ``seconds`` and ``memory_gb`` (see :mod:`compressor.runtime.bounded`).
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        ignored_layers: list[nn.Module] | None = None,
        ignore: list[str] | tuple[str, ...] = (),
        ignore_stem: bool = _P.ignore_stem,
        group_max_ratio: dict[str, float] | None = None,
        round_to: int = _P.round_to,
        arch: str = "",
        seconds: float | None = None,
        memory_gb: float | None = None,
        outputs: list[nn.Module] | None = None,
    ) -> None:
        for key, why in limits.UNSUPPORTED.items():
            if key in arch.lower():
                raise BadInput(f"model {arch!r} cannot be pruned: {why}")
        self.model = model
        self.example = example
        self.round_to = max(1, int(round_to))
        self.names = {m: n for n, m in model.named_modules()}
        # the output layers (never pruned): given, or found by running the model once (a classification output)
        label = arch or type(model).__name__
        self.classifiers = list(outputs) if outputs is not None else _classifiers(model, example, label)
        self.ignored: dict[nn.Module, str] = {m: "ignored by the caller" for m in ignored_layers or []}
        self.ignored.update(resolve_ignore(model, ignore))
        self.ignored.update({m: "output layer" if outputs is not None else "classifier (output layer)"
                             for m in self.classifiers})  # fmt: skip
        self.overrides = _check_overrides(model, group_max_ratio or {})
        self.skipped: list[tuple[str, str]] = []
        self._skipped_layers: dict[str, str] = {}
        seconds = limits.GRAPH_SECONDS if seconds is None else seconds
        limit = _memory_limit(memory_gb)

        calls: list[Call] = []
        hooks = _record_calls(model, example, calls)
        try:
            self._build_groups(calls, ignore_stem, label, seconds, limit)
        finally:
            for h in hooks:
                h.remove()
        self._note_unreached()
        self.dims, self.costs = _build_costs(self.groups, self.DG, self.names, calls)

    def _build_groups(self, calls: list[Call], ignore_stem: bool, label: str, seconds: float,
                      limit: int | None) -> None:  # fmt: skip
        """Trace the model with Torch-Pruning (bounded) and keep the groups that can be pruned; failing is BadInput."""
        try:
            with bounded(seconds, limit):
                # Classifiers are excluded from groups below, not from tracing: a layer ignored while
                # tracing becomes anonymous ops whose reshape mapping corrupts the groups feeding it.
                self.DG = _build_dg(self.model, self.example)
                if ignore_stem:
                    stem = next((m for m, *_ in calls if isinstance(m, (nn.Conv2d, nn.Linear))), None)
                    if stem is not None:
                        self.ignored.setdefault(stem, "stem (--ignore-stem)")
                self.groups: list[ChannelGroup] = []
                for tp_group in self.DG.get_all_groups(ignored_layers=[], root_module_types=(nn.Conv2d, nn.Linear)):
                    self._add_group(tp_group)
        except LimitExceeded as exc:
            raise BadInput(
                f"model {label!r} cannot be pruned: building its channel groups {exc} and was stopped "
                "(Torch-Pruning cannot group this architecture; limits: COMPRESS_GRAPH_TIMEOUT/_MEMORY_GB)"
            ) from None
        except BadInput:
            raise
        except Exception as exc:  # Torch-Pruning raises many types on untraceable models
            raise BadInput(f"Torch-Pruning cannot trace {label}: {type(exc).__name__}: {exc}") from None

    def _note_unreached(self) -> None:
        """Note the ignored layers that no group reached (e.g. unused in forward)."""
        for mod, why in self.ignored.items():
            name = self.names.get(mod)
            if name is not None and name not in self._skipped_layers:
                self._note_skipped(name, why)

    # ----------------------------------------------------------------------------------------- groups
    def _note_skipped(self, root_name: str, why: str, members: list[Member] | None = None) -> None:
        self.skipped.append((root_name, why))
        self._skipped_layers.setdefault(root_name, why)
        for m in members or []:
            if m.side == "out" and m.name != root_name and isinstance(m.module, (nn.Conv2d, nn.Linear)):
                self._skipped_layers.setdefault(m.name, f"{why} (same channels as {root_name})")

    def _add_group(self, tp_group: Any) -> None:
        root = tp_group[0].dep.target.module
        root_name = self.names[root]
        members: list[Member] = []
        opaque = None
        for item in tp_group.items:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or mod not in self.names:
                fn = getattr(item.dep.target, "grad_fn", None)
                if fn is not None and _OpaqueShuffle.__name__ in getattr(fn, "name", lambda: "")():
                    opaque = "channel shuffle"
                elif item.dep.target.type == tp_ops.OPTYPE.SPLIT and opaque is None:
                    opaque = "split into chunks (kept channels would move between chunks)"
                continue  # op nodes (add, cat, relu grad_fns) carry no weights
            side = "out" if self.DG.is_out_channel_pruning_fn(item.dep.handler) else "in"
            members.append(Member(self.names[mod], mod, side, list(item.idxs), list(item.root_idxs)))
        size = len(tp_group[0].idxs)
        grouped = [m for m in members if _is_grouped(m.module)]
        tied, step = _tie(grouped, size), self._step(members)
        why = self._why_not(root_name, members, size, opaque, grouped, tied, step)
        if why is not None:
            self._note_skipped(root_name, why, members)
            return
        cap = min((v for pat, v in self.overrides.items() if _matches(pat, members)), default=1.0)
        if cap <= 0:
            self._note_skipped(root_name, "--group-max-ratio 0 for this group", members)
            return
        self.groups.append(ChannelGroup(len(self.groups), root_name, size, members, tp_group, step, cap, tied))

    def _step(self, members: list[Member]) -> int:
        """Kept counts are multiples of round_to, of the attention heads and of the conv groups they meet."""
        heads = [m.module.num_heads for m in members if isinstance(m.module, nn.MultiheadAttention)]
        groups = [m.module.groups for m in members if _is_grouped(m.module)]
        return math.lcm(self.round_to, *heads, *groups)

    def _why_not(self, root_name: str, members: list[Member], size: int, opaque: str | None,
                 grouped: list[Member], tied: Member | None, step: int) -> str | None:  # fmt: skip
        """Why a group must be left alone (None: it can be pruned)."""
        hit = next((m for m in members if m.side == "out" and m.module in self.ignored), None)
        if hit is not None:
            why = self.ignored[hit.module]
            return why if hit.name == root_name else f"coupled to {hit.name}: {why}"
        if opaque is not None:
            return f"coupled to a {opaque} (unsupported op: Torch-Pruning cannot map channels through it)"
        broken = next((m for m in members if not _consistent(m, size)), None)
        if broken is not None:
            return f"Torch-Pruning maps this group inconsistently at {broken.name} (concat)"
        if grouped and tied is None:
            g = grouped[0]
            return f"grouped convolution {g.name} (groups={g.module.groups}) coupled in a way we cannot keep aligned"
        if size <= step:
            return f"{size} channels: not more than --round-to {self.round_to}" + (
                f" (rounded to {step} for attention heads / conv groups)" if step != self.round_to else ""
            )
        return None

    def legalize(self, masks: Masks) -> Masks:
        """Masks a grouped convolution can take, with the same kept counts (so the same FLOPs).

        Through a grouped conv's input every conv group must keep the same positions; at its output every conv
        group must keep the same number of channels. Other groups' masks are returned as they are.
        """
        out = dict(masks)
        for g in self.groups:
            mask = masks.get(g.id)
            if g.tied is not None and mask is not None and not bool(mask.all()):
                out[g.id] = _legal_mask(g.tied, mask)
        return out

    def left_alone(self) -> list[tuple[str, str]]:
        """Every conv/linear layer whose output channels are never pruned, and why."""
        grouped = {m.name for g in self.groups for m in g.members if m.side == "out"}
        rows = []
        for name, mod in self.model.named_modules():
            if not isinstance(mod, (nn.Conv2d, nn.Linear)) or name in grouped:
                continue
            why = self._skipped_layers.get(name)
            if why is None:
                why = "not traced (unused in forward, or only reached through ops Torch-Pruning does not follow)"
            rows.append((name, why))
        return rows

    def full_masks(self) -> Masks:
        return {g.id: torch.ones(g.size, dtype=torch.bool) for g in self.groups}

    def allowed_keep(self, gid: int, max_ratio: float = 1.0) -> list[int]:
        """Kept-channel counts allowed for a group: multiples of its step (or all), never empty."""
        g = self.groups[gid]
        n, step = g.size, g.step
        floor = max(1, n - int(min(max_ratio, g.max_ratio) * n))
        counts = [k for k in range(step, n, step) if k >= floor]
        return counts + [n]

    # ----------------------------------------------------------------------------------------- masking
    @torch.no_grad()
    def apply_masks(self, masks: Masks, model: nn.Module | None = None, *, zero_inputs: bool = True) -> None:
        """Zero every coupled parameter of masked channels in place (filters, biases, norms, consumers)."""
        target = self.model if model is None else model
        mods = dict(target.named_modules()) if model is not None else None
        masks = self.legalize(masks)
        for g in self.groups:
            mask = masks.get(g.id)
            if mask is None or bool(mask.all()):
                continue
            dropped = ~mask.cpu()
            for m in g.members:
                mod = mods[m.name] if mods is not None else m.module
                pos = [i for i, r in zip(m.idxs, m.root_idxs, strict=True) if dropped[r]]
                if pos:
                    _zero(mod, m.side, pos, zero_inputs)

    def tp_importance(self, importance: Callable[[Any], torch.Tensor], gid: int) -> torch.Tensor:
        """Score a group's root channels with a Torch-Pruning importance (full-index group)."""
        scores = importance(self.groups[gid].tp_group)
        if scores is None:  # e.g. BN-scale importance on a group without BN
            return torch.zeros(self.groups[gid].size)
        return scores.detach().float().cpu()

    # ----------------------------------------------------------------------------------------- removal
    def materialize(self, masks: Masks, model: nn.Module | None = None) -> tuple[nn.Module, list]:
        """A physically smaller deep copy of ``model`` (default: the graph's) and its DepGraph history."""
        slim = copy.deepcopy(self.model if model is None else model).cpu()
        with bounded(limits.GRAPH_SECONDS, _memory_limit(None)):
            slim_dg = _build_dg(slim, self.example)
        mods = dict(slim.named_modules())
        masks = self.legalize(masks)
        for g in self.groups:
            mask = masks.get(g.id)
            if mask is None or bool(mask.all()):
                continue
            idxs = sorted({int(i) for i in torch.nonzero(~mask.cpu()).flatten().tolist()})
            root = mods[g.root_name]
            pruner = slim_dg.get_pruner_of_module(root)
            slim_dg.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
        _sync_static_attrs(slim)
        history = [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in slim_dg.pruning_history()]
        return slim, history
