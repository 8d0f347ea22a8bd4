"""The building blocks of the adaptation graphs: the :class:`Graph` builder and :func:`support_values` (the support's
one-hot labels, counts and shapes every head chain reads). numpy and onnx only; :mod:`metactl.adapt_graph` and
:mod:`metactl.adapt_probe` build on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 10  # what onnxruntime-web (and older onnxruntime builds) read; newer onnx writes 11+ by default


class Graph:
    """Nodes and constants of one ONNX graph, named uniquely, added in a valid (topological) order."""

    def __init__(self, prefix: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.prefix = prefix
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}{hint}_{self._n}"

    def const(self, value: np.ndarray | float | int, dtype: type = np.float32, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1, **attrs: object) -> str:
        outs = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0]


@dataclass
class Support:
    """Names of the support's values every head chain reads (outer scope of an ``If``'s branches)."""

    features: str
    onehot: str  # [N, C] float
    n: str  # N as float
    c: str  # C, int64 scalar
    c_shape: str  # [C] int64
    cd_shape: str  # [C, D] int64


def support_values(g: Graph, dim: int) -> Support:
    lmax = g.op("ReduceMax", ["labels"], "max_label", keepdims=0)
    c = g.op("Add", [lmax, g.const(1, np.int64)], "classes")
    classes = g.op("Range", [g.const(0, np.int64), c, g.const(1, np.int64)], "class_ids")
    col = g.op("Unsqueeze", ["labels", g.const([1], np.int64)], "label_column")
    onehot = g.op("Cast", [g.op("Equal", [col, classes])], "onehot", to=TensorProto.FLOAT)
    shape = g.op("Shape", ["features"], "features_shape")
    n = g.op("Cast", [g.op("Gather", [shape, g.const(0, np.int64)], axis=0)], "n", to=TensorProto.FLOAT)
    c_shape = g.op("Unsqueeze", [c, g.const([0], np.int64)], "c_shape")
    cd_shape = g.op("Concat", [c_shape, g.const([dim], np.int64)], "cd_shape", axis=0)
    return Support("features", onehot, n, c, c_shape, cd_shape)


__all__ = ["IR_VERSION", "OPSET", "Graph", "Support", "support_values"]
