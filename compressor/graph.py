"""Channel groups, masks, soft masking and physical removal: the ONLY module that imports torch_pruning.

A :class:`ChannelGroup` is one DepGraph group: every layer whose channel index space is coupled to one
root layer's output channels. Masks are ``dict[group_id, BoolTensor]`` over the root channels
(True = keep). :meth:`PruningGraph.apply_masks` zeroes masked channels in place (soft masking);
:meth:`PruningGraph.materialize` removes them physically on a deep copy.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compressor.errors import BadInput

Masks = dict[int, torch.Tensor]

TP_VERSION = importlib.metadata.version("torch-pruning")
PRUNED_FORMAT = "compress.pruned/1"

# Families Torch-Pruning cannot handle (checked): refuse clearly instead of crashing or hanging.
UNSUPPORTED = {
    "shufflenet": "channel shuffle breaks Torch-Pruning's dependency graph (ZeroDivisionError at build)",
    "swin": "Torch-Pruning's group search does not finish in reasonable time on Swin",
    "maxvit": "Torch-Pruning's group search does not finish in reasonable time on MaxViT",
}

# Module types whose FLOPs Torch-Pruning's counter sees and that scale with their channel count only.
_PASSTHROUGH = (
    nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Upsample,
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


def _classifiers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers producing the model output: the last conv/linear run whose width equals the output's."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example)  # eval: a probe must not move BN running statistics
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    out = out[0] if isinstance(out, (tuple, list)) else out
    width = out.shape[1] if out.dim() > 1 else out.shape[0]
    for m in reversed(order):
        if (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == width:
            return [m]
    return [order[-1]] if order else []


def _is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


class PruningGraph:
    """DepGraph groups of a model plus everything needed to mask, count and materialize them."""

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        ignored_layers: list[nn.Module] | None = None,
        round_to: int = 8,
        arch: str = "",
    ) -> None:
        for key, why in UNSUPPORTED.items():
            if key in arch.lower():
                raise BadInput(f"model {arch!r} cannot be pruned: {why}")
        self.model = model
        self.example = example
        self.round_to = max(1, int(round_to))
        self.classifiers = _classifiers(model, example)
        ignored = list(ignored_layers or []) + self.classifiers
        self.names = {m: n for n, m in model.named_modules()}
        self.skipped: list[tuple[str, str]] = [(self.names[m], "classifier (output layer)") for m in self.classifiers]

        calls: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...], Any]] = []

        active = [False]  # True only inside a top-level forward on the example batch

        def enter(_mod: nn.Module, args: tuple) -> None:
            active[0] = bool(args) and isinstance(args[0], torch.Tensor) and args[0].shape == example.shape
            if active[0]:
                calls.clear()  # keep the last full forward: the one Torch-Pruning traced

        def leave(*_: Any) -> None:
            active[0] = False

        def record(mod: nn.Module, inputs: tuple, output: Any) -> None:
            if active[0] and isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
                calls.append((mod, tuple(inputs[0].shape), tuple(output.shape), output.grad_fn))

        hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
        hooks += [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
        was_training = model.training
        try:
            with torch.enable_grad():
                # Classifiers are excluded from groups below, not from tracing: a layer ignored while
                # tracing becomes anonymous ops whose reshape mapping corrupts the groups feeding it.
                self.DG = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        except BadInput:
            raise
        except Exception as exc:  # Torch-Pruning raises many types on untraceable models
            raise BadInput(
                f"Torch-Pruning cannot trace {arch or type(model).__name__}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        self.groups: list[ChannelGroup] = []
        for tp_group in self.DG.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            self._add_group(tp_group)
        self._build_costs(calls)

    # ----------------------------------------------------------------------------------------- groups
    def _add_group(self, tp_group: Any) -> None:
        root = tp_group[0].dep.target.module
        root_name = self.names[root]
        members: list[Member] = []
        for item in tp_group.items:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or mod not in self.names:
                continue  # op nodes (add, cat, relu grad_fns) carry no weights
            side = "out" if self.DG.is_out_channel_pruning_fn(item.dep.handler) else "in"
            members.append(Member(self.names[mod], mod, side, list(item.idxs), list(item.root_idxs)))
        size = len(tp_group[0].idxs)
        broken = next((m for m in members if not _consistent(m, size)), None)
        if broken is not None:
            self.skipped.append((root_name, f"Torch-Pruning maps this group inconsistently at {broken.name} (concat)"))
            return
        grouped = [m for m in members if _is_grouped(m.module)]
        if grouped:
            g = grouped[0].module
            self.skipped.append((root_name, f"grouped convolution {grouped[0].name} (groups={g.groups})"))
            return
        if size <= self.round_to:
            self.skipped.append((root_name, f"{size} channels: not more than --round-to {self.round_to}"))
            return
        self.groups.append(ChannelGroup(len(self.groups), root_name, size, members, tp_group))

    def full_masks(self) -> Masks:
        return {g.id: torch.ones(g.size, dtype=torch.bool) for g in self.groups}

    def allowed_keep(self, gid: int, max_ratio: float = 1.0) -> list[int]:
        """Kept-channel counts allowed for a group: multiples of round_to (or all), never empty."""
        n = self.groups[gid].size
        floor = max(1, n - int(max_ratio * n))
        counts = [k for k in range(self.round_to, n, self.round_to) if k >= floor]
        return counts + [n]

    # ----------------------------------------------------------------------------------------- masking
    @torch.no_grad()
    def apply_masks(self, masks: Masks, model: nn.Module | None = None, *, zero_inputs: bool = True) -> None:
        """Zero every coupled parameter of masked channels in place (filters, biases, norms, consumers)."""
        target = self.model if model is None else model
        mods = dict(target.named_modules()) if model is not None else None
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
        slim_dg = _build_dg(slim, self.example)
        mods = dict(slim.named_modules())
        for g in self.groups:
            mask = masks.get(g.id)
            if mask is None or bool(mask.all()):
                continue
            idxs = sorted({int(i) for i in torch.nonzero(~mask.cpu()).flatten().tolist()})
            root = mods[g.root_name]
            pruner = slim_dg.get_pruner_of_module(root)
            slim_dg.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
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
            cost = _module_cost(mod, in_shape, out_shape)
            if cost is None:
                continue
            flops, params = cost
            if id(mod) in counted:  # a reused module's parameters count once
                params = (0.0, 0.0, 0.0, 0.0)
            counted.add(id(mod))
            in_d = index.get((id(mod), "in"), -1)
            out_d = index.get((id(mod), "out"), -1)
            if isinstance(mod, _PASSTHROUGH):
                out_d = dim_of(fn, "out", out_shape[1])
                if not self.dims[out_d].links:
                    self.dims[out_d].links.extend(fn_links.get(fn, []))
            if in_d < 0 and (flops[0] or flops[2] or params[0] or params[2]):
                in_d = dim_of(mod, "in_fixed", _channels(mod, "in") or 0)
            if out_d < 0:
                out_d = dim_of(mod, "out_fixed", _channels(mod, "out") or out_shape[1])
            self.costs.append(Cost(self.names.get(mod, "?"), in_d, out_d, flops, params))


def _consistent(m: Member, root_size: int) -> bool:
    """Each root channel maps to the same number of unique, in-range layer channels."""
    size = _channels(m.module, m.side)
    if len(set(m.idxs)) != len(m.idxs) or len(m.idxs) % root_size:
        return False
    if size is not None and (max(m.idxs, default=0) >= size or len(m.idxs) > size):
        return False
    per_root = len(m.idxs) // root_size
    counts = torch.bincount(torch.tensor(m.root_idxs, dtype=torch.long), minlength=root_size)
    return bool((counts == per_root).all())


def _channels(mod: nn.Module, side: str) -> int | None:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels if side == "out" else mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features if side == "out" else mod.in_features
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return mod.num_features
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    return None


def _module_cost(mod: nn.Module, in_shape: tuple, out_shape: tuple) -> tuple[tuple, tuple] | None:
    """(flops, params) coefficients as (io, o, i, const), mirroring tp.utils.count_ops_and_params."""
    batch = in_shape[0]
    bias = 1.0 if getattr(mod, "bias", None) is not None else 0.0
    if isinstance(mod, nn.Conv2d):
        area = float(torch.tensor(out_shape[2:]).prod()) * batch
        kk = float(mod.kernel_size[0] * mod.kernel_size[1])
        if _is_depthwise(mod):
            per_k = kk * (mod.out_channels // mod.groups)
            return (0.0, (per_k + bias) * area, 0.0, 0.0), (0.0, per_k + bias, 0.0, 0.0)
        return (kk * area / mod.groups, bias * area, 0.0, 0.0), (kk / mod.groups, bias, 0.0, 0.0)
    if isinstance(mod, nn.Linear):
        rows = float(torch.tensor(in_shape[:-1]).prod())
        return (rows, bias, 0.0, 0.0), (1.0, bias, 0.0, 0.0)
    if isinstance(mod, _NORMS) and not isinstance(mod, nn.LayerNorm):
        per_c = float(torch.tensor(in_shape).prod()) / in_shape[1]
        affine = bool(getattr(mod, "affine", False))
        n_params = 2.0 if affine else 0.0
        return (0.0, per_c * (2.0 if affine else 1.0), 0.0, 0.0), (0.0, n_params, 0.0, 0.0)
    if isinstance(mod, _PASSTHROUGH):
        shape = (
            out_shape if isinstance(mod, (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.Upsample)) else in_shape
        )
        per_c = float(torch.tensor(shape).prod()) / shape[1]
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
    elif (
        zero_inputs and isinstance(mod, (nn.Conv2d, nn.Linear)) and not (isinstance(mod, nn.Conv2d) and mod.groups > 1)
    ):
        mod.weight.index_fill_(1, idx.to(mod.weight.device), 0.0)


def _build_dg(model: nn.Module, example: torch.Tensor) -> Any:
    was_training = model.training
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    model.train(was_training)
    return dg


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
