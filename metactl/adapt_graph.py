"""Adaptation as ONNX graphs: the head adaptation of ``metactl adapt`` written with plain ONNX operators.

An algorithm whose inner loop adapts only the head describes that adaptation as a
:class:`HeadAdaptation` (its ``adaptable_head`` hook): where the head starts (the class prototypes, θ's
meta-learned head, a zero head, or a fitted logistic regression) and the K first-order
softmax-regression steps that follow, with the learned α of each step baked in. :func:`adapt_model`
turns it into ``adapt.onnx``::

    features float32 [N, D], labels int64 [N]  ->  weight float32 [C, D], bias float32 [C]

with C = max(labels) + 1, dynamic. Each step is the gradient step ``metactl adapt`` takes on the mean
cross-entropy of the support set: with P = softmax(F Wᵀ + b) and Y the one-hot labels,
∇W = (P − Y)ᵀ F / N, ∇b = Σᵢ (P − Y)ᵢ / N, then W ← W − α_W ∇W, b ← b − α_b ∇b.

When the adaptation for the trained number of classes differs from the one for any other number (ANIL
starts from θ's head only when C is the trained way count, a zero head otherwise), the graph holds both
and an ``If`` on C picks one. :func:`classify_model` appends the linear head and softmax to a feature
graph (``weight`` and ``bias`` become inputs); :func:`bake` turns those inputs into constants. Needs
numpy and onnx only (no torch): the torch-free ``metactl adapt --from ADAPTABLE_DIR`` bakes with it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from metactl.adapt_probe import probe_start
from metactl.adapt_spec import HeadAdaptation
from metactl.graph_build import IR_VERSION, OPSET, Graph, Support, support_values


def _prototype_start(g: Graph, s: Support, spec: HeadAdaptation) -> tuple[str, str]:
    counts = g.op("ReduceSum", [s.onehot, g.const([0], np.int64)], "counts", keepdims=0)
    counts = g.op("Max", [counts, g.const(1.0)], "counts_at_least_1")
    sums = g.op("MatMul", [g.op("Transpose", [s.onehot], perm=[1, 0]), s.features], "sums")
    protos = g.op("Div", [sums, g.op("Unsqueeze", [counts, g.const([1], np.int64)])], "prototypes")
    if spec.cosine:
        norm = g.op("Max", [g.op("ReduceL2", [protos, g.const([1], np.int64)], keepdims=1), g.const(1e-12)], "norms")
        w = g.op("Mul", [g.op("Div", [protos, norm]), g.const(spec.scale)], "w0")
        b = g.op("ConstantOfShape", [s.c_shape], "b0", value=numpy_helper.from_array(np.zeros(1, np.float32)))
        return w, b
    w = g.op("Mul", [protos, g.const(2.0 * spec.scale)], "w0")
    sq = g.op("ReduceSum", [g.op("Mul", [protos, protos]), g.const([1], np.int64)], keepdims=0)
    return w, g.op("Mul", [sq, g.const(-spec.scale)], "b0")


def _start(g: Graph, s: Support, spec: HeadAdaptation) -> tuple[str, str]:
    if spec.start == "prototype":
        return _prototype_start(g, s, spec)
    if spec.start == "initial":
        assert spec.weight is not None and spec.bias is not None
        return g.op("Identity", [g.const(spec.weight, hint="theta_weight")], "w0"), g.op("Identity", [g.const(spec.bias, hint="theta_bias")], "b0")
    if spec.start == "zero":
        zero = numpy_helper.from_array(np.zeros(1, np.float32))
        return g.op("ConstantOfShape", [s.cd_shape], "w0", value=zero), g.op("ConstantOfShape", [s.c_shape], "b0", value=zero)
    return probe_start(g, s, spec)  # the logistic-regression solver: metactl.adapt_probe


def _steps(g: Graph, s: Support, spec: HeadAdaptation, w: str, b: str) -> tuple[str, str]:
    for k, (aw, ab) in enumerate(spec.alphas):
        logits = g.op("Gemm", [s.features, w, b], f"logits{k}", transB=1)
        resid = g.op("Div", [g.op("Sub", [g.op("Softmax", [logits], axis=1), s.onehot]), s.n], f"residual{k}")
        gw = g.op("MatMul", [g.op("Transpose", [resid], perm=[1, 0]), s.features], f"grad_w{k}")
        gb = g.op("ReduceSum", [resid, g.const([0], np.int64)], f"grad_b{k}", keepdims=0)
        w = g.op("Sub", [w, g.op("Mul", [gw, g.const(aw, hint=f"alpha_w{k}")])], f"w{k + 1}")
        b = g.op("Sub", [b, g.op("Mul", [gb, g.const(ab, hint=f"alpha_b{k}")])], f"b{k + 1}")
    return w, b


def _chain(g: Graph, s: Support, spec: HeadAdaptation) -> tuple[str, str]:
    return _steps(g, s, spec, *_start(g, s, spec))


def _branch(name: str, s: Support, spec: HeadAdaptation, dim: int) -> onnx.GraphProto:
    g = Graph(prefix=f"{name}/")
    w, b = _chain(g, s, spec)
    g.op("Identity", [w], "weight_out")
    g.op("Identity", [b], "bias_out")
    outs = [g.nodes[-2].output[0], g.nodes[-1].output[0]]
    return helper.make_graph(
        g.nodes, name, [],
        [helper.make_tensor_value_info(outs[0], TensorProto.FLOAT, None), helper.make_tensor_value_info(outs[1], TensorProto.FLOAT, None)],
        g.inits,
    )  # fmt: skip


def adapt_model(same: HeadAdaptation, other: HeadAdaptation, trained_classes: int, dim: int, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """``adapt.onnx``: ``same`` when C equals ``trained_classes``, ``other`` for any other C (one chain when they agree)."""
    g = Graph()
    s = support_values(g, dim)
    if same.same_as(other):
        w, b = _chain(g, s, same)
        g.nodes.append(helper.make_node("Identity", [w], ["weight"], name="weight"))
        g.nodes.append(helper.make_node("Identity", [b], ["bias"], name="bias"))
    else:
        cond = g.op("Equal", [s.c, g.const(trained_classes, np.int64)], "trained_count")
        g.nodes.append(
            helper.make_node(
                "If", [cond], ["weight", "bias"], name="head_for_class_count",
                then_branch=_branch("trained_classes", s, same, dim), else_branch=_branch("other_classes", s, other, dim),
            )
        )  # fmt: skip
    graph = helper.make_graph(
        g.nodes, "adapt",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", dim]), helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("weight", TensorProto.FLOAT, ["C", dim]), helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["C"])],
        g.inits,
    )  # fmt: skip
    return _model(graph, metadata)


def _model(graph: onnx.GraphProto, metadata: dict[str, str] | None) -> onnx.ModelProto:
    """A checked model of ``graph`` at :data:`OPSET` and :data:`IR_VERSION`, ``metadata`` as its props."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="metactl")
    model.ir_version = IR_VERSION
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def _head(features: str, dim: int) -> tuple[list[onnx.ValueInfoProto], list[onnx.NodeProto], list[onnx.ValueInfoProto]]:
    """The linear head on ``features``: its inputs ``weight`` [C, D] and ``bias`` [C], its two nodes, and its outputs
    ``logits`` and ``probabilities`` [batch, C] (shared by classify.onnx and head.onnx)."""
    inputs = [helper.make_tensor_value_info("weight", TensorProto.FLOAT, ["C", dim]), helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["C"])]
    nodes = [
        helper.make_node("Gemm", [features, "weight", "bias"], ["logits"], name="adaptable_head", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="adaptable_softmax", axis=-1),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "C"]) for name in ("logits", "probabilities")]
    return inputs, nodes, outputs


