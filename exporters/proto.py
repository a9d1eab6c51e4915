"""Queries on ONNX protos that several export steps share: the input's batch dim, every tensor, tensor bytes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

INPUT_NAME = "input"
BATCH_DIM = "batch"


def _input_batch_is_symbolic(model: onnx.ModelProto) -> bool:
    inputs = [i for i in model.graph.input if i.name == INPUT_NAME] or list(model.graph.input)
    if not inputs:
        return False
    dims = inputs[0].type.tensor_type.shape.dim
    return len(dims) > 0 and dims[0].HasField("dim_param") and not dims[0].HasField("dim_value")


def _tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the tensors held inside ``model`` (initializers and Constant attributes, subgraphs included)."""
    total = 0
    for tensor in _all_tensors(model.graph):
        if tensor.HasField("raw_data"):
            total += len(tensor.raw_data)
        elif not uses_external_data(tensor):
            total += int(np.prod(tensor.dims, dtype=np.int64)) * max(1, _elem_size(tensor.data_type))
    return total


def _elem_size(data_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:  # string tensors and the like: small, count them as bytes
        return 1


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in _subgraphs(attr):
                yield from _all_tensors(sub)


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    return ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
