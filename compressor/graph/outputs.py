"""The model's output: what a classification forward must return, and which layers produce it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.errors import BadInput, one_line


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