def classify_model(body: onnx.ModelProto, dim: int, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The feature graph ``body`` (its output ``features`` [B, D]) with a linear head whose ``weight`` [C, D]
    and ``bias`` [C] are inputs: outputs ``logits`` and ``probabilities`` [B, C]."""
    model = onnx.ModelProto()
    model.CopyFrom(body)
    graph = model.graph
    (feat,) = [o for o in graph.output if o.name == "features"]
    inputs, nodes, outputs = _head(feat.name, dim)
    del graph.output[:]
    graph.input.extend(inputs)
    graph.node.extend(nodes)
    graph.output.extend(outputs)
    model.ir_version = min(model.ir_version, IR_VERSION) if model.ir_version else IR_VERSION
    del model.metadata_props[:]
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def head_model(dim: int, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """``head.onnx``: ``features`` [B, D], ``weight`` [C, D], ``bias`` [C] -> ``logits``, ``probabilities`` [B, C]: the end of
    ``classify.onnx`` alone, for a client that keeps ``embed.onnx``'s features (a model without support statistics)."""
    inputs, nodes, outputs = _head("features", dim)
    return _model(helper.make_graph(nodes, "head", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim]), *inputs], outputs), metadata)


def bake(model: onnx.ModelProto, values: dict[str, np.ndarray], metadata: dict[str, str]) -> onnx.ModelProto:
    """``model`` with the inputs named in ``values`` turned into constants (initializers) and ``metadata`` as its props."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {i.name for i in out.graph.input}
    missing = sorted(set(values) - names)
    if missing:
        raise ValueError(f"the graph has no inputs named {', '.join(missing)}")
    kept = [i for i in out.graph.input if i.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in values.items())
    del out.metadata_props[:]
    helper.set_model_props(out, metadata)
    return out


__all__ = ["IR_VERSION", "OPSET", "adapt_model", "bake", "classify_model", "head_model"]
