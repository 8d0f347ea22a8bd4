"""The building blocks of the adaptation graphs: :class:`HeadAdaptation` (a head adaptation as data), the
:class:`Graph` builder, and :func:`support_values` (the support's one-hot labels, counts and shapes every head
chain reads). numpy and onnx only; :mod:`metactl.adapt_graph` and :mod:`metactl.adapt_probe` build on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 10  # what onnxruntime-web (and older onnxruntime builds) read; newer onnx writes 11+ by default
STARTS = ("prototype", "initial", "zero", "probe")


class NotAdaptable(Exception):
    """Raised by an ``adaptable_head`` hook for a run whose adaptation a graph cannot replay (it changes the body);
    its message says why, and ``export --adaptable`` turns it into one error naming the algorithms that can."""


@dataclass(frozen=True)
class HeadAdaptation:
    """The head adaptation of one algorithm for one class count, as data (what ``adapt.onnx`` computes).

    ``start``: ``"prototype"`` (class means of the features; cosine: w = s·p/‖p‖, b = 0; Euclidean:
    w = 2s·p, b = −s‖p‖²), ``"initial"`` (θ's head: ``weight``, ``bias``), ``"zero"`` (a zero head) or
    ``"probe"`` (L2-regularised logistic regression at ``probe_c``, times ``scale``).
    ``alphas``: per inner step, (α of the weight, α of the bias): scalars, or element-wise arrays of
    the head's shape (Meta-SGD)."""

    start: str
    cosine: bool = False
    scale: float = 1.0
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    alphas: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    probe_c: float | None = None
    probe_iterations: int | None = None  # None: chosen from the conditioning bound (see metactl.adapt_probe)
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}")
        if self.start == "initial" and (self.weight is None or self.bias is None):
            raise ValueError("start 'initial' needs weight and bias")
        if self.start == "probe" and (self.probe_c is None or self.probe_c <= 0):
            raise ValueError("start 'probe' needs probe_c > 0")

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def same_as(self, other: HeadAdaptation) -> bool:
        """True when both compute the same head for every support set (one graph serves both)."""
        if (self.start, self.cosine, self.scale, self.probe_c, self.steps) != (other.start, other.cosine, other.scale, other.probe_c, other.steps):
            return False
        arrays = [(self.weight, other.weight), (self.bias, other.bias)] + [
            pair for a, b in zip(self.alphas, other.alphas, strict=True) for pair in zip(a, b, strict=True)
        ]
        return all((x is None and y is None) or (x is not None and y is not None and np.shape(x) == np.shape(y) and np.array_equal(x, y)) for x, y in arrays)

    def describe(self) -> dict[str, object]:
        """What metactl.json records about it."""
        alphas = [[_summary(a) for a in pair] for pair in self.alphas]
        out: dict[str, object] = {"start": self.start, "steps": self.steps, "alphas": alphas}
        if self.start == "prototype":
            out.update(cosine=self.cosine, temperature=self.scale)
        if self.start == "probe":
            out.update(c=self.probe_c, temperature=self.scale)
        return out


def _summary(a: np.ndarray) -> float | dict[str, float]:
    arr = np.asarray(a, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


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


__all__ = ["IR_VERSION", "OPSET", "STARTS", "Graph", "HeadAdaptation", "NotAdaptable", "Support", "support_values"]
