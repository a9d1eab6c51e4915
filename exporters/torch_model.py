"""The PyTorch side of an export: the model on CPU behind one input, example inputs, its outputs, its size."""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from compressor.errors import BadInput, one_line

log = logging.getLogger("compress.export")

#: Batch used for the example input of a dynamic-batch export (1 invites specialization).
_EXAMPLE_BATCH = 2


class _ImageOnly(nn.Module):
    """Calls a model with the image alone: its other forward arguments keep their defaults.

    The legacy exporter turns every defaulted forward argument (``return_features=False``) into an ONNX
    input the caller would have to feed; behind this wrapper the graph has exactly one input.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)


def _image_only(model: nn.Module) -> nn.Module:
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    except (TypeError, ValueError):
        return model
    return _ImageOnly(model).eval() if len(params) > 1 else model


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _flatten_outputs(item)]
    raise BadInput(f"model output of type {type(out).__name__} is not supported for ONNX export")


def _example_input(input_shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=gen, dtype=torch.float32)


def _param_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared tensors once): what the exported weights weigh."""
    unique = {(t.device, t.data_ptr()): t for t in model.state_dict().values() if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in unique.values())


def _cpu_image_model(model: nn.Module) -> nn.Module:
    """``model`` on the CPU in eval mode, called with the image alone (a copy unless it is on the CPU already)."""
    # The caller's module keeps its device and modes: a CPU module is exported in place in eval mode and
    # @_keeps_modes restores its modes (no second copy of a large model); any other is copied to the CPU.
    if any(t.device.type != "cpu" for t in itertools.chain(model.parameters(), model.buffers())):
        try:
            model = copy.deepcopy(model)
        except Exception as exc:
            log.warning("cannot copy the model (%s); exporting it in place (it is left on CPU)", exc)
    return _image_only(model.cpu().eval())


def _output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    """ONNX output names for the model's flattened outputs (``BadInput`` if it does not run on ``example``)."""
    try:
        with torch.no_grad():
            n_outputs = len(_flatten_outputs(model(example)))
    except BadInput:
        raise
    except Exception as exc:  # a model that cannot run on this input is bad input
        raise BadInput(
            f"model does not run on input of shape {tuple(example.shape)}: {one_line(exc, typed=True)}"
        ) from exc
    return ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]


_F = TypeVar("_F", bound=Callable[..., Any])


def _keeps_modes(fn: _F) -> _F:
    """Restore the train/eval mode of every submodule of the model (first argument) after ``fn``."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        modes = [(m, m.training) for m in model.modules()]
        try:
            return fn(model, *args, **kwargs)
        finally:
            for module, mode in modes:
                module.training = mode

    return wrapper  # type: ignore[return-value]
