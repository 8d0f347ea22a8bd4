"""Golden runs: a seeded meta-training gives exactly the θ it gave when this file was written.

Guards refactors of the trainer, the data layer, the models and the algorithms: any change in what
is computed (order of episodes, initialisation, the inner loop, the outer update) changes θ. The
fingerprint (a few sums per run) is checked on any CPU; the sha256 of the θ file's tensors is
checked bit for bit where the CPU kernels are the ones that recorded it (same torch version and
CPU capability), since float kernels legitimately differ across instruction sets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metactl.config import TrainConfig
from metactl.train import meta_train

RECORDED_ON = ("2.13.0+cpu", "AVX512")
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
# recorded at 5b0c81b (before the architecture change): sha256, Σθ, a fixed random projection of θ
GOLDEN: dict[str, tuple[str, float, float]] = {
    "anil-glyphs": ("5b1d02378e04e25e146e24e65add820fa6624958739583bac527042a3e21e017", 35.99549158543232, 1.660639566021582),
    "maml-glyphs": ("b4c9ddea15a85eb0d04892ff7e7990b009cf412c6077b9bd8c12693835af4025", 36.314786071976414, 1.5434742697351052),
    "metasgd-glyphs": ("5ba900fcd5018a989d1f1b62af7c559cd83b4c71b25d41aa14460ed0efca6fa0", 787.0848610171379, -15.791195282978483),
    "reptile-sinusoid": ("3e9c9538072cff298131250a4bcf2e635937c4f9e44402138679b85a9b1f44ac", 36011.327237272635, -5405.423449814317),
}


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
    sha, total, projection = _digest(result.run_dir / "theta.safetensors")
    want_sha, want_total, want_projection = GOLDEN[case]
    assert (total, projection) == pytest.approx((want_total, want_projection), rel=1e-5, abs=1e-4), (case, total, projection)
    if (torch.__version__, torch.backends.cpu.get_cpu_capability()) == RECORDED_ON:
        assert sha == want_sha, f"{case}: θ differs bit for bit from the recorded run"
