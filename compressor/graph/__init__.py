"""Channel groups, masks, soft masking and physical removal: the ONLY module that imports torch_pruning.

A :class:`ChannelGroup` is one DepGraph group: every layer whose channel index space is coupled to one
root layer's output channels. Masks are ``dict[group_id, BoolTensor]`` over the root channels
(True = keep). :meth:`PruningGraph.apply_masks` zeroes masked channels in place (soft masking);
:meth:`PruningGraph.materialize` removes them physically on a deep copy.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import importlib
import importlib.metadata
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping as tp_index_mapping

from compressor.errors import BadInput, one_line
from compressor.runtime.bounded import LimitExceeded, available_bytes, bounded

Masks = dict[int, torch.Tensor]

TP_VERSION = importlib.metadata.version("torch-pruning")
PRUNED_FORMAT = "compress.pruned/1"

# Families Torch-Pruning cannot handle (checked): refuse at once instead of running into the bound below.
UNSUPPORTED = {
    "swin": "Torch-Pruning's group search does not finish in reasonable time on Swin (window shifts/reshapes)",
    "maxvit": "Torch-Pruning's group search does not finish in reasonable time on MaxViT (window/grid reshapes)",
}
#: Graph building (tracing + group search) is stopped past this many seconds / this much memory growth.
GRAPH_SECONDS = float(os.environ.get("COMPRESS_GRAPH_TIMEOUT", "40"))
GRAPH_MEMORY_GB = os.environ.get("COMPRESS_GRAPH_MEMORY_GB")  # default: half the memory available at start

# Module types whose FLOPs Torch-Pruning's counter sees and that scale with their channel count only.
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.Upsample, nn.GELU)  # costed on their output
_PASSTHROUGH = (
    *_ACTIVATIONS,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)  # fmt: skip


@dataclass
class Member:
    """One coupled layer of a group: which module, which side, and which of its channels map to which root."""

    name: str
    module: nn.Module
    side: str  # "out" (its output channels / norm channels) or "in" (its input channels)
    idxs: list[int]
    root_idxs: list[int]


@dataclass
class ChannelGroup:
    """A set of coupled channels: removing root channel c removes it from every member at once."""

    id: int
    root_name: str
    size: int
    members: list[Member] = field(repr=False)
    tp_group: Any = field(repr=False)
    step: int = 1  # kept counts are multiples of this (--round-to, and attention heads where coupled)
    max_ratio: float = 1.0  # a per-group cap on the pruned fraction (--group-max-ratio)
    tied: Member | None = field(default=None, repr=False)  # a grouped conv whose conv groups constrain the mask

    @property
    def layer_names(self) -> list[str]:
        return sorted({m.name for m in self.members})


@dataclass
class Cost:
    """FLOPs / params of one counted module as a function of its kept in/out channel counts.

    ``value = io * k_in * k_out + o * k_out + i * k_in + const``; ``in_dim``/``out_dim`` index the graph's
    channel-dimension table (-1 = not coupled to any group: the count is fixed).
    """

    name: str
    in_dim: int
    out_dim: int
    flops: tuple[float, float, float, float]
    params: tuple[float, float, float, float]


@dataclass
class Dim:
    """The channel dimension of one module side: ``size`` channels, of which ``links`` map to group roots."""

    size: int
    links: list[tuple[int, list[int]]] = field(default_factory=list)  # (group id, root idx per coupled channel)


def check_logits(out: Any, label: str) -> torch.Tensor:
    """``out`` if it is what a classification model returns: one (N, classes) logits tensor; else BadInput."""
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.is_floating_point():
        return out
    if isinstance(out, torch.Tensor):
        got = f"a {str(out.dtype).removeprefix('torch.')} tensor of shape {tuple(out.shape)}"
    elif isinstance(out, dict):
        got = f"a dict (keys {', '.join(map(repr, list(out)[:4]))})"
    elif isinstance(out, (tuple, list)):
        got = f"a {type(out).__name__} of {len(out)}"
    else:
        got = f"a {type(out).__name__}"
    raise BadInput(
        f"model {label!r}: forward returns {got}; a classification model must return one float logits "
        "tensor of shape (N, classes) (wrap it to return only the logits)"
    )


def _classifiers(model: nn.Module, example: torch.Tensor, label: str = "") -> list[nn.Module]:
    """The layers producing the model output: the last conv/linear run whose width equals the output's.

    This is the first time the model runs: a forward that raises, or returns anything but one (N, classes)
    logits tensor (a dict, a tuple), is BadInput naming the model.
    """
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    label = label or type(model).__name__
    try:
        with torch.no_grad():
            out = model.eval()(example)  # eval: a probe must not move BN running statistics
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"model {label!r}: forward fails on an input of shape {tuple(example.shape)}: "
                       f"{one_line(exc, 200, typed=True)}") from None  # fmt: skip
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    width = check_logits(out, label).shape[1]
    for m in reversed(order):
        if (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == width:
            return [m]
    return [order[-1]] if order else []


def _is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


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
        ignore_stem: bool = False,
        group_max_ratio: dict[str, float] | None = None,
        round_to: int = 8,
        arch: str = "",
        seconds: float | None = None,
        memory_gb: float | None = None,
        outputs: list[nn.Module] | None = None,
    ) -> None:
        for key, why in UNSUPPORTED.items():
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
        label = arch or type(model).__name__
        seconds = GRAPH_SECONDS if seconds is None else seconds
        limit = _memory_limit(memory_gb)

        calls: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...], Any]] = []
        active = [False]  # True only inside a top-level forward on the example batch

        def enter(_mod: nn.Module, args: tuple) -> None:
            active[0] = bool(args) and isinstance(args[0], torch.Tensor) and args[0].shape == example.shape
            if active[0]:
                calls.clear()  # keep the last full forward: the one Torch-Pruning traced

        def leave(*_: Any) -> None:
            active[0] = False

        def record(mod: nn.Module, inputs: tuple, output: Any) -> None:
            output = output[0] if isinstance(output, tuple) and output else output  # attention: (out, weights)
            if active[0] and isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
                calls.append((mod, tuple(inputs[0].shape), tuple(output.shape), output.grad_fn))

        leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, nn.MultiheadAttention)]
        hooks = [m.register_forward_hook(record) for m in leaves]
        hooks += [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
        try:
            with bounded(seconds, limit):
                # Classifiers are excluded from groups below, not from tracing: a layer ignored while
                # tracing becomes anonymous ops whose reshape mapping corrupts the groups feeding it.
                self.DG = _build_dg(model, example)
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
        finally:
            for h in hooks:
                h.remove()
        for mod, why in self.ignored.items():  # ignored layers that no group reached (e.g. unused in forward)
            name = self.names.get(mod)
            if name is not None and name not in self._skipped_layers:
                self._note_skipped(name, why)
        self._build_costs(calls)

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
        with bounded(GRAPH_SECONDS, _memory_limit(None)):
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

    # ----------------------------------------------------------------------------------------- costs
    def _build_costs(self, calls: list[tuple[nn.Module, tuple, tuple, Any]]) -> None:
        """Per counted module call: how its FLOPs/params depend on kept channel counts (see budget.py)."""
        self.dims: list[Dim] = []
        index: dict[tuple[int, str], int] = {}  # (id(module or call), side) -> dim index

        def dim_of(key: Any, side: str, size: int) -> int:
            if (id(key), side) not in index:
                index[(id(key), side)] = len(self.dims)
                self.dims.append(Dim(size))
            return index[(id(key), side)]

        for g in self.groups:
            for m in g.members:
                size = _channels(m.module, m.side)
                if size is not None:
                    self.dims[dim_of(m.module, m.side, size)].links.append((g.id, m.root_idxs))
        # A pass-through call (ReLU, pool) takes the coupling of the op node Torch-Pruning traced for it.
        fn_links: dict[Any, list[tuple[int, list[int]]]] = {}
        for g in self.groups:
            for item in g.tp_group.items:
                fn = getattr(item.dep.target, "grad_fn", None)
                if fn is not None and self.DG.is_out_channel_pruning_fn(item.dep.handler):
                    fn_links.setdefault(fn, []).append((g.id, list(item.root_idxs)))

        self.costs: list[Cost] = []
        counted: set[int] = set()
        for mod, in_shape, out_shape, fn in calls:
            channels = _passthrough_channels(out_shape, fn_links.get(fn, [])) if isinstance(mod, _PASSTHROUGH) else 0
            cost = _module_cost(mod, in_shape, out_shape, channels)
            if cost is None:
                continue
            flops, params = cost
            if id(mod) in counted:  # a reused module's parameters count once
                params = (0.0, 0.0, 0.0, 0.0)
            counted.add(id(mod))
            in_d = index.get((id(mod), "in"), -1)
            out_d = index.get((id(mod), "out"), -1)
            if isinstance(mod, _PASSTHROUGH):
                out_d = dim_of(fn, "out", channels)
                if not self.dims[out_d].links:
                    self.dims[out_d].links.extend(fn_links.get(fn, []))
            if isinstance(mod, nn.MultiheadAttention):
                in_d = out_d  # one embed dim is both its input and its output width
            if in_d < 0 and (flops[0] or flops[2] or params[0] or params[2]):
                in_d = dim_of(mod, "in_fixed", _channels(mod, "in") or 0)
            if out_d < 0:
                out_d = dim_of(mod, "out_fixed", _channels(mod, "out") or out_shape[1])
            self.costs.append(Cost(self.names.get(mod, "?"), in_d, out_d, flops, params))


# --------------------------------------------------------------------------------------------- ignore rules
def resolve_ignore(model: nn.Module, patterns: list[str] | tuple[str, ...]) -> dict[nn.Module, str]:
    """Layers matched by ``--ignore`` patterns: a module name, a glob over names, or ``type:ClassName``.

    A matched container ignores every conv/linear/norm inside it. A pattern matching nothing is bad input.
    """
    named = list(model.named_modules())
    found: dict[nn.Module, str] = {}
    for raw in patterns:
        pat = str(raw).strip()
        if not pat:
            continue
        if pat.startswith("type:"):
            cls = pat[5:].removeprefix("nn.")
            hits = [(n, m) for n, m in named if type(m).__name__ == cls]
        else:
            hits = [(n, m) for n, m in named if n and fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise BadInput(f"--ignore {pat!r} matches no layer of the model (names as in `compress info`)")
        for _, mod in hits:
            for sub in mod.modules():
                found.setdefault(sub, f"ignored (--ignore {pat})")
    return found


def _check_overrides(model: nn.Module, overrides: dict[str, float]) -> dict[str, float]:
    names = [n for n, _ in model.named_modules() if n]
    checked: dict[str, float] = {}
    for pat, value in overrides.items():
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise BadInput(f"--group-max-ratio {pat}={value!r}: the ratio must be a number in [0, 1)") from None
        if not 0 <= ratio < 1:
            raise BadInput(f"--group-max-ratio {pat}={value}: the ratio must be in [0, 1)")
        if not any(fnmatch.fnmatchcase(n, str(pat)) for n in names):
            raise BadInput(f"--group-max-ratio {pat!r} matches no layer of the model")
        checked[str(pat)] = ratio
    return checked


def _matches(pattern: str, members: list[Member]) -> bool:
    return any(m.side == "out" and fnmatch.fnmatchcase(m.name, pattern) for m in members)


def _memory_limit(memory_gb: float | None) -> int | None:
    if memory_gb is None and GRAPH_MEMORY_GB:
        memory_gb = float(GRAPH_MEMORY_GB)
    if memory_gb is not None:
        return int(memory_gb * 2**30) if memory_gb > 0 else None
    avail = available_bytes()
    return max(2 * 2**30, avail // 2) if avail else None


# --------------------------------------------------------------------------------------------- opaque ops
def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class _OpaqueShuffle(torch.autograd.Function):
    """Channel shuffle as ONE autograd node while Torch-Pruning traces (it crashes mapping the reshapes).

    The node is an element-wise op to Torch-Pruning; every group it touches is left alone (its channels are
    permuted), while the groups inside the blocks (ShuffleNetV2's branch convs) stay prunable.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, groups: int) -> torch.Tensor:
        ctx.groups = groups
        return _shuffle(x, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _shuffle(grad, grad.shape[1] // ctx.groups), None  # the inverse permutation


#: (module, function) pairs implementing channel shuffle, swapped for the opaque node during tracing.
_SHUFFLE_SITES = (("torchvision.models.shufflenetv2", "channel_shuffle"), ("torch.nn.functional", "channel_shuffle"))


@contextlib.contextmanager
def _opaque_ops() -> Iterator[None]:
    saved = []
    for mod_name, attr in _SHUFFLE_SITES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        if hasattr(mod, attr):
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, lambda x, groups: _OpaqueShuffle.apply(x, int(groups)))
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


def _sync_static_attrs(model: nn.Module) -> None:
    """Update the width attributes a forward reads besides the weights (torchvision ViT's ``hidden_dim``)."""
    for mod in model.modules():
        proj = getattr(mod, "conv_proj", None)
        if isinstance(proj, nn.Conv2d) and hasattr(mod, "hidden_dim"):
            mod.hidden_dim = proj.out_channels


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


def _channels(mod: nn.Module, side: str) -> int | None:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels if side == "out" else mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features if side == "out" else mod.in_features
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return mod.num_features
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1:
        return int(mod.normalized_shape[0])
    if isinstance(mod, nn.MultiheadAttention):
        return mod.embed_dim
    return None


def _passthrough_channels(shape: tuple, links: list[tuple[int, list[int]]]) -> int:
    """The channel count of an activation/pool tensor: dim 1, or the (last) dim its group links cover."""
    n = sum(len(roots) for _, roots in links)
    if n and n != shape[1] and n in shape[2:]:
        return n
    return shape[1]


def _prod(shape: tuple) -> float:
    return float(math.prod(shape))


def _module_cost(mod: nn.Module, in_shape: tuple, out_shape: tuple, channels: int = 0) -> tuple[tuple, tuple] | None:
    """(flops, params) coefficients as (io, o, i, const), mirroring tp.utils.count_ops_and_params.

    ``channels`` is the channel count of a pass-through op's tensor (default: its dim 1).
    """
    batch = in_shape[0]
    bias = 1.0 if getattr(mod, "bias", None) is not None else 0.0
    if isinstance(mod, nn.Conv2d):
        area = _prod(out_shape[2:]) * batch
        kk = float(mod.kernel_size[0] * mod.kernel_size[1])
        if _is_depthwise(mod):
            per_k = kk * (mod.out_channels // mod.groups)
            return (0.0, (per_k + bias) * area, 0.0, 0.0), (0.0, per_k + bias, 0.0, 0.0)
        return (kk * area / mod.groups, bias * area, 0.0, 0.0), (kk / mod.groups, bias, 0.0, 0.0)
    if isinstance(mod, nn.Linear):
        rows = _prod(in_shape[:-1])
        return (rows, bias, 0.0, 0.0), (1.0, bias, 0.0, 0.0)
    if isinstance(mod, nn.MultiheadAttention):  # q = k = v (self-attention), E = embed dim, h heads
        n, length = (in_shape[0], in_shape[1]) if mod.batch_first else (in_shape[1], in_shape[0])
        b_in = 3.0 if mod.in_proj_bias is not None else 0.0
        b_out = 1.0 if mod.out_proj.bias is not None else 0.0
        io = 4.0 * length * n  # QW, KW, VW, out projection
        o = (length + b_in * length + 2.0 * length * length + length) * n
        return (io, o, 0.0, float(mod.num_heads * length * length * n)), (4.0, b_in + b_out, 0.0, 0.0)
    if isinstance(mod, nn.LayerNorm):
        c = _channels(mod, "out") or in_shape[-1]
        affine = bool(mod.elementwise_affine)
        n_params = float(sum(p.numel() for p in mod.parameters())) / c
        return (0.0, _prod(in_shape) / c * (2.0 if affine else 1.0), 0.0, 0.0), (0.0, n_params, 0.0, 0.0)
    if isinstance(mod, _NORMS):
        per_c = _prod(in_shape) / in_shape[1]
        affine = bool(getattr(mod, "affine", False))
        n_params = 2.0 if affine else 0.0
        return (0.0, per_c * (2.0 if affine else 1.0), 0.0, 0.0), (0.0, n_params, 0.0, 0.0)
    if isinstance(mod, _PASSTHROUGH):
        shape = out_shape if isinstance(mod, _ACTIVATIONS) else in_shape
        per_c = _prod(shape) / (channels or shape[1])
        n_params = float(sum(p.numel() for p in mod.parameters()))
        return (0.0, per_c, 0.0, 0.0), (0.0, 0.0, 0.0, n_params)
    return None


def _zero(mod: nn.Module, side: str, pos: list[int], zero_inputs: bool) -> None:
    idx = torch.tensor(pos, dtype=torch.long)
    if side == "out":
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.weight.index_fill_(0, idx.to(mod.weight.device), 0.0)
            if mod.bias is not None:
                mod.bias.index_fill_(0, idx.to(mod.bias.device), 0.0)
        elif isinstance(mod, _NORMS):
            for p in (getattr(mod, "weight", None), getattr(mod, "bias", None)):
                if p is not None:
                    p.index_fill_(0, idx.to(p.device), 0.0)
            if getattr(mod, "running_mean", None) is not None:
                mod.running_mean.index_fill_(0, idx.to(mod.running_mean.device), 0.0)
                mod.running_var.index_fill_(0, idx.to(mod.running_var.device), 1.0)
        elif isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
            _zero_attention(mod, idx, zero_inputs)
    elif (
        zero_inputs and isinstance(mod, (nn.Conv2d, nn.Linear)) and not (isinstance(mod, nn.Conv2d) and mod.groups > 1)
    ):
        mod.weight.index_fill_(1, idx.to(mod.weight.device), 0.0)


def _zero_attention(mod: nn.MultiheadAttention, idx: torch.Tensor, zero_inputs: bool) -> None:
    """Masked embed channels: q/k/v rows and the output projection's rows (and columns: its inputs)."""
    e = mod.embed_dim
    rows = torch.cat([idx, idx + e, idx + 2 * e]).to(mod.in_proj_weight.device)
    mod.in_proj_weight.index_fill_(0, rows, 0.0)
    if mod.in_proj_bias is not None:
        mod.in_proj_bias.index_fill_(0, rows, 0.0)
    out = mod.out_proj
    out.weight.index_fill_(0, idx.to(out.weight.device), 0.0)
    if out.bias is not None:
        out.bias.index_fill_(0, idx.to(out.bias.device), 0.0)
    if zero_inputs:
        mod.in_proj_weight.index_fill_(1, idx.to(mod.in_proj_weight.device), 0.0)
        out.weight.index_fill_(1, idx.to(out.weight.device), 0.0)


def _build_dg(model: nn.Module, example: torch.Tensor) -> Any:
    was_training = model.training
    try:
        with torch.enable_grad(), _opaque_ops():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        model.train(was_training)
    if _fix_chunk_sizes(dg):
        tp_index_mapping.update_index_mapping(dg)
    return dg


def _fix_chunk_sizes(dg: Any) -> bool:
    """Chunk sizes Torch-Pruning 1.6.1 misses on torch >= 2.x (``SplitBackward0`` saves ``_saved_split_size``).

    It then guesses each output's width from its consumer (a following concat's full width), and the concat
    mapping crashes (ShuffleNetV2). Outputs are put in chunk order (``output_nr``) with their true offsets.
    """
    fixed = False
    for node in dg.module2node.values():
        fn = node.grad_fn
        if node.type != tp_ops.OPTYPE.SPLIT or not hasattr(fn, "_saved_split_size") or fn._saved_dim != 1:
            continue
        size, total = int(fn._saved_split_size), int(fn._saved_self_sym_sizes[1])
        chunks = [min(size, total - i) for i in range(0, total, size)]
        order = []
        for out in node.outputs:
            nrs = [nr for f, nr in getattr(out.grad_fn, "next_functions", ()) if f is fn]
            order.append(nrs[0] if len(nrs) == 1 else -1)
        if -1 in order or sorted(order) != list(range(len(chunks))):
            continue  # a chunk unused or consumed twice: leave Torch-Pruning's reading
        node.outputs = [out for _, out in sorted(zip(order, node.outputs, strict=True), key=lambda t: t[0])]
        node.module.split_sizes = chunks
        node.module.offsets = [sum(chunks[:i]) for i in range(len(chunks) + 1)]
        fixed = True
    if fixed:  # concat widths were cached from the wrong chunk sizes: let the mapping pass recompute them
        for node in dg.module2node.values():
            if node.type == tp_ops.OPTYPE.CONCAT:
                node.module.concat_sizes = None
    return fixed


# --------------------------------------------------------------------------------------------- files
def pruned_payload(spec: dict[str, Any], input_shape: tuple[int, ...], history: list, model: nn.Module,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """What a pruned-model file holds: plain types only, so ``torch.load(weights_only=True)`` reads it."""
    return {
        "format": PRUNED_FORMAT,
        "spec": dict(spec),
        "input_shape": list(input_shape),
        "history": history,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "torch_pruning": TP_VERSION,
        **(extra or {}),
    }


def rebuild_pruned(payload: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    """Rebuild the dense architecture from its spec, replay the pruning history, then load the weights."""
    model = build(payload["spec"])
    example = torch.zeros(1, *payload["input_shape"])
    if payload["history"]:
        dg = _build_dg(model, example)
        dg.load_pruning_history(payload["history"])
        _sync_static_attrs(model)
    model.load_state_dict(payload["state_dict"])
    return model


def count_ops_and_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """Torch-Pruning's own counter (MACs, params) at batch 1: the reference budget.py must match."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        flops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    return float(flops), float(params)


def tp_importances() -> dict[str, Callable[[], Any]]:
    """Factories for the Torch-Pruning importances used by the baselines."""
    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }
