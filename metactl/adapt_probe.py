"""The linear probe as an ONNX graph: L2-regularised logistic regression solved inside ``adapt.onnx``.

:func:`probe_start` appends to a :class:`~metactl.graph_build.Graph` the nodes that fit the head
``metactl.algorithms.probe.fit_logistic`` fits (mean cross-entropy + ‖W‖² / (2 C n), the bias
unregularised, its unique optimum) and multiply it by the temperature s. Needs numpy and onnx only.

The solve runs in float64 (the features are cast to double; float32 is too coarse for this
ill-conditioned problem) and returns the head cast back to float32:

* **Centring.** With μ the features' mean, logits W f + b = W (f − μ) + (b + W μ): the problem in
  (W, b' = b + W μ) on centred features F_c has the same W, and its bias column is orthogonal to the
  features, which removes the worst ill-conditioning (non-negative image features). b = b' − W μ.
* **Preconditioning (Böhning's bound).** The Hessian of the mean cross-entropy is at most
  ½ I ⊗ F_cᵀF_c / n, so with M = ½ F_cᵀF_c / n + λ I (λ = 1 / (C n)) and ½ for the bias, the step
  W ← V − ∇_W M⁻¹, b ← b_V − 2 ∇_b is a majorise-minimise step. Since λ V M⁻¹ = V − ½ (F_c Vᵀ)ᵀ F_c M⁻¹ / n,
  it is W ← (½ Z_V − (P − Y))ᵀ F̂ with Z_V = F_c Vᵀ, P = softmax(Z_V + b_V) and F̂ = F_c M⁻¹ / n:
  two [N, D]·[D, C]-sized products an iteration, as a plain gradient step. M⁻¹ comes from a
  Newton–Schulz iteration (X ← X + X (I − M X), from I / ‖M‖_F; an ONNX ``Loop`` of at most
  ⌈log₂(37 κ_F)⌉ + 1 steps, κ_F = ‖M‖_F / λ, stopping once max|I − M X| < 1e-13).
* **Acceleration.** FISTA momentum on that step with the gradient restart of O'Donoghue & Candès
  (2015), the inner product taken in the metric M (it needs only logits, which are linear in W, so the
  loop carries Z_W = F_c Wᵀ and Z_V and computes one product F_c Wᵀ a step).
* **Stopping.** An ONNX ``Loop`` whose condition is false once the step max|W_new − V|, max|b_new − b_V|
  is below :data:`TOLERANCE`; its trip count is ``spec.probe_iterations`` when given, else
  min(:data:`MAX_ITERATIONS`, ⌈50 √κ_F⌉ + 100) (the iterations needed measured ≈ 10–30 √κ_F); the loop still
  stops early at the tolerance. Its last output (``probe_iterations_done_*``) is the iterations it ran.

Measured (python onnxruntime, CPU, s = 3): the graph's head is within ~2e-7 of the optimum (float32 rounding;
the float64 solve within 1e-8 for C ≤ 100). ``fit_logistic`` runs L-BFGS until its gradient is ≤ 1e-9, so it reaches
the same optimum. 150 classes × 5 unit-norm MiniLM features, C = 0.1 / 1 / 10 / 100 / 1000: 105 / 186 / 586 / 1733 / 5151
iterations; 150 × 5 at C = 10 takes 1.6 s (2 threads). Non-negative image-like features (dim 64, norms 5–20), C = 1 / 10:
440–560 / 1350–1720 iterations.

Browser: onnxruntime-web 1.31.1 (WASM, one thread, headless Chromium) runs this graph (double tensors, ``Loop``,
``EyeLike``, ``Softmax``, ``Where``, ... all supported; nothing had to change) and gives the same head as python
onnxruntime: max|Δ| 0 on 20 classes × 5 (746 ms; python 57 ms) and on 5 × 1 (603 ms), 1.2e-10 on 150 × 5
(8.8 s; python 2.0 s one thread), C = 10, s = 2.3.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from metactl.adapt_spec import HeadAdaptation
from metactl.graph_build import Graph, Support

TOLERANCE = 1e-11  # the loop stops once the step's max-abs is below this (double)
MAX_ITERATIONS = 20000  # cap of the chosen trip count
CAP_PER_SQRT_KAPPA = 50.0  # trip count ⌈50 √κ_F⌉ + 100 (measured need: 10–30 √κ_F)
NS_TOLERANCE = 1e-13  # Newton–Schulz stops once max|I − M X| is below this

_D = TensorProto.DOUBLE


def _dconst(g: Graph, value: float | np.ndarray, hint: str) -> str:
    return g.const(np.asarray(value, np.float64), np.float64, hint)


def _loop_body(name: str, b: Graph, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]) -> onnx.GraphProto:
    return helper.make_graph(
        b.nodes, name,
        [helper.make_tensor_value_info(n, t, None if t == _D else []) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None if t == _D else []) for n, t in outputs],
    )  # fmt: skip


def _inverse(g: Graph, m: str, lam: str) -> tuple[str, str]:
    """M⁻¹ of the SPD matrix ``m`` (double [D, D], smallest eigenvalue ≥ ``lam``) by Newton–Schulz, and κ_F = ‖M‖_F / λ."""
    eye = g.op("EyeLike", [m], "ns_eye", dtype=_D)
    fro = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [m, m])], keepdims=0)], "m_frobenius")
    x0 = g.op("Div", [eye, fro], "ns_x0")
    kappa = g.op("Div", [fro, lam], "kappa_f")
    log2 = g.op("Div", [g.op("Log", [g.op("Mul", [kappa, _dconst(g, 37.0, "c37")])]), _dconst(g, np.log(2.0), "ln2")])
    steps = g.op("Add", [g.op("Ceil", [log2]), _dconst(g, 1.0, "one")])
    trips = g.op("Cast", [steps], "ns_trips", to=TensorProto.INT64)
    tol = _dconst(g, NS_TOLERANCE, "ns_tol")
    b = Graph(prefix=f"{g.name('ns')}/")
    it, cond, x = b.name("i"), b.name("cond"), b.name("x")
    r = b.op("Sub", [eye, b.op("MatMul", [m, x])], "r")
    xn = b.op("Add", [x, b.op("MatMul", [x, r])], "x_next")
    go = b.op("Greater", [b.op("ReduceMax", [b.op("Abs", [r])], keepdims=0), tol], "go")
    body = _loop_body("newton_schulz", b, [(it, TensorProto.INT64), (cond, TensorProto.BOOL), (x, _D)], [(go, TensorProto.BOOL), (xn, _D)])
    return g.op("Loop", [trips, "", x0], "m_inverse", body=body), kappa


def probe_start(g: Graph, s: Support, spec: HeadAdaptation) -> tuple[str, str]:
    """Append to ``g`` the probe fit at C = ``spec.probe_c`` times ``spec.scale``: names of float32 W [C, D] and b [C]."""
    assert spec.probe_c is not None
    f = g.op("Cast", [s.features], "probe_features", to=_D)
    y = g.op("Cast", [s.onehot], "probe_onehot", to=_D)
    n = g.op("Cast", [s.n], "probe_n", to=_D)
    mu = g.op("ReduceMean", [f, g.const([0], np.int64)], "probe_mean", keepdims=1)  # [1, D]
    fc = g.op("Sub", [f, mu], "probe_centred")
    lam = g.op("Reciprocal", [g.op("Mul", [n, _dconst(g, spec.probe_c, "probe_c")])], "probe_lambda")
    half_cov = g.op("Div", [g.op("Gemm", [fc, fc], "half_gram", transA=1, alpha=0.5), n], "half_cov")
    m = g.op("Add", [half_cov, g.op("Mul", [g.op("EyeLike", [half_cov], dtype=_D), lam])], "precond")
    minv, kappa = _inverse(g, m, lam)
    fh = g.op("Div", [g.op("MatMul", [fc, minv]), n], "f_hat")  # [N, D]

    zero = numpy_helper.from_array(np.zeros(1, np.float64))
    nc_shape = g.op("Concat", [g.op("Slice", [g.op("Shape", [s.features]), g.const([0], np.int64), g.const([1], np.int64)]), s.c_shape], "nc_shape", axis=0)
    w0 = g.op("ConstantOfShape", [s.cd_shape], "probe_w0", value=zero)
    b0 = g.op("ConstantOfShape", [s.c_shape], "probe_b0", value=zero)
    z0 = g.op("ConstantOfShape", [nc_shape], "probe_z0", value=zero)
    t0 = _dconst(g, 1.0, "probe_t0")
    k0 = g.const(0, np.int64, "probe_k0")
    if spec.probe_iterations is not None:
        trips = g.const(int(spec.probe_iterations), np.int64, "probe_trips")
    else:
        cap = g.op("Add", [g.op("Ceil", [g.op("Mul", [g.op("Sqrt", [kappa]), _dconst(g, CAP_PER_SQRT_KAPPA, "per_sqrt_kappa")])]), _dconst(g, 100.0, "c100")])
        cap = g.op("Min", [cap, _dconst(g, float(MAX_ITERATIONS), "max_its")])
        trips = g.op("Cast", [cap], "probe_trips", to=TensorProto.INT64)
    half_over_n = g.op("Div", [_dconst(g, 0.5, "half"), n], "half_over_n")
    two_over_n = g.op("Div", [_dconst(g, 2.0, "two"), n], "two_over_n")
    one, half, four, tol = _dconst(g, 1.0, "one"), _dconst(g, 0.5, "half"), _dconst(g, 4.0, "four"), _dconst(g, TOLERANCE, "probe_tol")
    zero_d = _dconst(g, 0.0, "zero")

    b = Graph(prefix=f"{g.name('fista')}/")
    it, cond, w, bb, zw, v, vb, zv, t, k = (b.name(h) for h in ("i", "cond", "w", "b", "zw", "v", "vb", "zv", "t", "k"))
    resid = b.op("Sub", [b.op("Softmax", [b.op("Add", [zv, vb])], axis=1), y], "resid")  # P − Y [N, C]
    wn = b.op("Gemm", [b.op("Sub", [b.op("Mul", [zv, half]), resid]), fh], "w_next", transA=1)
    bn = b.op("Sub", [vb, b.op("Mul", [b.op("ReduceSum", [resid, g.const([0], np.int64)], keepdims=0), two_over_n])], "b_next")
    zwn = b.op("Gemm", [fc, wn], "zw_next", transB=1)
    dw, dwv, db, dbv = b.op("Sub", [wn, w]), b.op("Sub", [wn, v]), b.op("Sub", [bn, bb]), b.op("Sub", [bn, vb])
    dz = b.op("Sub", [zwn, zw])
    inner = b.op("Add", [
        b.op("Add", [b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [b.op("Sub", [zwn, zv]), dz])], keepdims=0), half_over_n]),
                     b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [dwv, dw])], keepdims=0), lam])]),
        b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [dbv, db])], keepdims=0), half]),
    ], "restart_inner")  # −⟨∇f(V), W_new − W⟩ in the metric M: negative means restart  # fmt: skip
    restart = b.op("Less", [inner, zero_d], "restart")
    tn = b.op("Div", [b.op("Add", [one, b.op("Sqrt", [b.op("Add", [one, b.op("Mul", [four, b.op("Mul", [t, t])])])])]), _dconst(g, 2.0, "two")], "t_fista")
    beta = b.op("Where", [restart, zero_d, b.op("Div", [b.op("Sub", [t, one]), tn])], "beta")
    tn = b.op("Where", [restart, one, tn], "t_next")
    vn = b.op("Add", [wn, b.op("Mul", [dw, beta])], "v_next")
    vbn = b.op("Add", [bn, b.op("Mul", [db, beta])], "vb_next")
    zvn = b.op("Add", [zwn, b.op("Mul", [dz, beta])], "zv_next")
    step = b.op("Max", [b.op("ReduceMax", [b.op("Abs", [dwv])], keepdims=0), b.op("ReduceMax", [b.op("Abs", [dbv])], keepdims=0)], "step")
    go = b.op("Greater", [step, tol], "go")
    kn = b.op("Add", [it, g.const(1, np.int64, "one_i")], "k_next")
    state = [(w, _D), (bb, _D), (zw, _D), (v, _D), (vb, _D), (zv, _D), (t, _D), (k, TensorProto.INT64)]
    body = _loop_body("probe_fista", b, [(it, TensorProto.INT64), (cond, TensorProto.BOOL), *state],
                      [(go, TensorProto.BOOL)] + [(x, tp) for x, (_, tp) in zip([wn, bn, zwn, vn, vbn, zvn, tn, kn], state, strict=True)])  # fmt: skip
    outs = [g.name(h) for h in ("probe_w", "probe_b", "probe_zw", "probe_v", "probe_vb", "probe_zv", "probe_t", "probe_iterations_done")]
    g.nodes.append(helper.make_node("Loop", [trips, "", w0, b0, z0, w0, b0, z0, t0, k0], outs, name=g.name("probe_loop"), body=body))
    w_fit, b_fit = outs[0], outs[1]
    b_fit = g.op("Sub", [b_fit, g.op("ReduceSum", [g.op("Mul", [w_fit, mu]), g.const([1], np.int64)], keepdims=0)], "probe_bias_uncentred")
    scale = _dconst(g, spec.scale, "probe_scale")
    w_out = g.op("Cast", [g.op("Mul", [w_fit, scale])], "probe_weight", to=TensorProto.FLOAT)
    b_out = g.op("Cast", [g.op("Mul", [b_fit, scale])], "probe_bias", to=TensorProto.FLOAT)
    return w_out, b_out


__all__ = ["MAX_ITERATIONS", "TOLERANCE", "probe_start"]
