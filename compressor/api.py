"""The public Python API: drive any pruning method inside your own training loop.

```python
import compressor
pruner = compressor.Pruner(model, example_inputs, method="psap", target_flops=0.5,
                           epochs=E, steps_per_epoch=len(loader), **method_options)
pruner.attach(optimizer)                 # methods that touch momentum need it
for epoch in range(E):
    for x, y in loader:
        loss = criterion(model(x), y); loss.backward()
        pruner.after_backward(loss, batch_size=len(x))   # methods read gradients here
        optimizer.step(); pruner.after_step(); optimizer.zero_grad()
    pruner.epoch_end(epoch)
slim = pruner.materialize()              # physically smaller nn.Module, same function as the masked model
compressor.save_pruned(slim, "pruned.pt", pruner)    # weights_only-loadable; load_pruned rebuilds it
```

``save_pruned`` rebuilds the dense model from ``Pruner(..., arch=SPEC)`` (or its ``model_spec=``): a registry spec
(``cifar:resnet20``) or your own ``path/to/file.py:factory``.

``compress prune`` is built on this same object (:mod:`compressor.jobs.prune`). Method options are the method's
own names (``variant="v2"``, ``gamma=2.0`` for PSAP; ``sensitivity="gradient"`` for ASTER; see
:func:`list_methods`); an unknown one raises :class:`~compressor.errors.BadInput`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.artifacts import pruned_payload
from compressor.budget import Budget, solve_counts
from compressor.config import DEFAULT_PRUNE as _P
from compressor.errors import BadInput
from compressor.graph import Masks, PruningGraph
from compressor.methods.base import Context, Method
from compressor.methods.registry import METHODS, build_method, method_parameters
from compressor.models import known_spec
from compressor.runtime.hardware import resolve_round_to


class Pruner:
    """One model, one method, one target: the method's callbacks, a step counter and the physical removal.

    ``outputs``: the layers that produce the model's outputs (never pruned). Default: found by running the
    model once, which needs a classification output (one ``(N, classes)`` tensor); give them for any other head.
    ``train_loader`` and ``loss_fn`` are only read by methods that need extra passes (BN re-estimation after a
    PSAP step, ASTER's ``curvature="same-batch"``, the ``taylor`` baseline); ``lr`` (default: the attached
    optimizer's) is ASTER v1's eta0. ``start=False`` builds and checks everything but calls the method's setup
    only in :meth:`start` (``compress prune`` pretrains in between); ``graph``/``budget`` reuse ones already built
    (the CLI builds them first to search a latency target or an allocation). ``arch``: the model's spec
    (``cifar:resnet20``, ``path/to/file.py:factory``): architecture rules key on it, and :func:`save_pruned`
    rebuilds the dense model from it.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, *, method: str | Method = _P.method,
                 target_flops: float | None = None, target_params: float | None = None, epochs: int,
                 steps_per_epoch: int, round_to: int | str = _P.round_to, max_layer_ratio: float = _P.max_layer_ratio,
                 ignore: Iterable[str] = (), ignore_stem: bool = _P.ignore_stem,
                 group_max_ratio: dict[str, float] | None = None,
                 outputs: list[nn.Module] | None = None, arch: str = "", train_loader: Iterable[Any] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, lr: float | None = None,
                 device: torch.device | str | None = None, weights: dict[int, float] | None = None,
                 log: Callable[[str], None] | None = None, start: bool = True, graph: PruningGraph | None = None,
                 budget: Budget | None = None, **method_options: Any) -> None:  # fmt: skip
        if (target_flops is None) == (target_params is None):
            raise BadInput("give exactly one of target_flops and target_params")
        self.metric = "flops" if target_flops is not None else "params"
        self.target = float(target_flops if target_flops is not None else target_params)  # type: ignore[arg-type]
        if not 0.0 < self.target < 1.0:
            raise BadInput(f"target_{self.metric} must be a drop fraction strictly between 0 and 1, got {self.target}")
        if epochs < 0 or steps_per_epoch < 1:
            raise BadInput(f"need epochs >= 0 and steps_per_epoch >= 1, got {epochs} and {steps_per_epoch}")
        round_to = resolve_round_to(round_to)[0]  # auto: the multiple this CPU's ONNX Runtime kernels run fastest
        self.model, self.example, self.arch = model, example_inputs, arch
        self.epochs, self.steps_per_epoch, self.max_ratio = int(epochs), int(steps_per_epoch), max_layer_ratio
        self.graph = graph or PruningGraph(model, example_inputs, round_to=round_to, arch=arch, ignore=list(ignore),
                                           ignore_stem=ignore_stem, group_max_ratio=group_max_ratio,
                                           outputs=outputs)  # fmt: skip
        self.budget = budget or Budget(self.graph)
        if isinstance(method, Method) and method_options:
            raise BadInput(f"method options ({', '.join(sorted(method_options))}) go with a method name; this "
                           f"{type(method).__name__} object is already built with its own")  # fmt: skip
        self.method = method if isinstance(method, Method) else build_method(method, **method_options)
        self.weights = weights
        self._ctx_args = {"train_loader": train_loader, "loss_fn": loss_fn or nn.CrossEntropyLoss(), "lr": lr,
                          "device": torch.device(device) if device is not None else _device_of(model),
                          "log": log or (lambda _msg: None)}  # fmt: skip
        self.step = 0
        self.history: list | None = None
        self.ctx: Context | None = None
        self.check()
        if start:
            self.start()

    def check(self) -> None:
        """BadInput/GateFailed now, before any training, if the target cannot be reached by this method."""
        solve_counts(self.graph, self.budget, self.target, metric=self.metric, max_ratio=self.max_ratio,
                     weights=self.weights)  # fmt: skip
        self.method.check(self.graph, self.budget, self.target, self.metric, self.max_ratio)

    def start(self, **ctx_args: Any) -> None:
        """Set the method up on the model's current weights (``ctx_args`` override the constructor's)."""
        args = {**self._ctx_args, **ctx_args}
        self.ctx = Context(model=self.model, graph=self.graph, budget=self.budget, target=self.target,
                           metric=self.metric, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                           train_loader=args["train_loader"], loss_fn=args["loss_fn"], device=args["device"],
                           max_ratio=self.max_ratio, lr=args["lr"] or 0.0, log=args["log"],
                           weights=self.weights, optimizer=args.get("optimizer"))  # fmt: skip
        self.method.setup(self.graph, self.ctx)

    # ------------------------------------------------------------------------------------------ the loop
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer whose momentum the method clears for pruned channels (and whose LR is ASTER v1's eta0)."""
        ctx = self._context()
        ctx.optimizer = optimizer
        if not ctx.lr:
            ctx.lr = float(optimizer.param_groups[0]["lr"])
            if getattr(self.method, "eta", None) == "lr":
                self.method.eta0 = ctx.lr  # type: ignore[attr-defined]

    def after_backward(self, loss: torch.Tensor | float | None = None, batch_size: int = 0, *,
                       step: int | None = None) -> None:  # fmt: skip
        """Gradients are ready, before ``optimizer.step()``; ``loss`` is the batch's mean loss. ``step`` (default:
        the Pruner's own counter) is for a loop that numbers its steps itself, as ``compress prune``'s does."""
        if step is not None:
            self.step = int(step)
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach())
        value = None if loss is None else torch.tensor(float(loss))
        self.method.on_after_backward(self.step, value, int(batch_size))

    def after_step(self, *, step: int | None = None) -> None:
        """After ``optimizer.step()``: the method holds its masks (and may prune at planned batches)."""
        if step is not None:
            self.step = int(step)
        self.method.on_after_step(self.step)
        self.step += 1

    def epoch_end(self, epoch: int | None = None) -> dict[str, Any]:
        """At the end of each epoch (default: the epoch the step counter is in); returns the method's record."""
        done = self.step // self.steps_per_epoch - 1 if epoch is None else int(epoch)
        return self.method.on_epoch_end(done)

    # ------------------------------------------------------------------------------------------ results
    def masks(self) -> Masks:
        return self.method.masks()

    @property
    def finished(self) -> bool:
        return bool(self.method.finished)

    def drop(self, metric: str | None = None) -> float:
        """The FLOPs (or params) drop of the current masks, analytically."""
        return self.budget.drop(self.masks(), metric or self.metric)

    def materialize(self, model: nn.Module | None = None) -> nn.Module:
        """A physically smaller copy of the model with the current masks (the same function as the masked model)."""
        slim, self.history = self.graph.materialize(self.masks(), (model or self.model).cpu())
        return slim

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A :meth:`state_dict`, or (a checkpoint written before the Trainer drove the Pruner) the method's own
        state, whose step the Trainer passes on."""
        if set(state) != {"step", "method"}:
            self.method.load_state_dict(state)
            return
        self.step = int(state["step"])
        self.method.load_state_dict(state["method"])

    def _context(self) -> Context:
        if self.ctx is None:
            raise RuntimeError("Pruner.start() was not called (the Pruner was built with start=False)")
        return self.ctx


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------- files and lists
def save_pruned(slim: nn.Module, path: str | Path, pruner: Pruner, *, model_spec: str | None = None,
                num_classes: int | None = None, in_channels: int | None = None,
                trust_code: bool | None = None) -> Path:  # fmt: skip
    """Write ``slim`` as a pruned-model file that :func:`load_pruned` rebuilds with ``weights_only=True``.

    ``model_spec`` (default: the Pruner's ``arch``) rebuilds the dense architecture: a registry spec
    (``cifar:resnet20``) or your own ``path/to/file.py:factory`` (loading it runs your code: ``trust_code``
    defaults to True for such specs). ``in_channels`` defaults to the example input's channels; a registry spec's
    ``num_classes`` to the width of the model's ``(N, classes)`` output. A factory gets ``num_classes`` /
    ``in_channels`` only if it takes them (``num_classes`` defaults to 1 there: give it if your factory uses it).
    """
    from compressor.runtime.atomic import write_torch

    if pruner.history is None:
        raise BadInput("save_pruned: call pruner.materialize() first (the file holds its pruning history)")
    model_spec = model_spec or pruner.arch
    if not model_spec:
        raise BadInput("save_pruned: give model_spec= (the spec that rebuilds the dense model: 'cifar:resnet20' or "
                       "'path/to/file.py:factory'), or build the Pruner with arch=SPEC")  # fmt: skip
    user = ".py:" in model_spec
    if not user and not known_spec(model_spec):
        raise BadInput(f"save_pruned: {model_spec!r} is not a model spec load_pruned can rebuild (a registry spec "
                       "such as 'cifar:resnet20', or 'path/to/file.py:factory'); give model_spec=")  # fmt: skip
    if not user and num_classes is None:
        num_classes = _classes_of(slim, pruner.example, model_spec)
    spec = {"model": model_spec, "num_classes": int(num_classes or 1),
            "in_channels": int(in_channels or pruner.example.shape[1]),
            "trust_code": user if trust_code is None else bool(trust_code)}  # fmt: skip
    out = Path(path)
    write_torch(out, pruned_payload(spec, tuple(pruner.example.shape[1:]), pruner.history, slim))
    return out


def _classes_of(model: nn.Module, example: torch.Tensor, spec: str) -> int:
    """The width of ``model``'s ``(N, classes)`` output on ``example``; BadInput for any other output."""
    modes = {m: m.training for m in model.modules()}  # restored one by one (a frozen BatchNorm stays in eval)
    try:
        with torch.no_grad():
            out = model.eval()(example.to(_device_of(model)))
    finally:
        for m, training in modes.items():
            m.training = training
    if not (isinstance(out, torch.Tensor) and out.dim() == 2):
        raise BadInput(f"save_pruned: {spec!r} is built from num_classes, and this model's output is not one "
                       "(N, classes) tensor: give num_classes")  # fmt: skip
    return int(out.shape[1])


def list_methods() -> dict[str, list[str]]:
    """Every method and the options it takes."""
    return {name: sorted(method_parameters(name)) for name in sorted(METHODS)}


def list_models(pattern: str | None = None) -> list[str]:
    """Every built-in (and registered) model spec, filtered by a glob (``'torchvision:resnet*'``) when given."""
    from compressor.models import list_models as every

    return every(pattern)
