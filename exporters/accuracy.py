"""The accuracy of an ONNX file on real data: ONNX Runtime over a labelled loader (top-1, top-5, loss).

The file is what ships, so its accuracy is measured on it, not on the PyTorch model it came from: float16
and INT8 files differ from PyTorch by more than rounding noise, and this is where it shows. The loader's
batches are the preprocessed tensors training saw (the normalisation the file's metadata records).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import torch

from compressor.errors import BadInput, Unavailable, one_line
from compressor.runtime.ort_gpu import preload_gpu_libraries
from compressor.runtime.ort_options import session_options
from compressor.train import Tally

#: ``provider`` names of :func:`onnx_accuracy` and the ONNX Runtime providers they mean.
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def session(model: onnx.ModelProto | bytes | str | os.PathLike[str], provider: str = "cpu",
            threads: int | None = None) -> Any:  # fmt: skip
    """An ONNX Runtime session on ``provider`` (``cpu`` or ``cuda``); :class:`Unavailable` when it is not here."""
    import onnxruntime as ort

    if provider not in ORT_PROVIDERS:
        raise BadInput(f"unknown provider {provider!r} for accuracy; choose one of {', '.join(ORT_PROVIDERS)}")
    name = ORT_PROVIDERS[provider]
    if provider != "cpu":
        preload_gpu_libraries()
    if name not in ort.get_available_providers():
        raise Unavailable(f"ONNX Runtime provider {name} is not available here (installed: "
                          f"{', '.join(ort.get_available_providers())})")  # fmt: skip
    opts = session_options(threads)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    source = source if isinstance(source, bytes) else os.fspath(source)
    try:
        sess = ort.InferenceSession(source, opts, providers=[name])
    except Exception as exc:
        raise BadInput(f"ONNX Runtime cannot load the model: {one_line(exc, typed=True)}") from exc
    if sess.get_providers()[:1] != [name]:  # a GPU session that silently fell back to the CPU
        raise Unavailable(f"ONNX Runtime provider {name} fell back to {', '.join(sess.get_providers())}")
    return sess


def onnx_accuracy(model: onnx.ModelProto | bytes | str | os.PathLike[str],
                  loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, provider: str = "cpu",
                  threads: int | None = None, num_classes: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Top-1/top-5 accuracy and mean cross-entropy of an ONNX classifier (its first output) over ``loader``.

    A file with a static batch dimension is fed in slices of that batch (the last one padded, the padding
    dropped). :class:`BadInput` when its logits do not have ``num_classes`` columns (the data's, when given) or a
    label is not one of them. Returns ``{"acc", "top5", "loss", "n", "provider"}``.
    """
    sess = session(model, provider, threads)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    tally = Tally()
    for x, y in loader:
        try:
            logits = _run(sess, inp.name, x.numpy().astype(np.float32, copy=False), fixed)
        except BadInput:
            raise
        except Exception as exc:  # e.g. the data's image size is not the file's
            raise BadInput(f"ONNX Runtime failed on a batch of shape {tuple(x.shape)} (the file takes "
                           f"{inp.shape}): {one_line(exc, 200, typed=True)}") from None  # fmt: skip
        _check_classes(logits.shape[1], y, num_classes)
        tally.add(torch.from_numpy(logits), y)
    if tally.n == 0:
        raise BadInput("the evaluation split is empty")
    return {**tally.result(), "provider": provider}


def _run(sess: Any, name: str, x: np.ndarray, fixed: int | None) -> np.ndarray:
    """The first output for batch ``x``, sliced to ``fixed`` rows per call when the batch dim is static."""
    if fixed is None or fixed == len(x):
        out = sess.run(None, {name: x})[0]
    else:
        parts = []
        for i in range(0, len(x), fixed):
            chunk = x[i : i + fixed]
            pad = fixed - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            parts.append(sess.run(None, {name: chunk})[0][: fixed - pad])
        out = np.concatenate(parts)
    if out.ndim != 2:
        raise BadInput(f"the model's first output has shape {tuple(out.shape)}: accuracy needs (batch, classes) "
                       "logits")  # fmt: skip
    return out.astype(np.float32, copy=False)


def _check_classes(columns: int, labels: torch.Tensor, num_classes: int | None) -> None:
    """:class:`BadInput` when the model's ``columns`` logits cannot score the data's classes and ``labels``."""
    if num_classes is not None and columns != num_classes:
        raise BadInput(f"the model's output has {columns} classes, the data has {num_classes}: is it the right "
                       "data for this model?")  # fmt: skip
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= columns):
        raise BadInput(f"the data has label {int(labels.max())} but the model's output has {columns} classes")
