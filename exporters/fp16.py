"""float16 conversion: fp16 weights and compute, fp32 inputs/outputs, the graph re-sorted and checked."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import onnx

from exporters.check import _checked
from exporters.export import _quiet_loggers
from exporters.proto import _input_batch_is_symbolic, _subgraphs

FP16_MIN_OPSET = 9  # below, the legacy exporter keeps weights as graph inputs (they would stay float32)


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(_node_inputs(node))
        local.update(node.output)
    return used - local


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in _subgraphs(attr):
            names |= _outer_names(sub)
    return names


def _toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` topologically (stable: a sorted graph is left as it is)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    produced_by_nodes = {o for n in graph.node for o in n.output}
    needs = [_node_inputs(n) & produced_by_nodes for n in graph.node]
    done: set[str] = set()
    order: list[int] = []
    pending = list(range(len(graph.node)))
    while pending:
        rest = []
        for i in pending:
            if needs[i] <= done | known:
                order.append(i)
                done.update(graph.node[i].output)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise RuntimeError("the graph has a cycle or reads a value no node produces")
        pending = rest
    if order != sorted(order):
        nodes = [copy.deepcopy(graph.node[i]) for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


def _to_fp16(source: onnx.ModelProto | Path, workdir: Path | None = None) -> onnx.ModelProto:
    """float16 weights and compute, float32 inputs/outputs (``keep_io_types``), checked like the fp32 graph.

    ``source`` is a model in memory, or a file with external data (shape inference then runs by path)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if isinstance(source, Path):
        proto = onnx.load(os.fspath(source), load_external_data=False)  # inputs/outputs to compare
        model: onnx.ModelProto | str = os.fspath(source)
    else:
        proto, model = source, copy.deepcopy(source)
    with _quiet_loggers(("onnxruntime.transformers.float16",)):
        converted = convert_float_to_float16(model, keep_io_types=True)
    del model
    _toposort(converted.graph)
    _checked(converted, workdir, "fp16")
    before = [(o.name, o.type.tensor_type.elem_type) for o in proto.graph.output]
    after = [(o.name, o.type.tensor_type.elem_type) for o in converted.graph.output]
    if after != before:
        raise RuntimeError(f"float16 conversion changed the outputs {before} -> {after}")
    if _input_batch_is_symbolic(proto) and not _input_batch_is_symbolic(converted):
        raise RuntimeError("float16 conversion made the batch dimension static")
    return converted
