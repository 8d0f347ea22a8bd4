"""Golden runs: a seeded meta-training gives exactly the θ it gave when this file was written.

Guards refactors of the trainer, the data layer, the models and the algorithms: any change in what
is computed (order of episodes, initialisation, the inner loop, the outer update) changes θ. The
fingerprint (a few sums per run) is checked on any CPU; the sha256 of the θ file's tensors is
checked bit for bit on a machine that recorded it (same torch version, CPU capability and CPU flags),
since float kernels legitimately differ across processors: two AVX512 machines with different flags
gave θ equal to 1e-7 but not bit for bit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metactl.config import TrainConfig
from metactl.train import meta_train

COMMON = dict(ways=3, shots=1, query_shots=2, meta_batch=4, steps=4, width=8, eval_every=0, eval_episodes=2, checkpoint_every=100, threads=2)
CASES = {
    # Conv-4 + BatchNorm on glyphs, second order, learned α, 2 inner steps, task threads (the default path)
    "maml-glyphs": dict(algo="maml", data="glyphs", inner_steps=2, **COMMON),
    # element-wise α, first order, no task threads
    "metasgd-glyphs": dict(algo="metasgd", data="glyphs", task_threads=1, **COMMON),
    # ANIL's batched body
    "anil-glyphs": dict(algo="anil", data="glyphs", **COMMON),
    # the sinusoid MLP (regression) with Reptile's own inner optimizer and annealed β
    "reptile-sinusoid": dict(algo="reptile", data="sinusoid", inner_steps=3, **{**COMMON, "width": 16}),
}
# recorded at 5b0c81b (before the architecture change): Σθ, a fixed random projection of θ
GOLDEN: dict[str, tuple[float, float]] = {
    "anil-glyphs": (35.99549158543232, 1.660639566021582),
    "maml-glyphs": (36.314786071976414, 1.5434742697351052),
    "metasgd-glyphs": (787.0848610171379, -15.791195282978483),
    "reptile-sinusoid": (36011.327237272635, -5405.423449814317),
}
# sha256 of θ per machine: (torch version, CPU capability, digest of /proc/cpuinfo's flags) -> case -> sha256
SHA256: dict[tuple[str, str, str], dict[str, str]] = {
    ("2.13.0+cpu", "AVX512", "86d9ce9c09e486e0"): {
        "anil-glyphs": "b96b3479f135c9599b9fbab56b9b9c0b86797349c042e3ef98ae2fa427b59eac",
        "maml-glyphs": "edf30adcc65fa719c914ddd79407ba0f38a525a502e4fe11d49148f883c2e8dc",
        "metasgd-glyphs": "2f7dd93a82809aa18120efff7f4e782801bcd9a34b640d6b7d35017b53606f29",
        "reptile-sinusoid": "252242931c8cc7cb18923b5da0773f9d754d6070f497157e89b3410475c8793d",
    },
}


def _machine() -> tuple[str, str, str]:
    """This machine's key in SHA256 (flags digest empty where /proc/cpuinfo is not readable)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split(":", 1)[1].split()
        digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16]
    except (OSError, StopIteration):
        digest = ""
    return torch.__version__, torch.backends.cpu.get_cpu_capability(), digest


def _digest(path: Path) -> tuple[str, float, float]:
    tensors = load_file(path)
    h = hashlib.sha256()
    total = projection = 0.0
    gen = torch.Generator().manual_seed(0)
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
        total += float(t.double().sum())
        projection += float((t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum())  # moves with any entry
    return h.hexdigest(), total, projection


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_run_gives_the_recorded_theta(case: str, tmp_path: Path) -> None:
    result = meta_train(TrainConfig(**CASES[case]), out=tmp_path / case)
    sha, total, projection = _digest(result.path / "theta.safetensors")
    want_total, want_projection = GOLDEN[case]
    assert (total, projection) == pytest.approx((want_total, want_projection), rel=1e-5, abs=1e-4), (case, total, projection)
    recorded = SHA256.get(_machine(), {})
    if case in recorded:
        assert sha == recorded[case], f"{case}: θ differs bit for bit from the recorded run"
