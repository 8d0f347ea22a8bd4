"""Process-level settings that make the training loop fast on CPU.

Large activations (tens of MB per meta-batch) are allocated and freed hundreds of times per
meta-step. With glibc's defaults each such block is a fresh ``mmap`` whose pages fault in on first
touch and are returned to the kernel on ``free``: on the 2-core benchmark machine that cost ~35 %
of a second-order meta-step (ReLU and zero-fills ran 5x slower than the arithmetic allows). Keeping
those blocks in the heap removes it (examples/benchmarks/meta_step.py measures it). Memory that
was once used is then kept by the process for reuse rather than returned between steps.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import itertools
import sys
import threading
import weakref
from typing import Any

import torch

from metactl.errors import MetactlError

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

_done = False


def tune_malloc() -> bool:
    """Keep large blocks in the glibc heap (no-op elsewhere). Returns whether it applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024))  # glibc's maximum on 64-bit
    ok &= bool(mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024))
    ok &= bool(mallopt(M_TOP_PAD, 64 * 1024 * 1024))
    _done = ok
    return ok


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, usable here; a MetactlError saying what to do otherwise."""
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise MetactlError(f"--device {device}: unknown device.", "Use cpu, cuda or cuda:N.")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MetactlError(f"--device {device}: no CUDA device is available to torch here.", "Use --device cpu (or install a CUDA build of torch).")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise MetactlError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here.", "Pick an existing device index.")
    return device


# per model: its copies for task threads (``functional_call`` swaps a module's tensors while it
# runs, so each thread needs its own module); dropped with the model
_replicas: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def task_workers(cfg: Any, algo: Any, device: str, tasks: int) -> int:
    """How many threads share the meta-batch (``--task-threads``; 0 = auto).

    Auto, on CPU and for an algorithm that declares ``task_parallel``: one worker per intra-op
    thread, each running its tasks with one thread (on the 2-core machine 1.10-1.16x faster than
    two threads inside every operator: examples/benchmarks/speed_options.py). On CUDA: 1."""
    if not getattr(algo, "task_parallel", False) or tasks < 2:
        return 1
    if cfg.task_threads:
        return min(cfg.task_threads, tasks)
    return 1 if device != "cpu" else max(1, min(torch.get_num_threads(), tasks))


def task_parallel_meta_gradient(algo: Any, learner: Any, batch: Any, workers: int) -> dict[str, float]:
    """``algo.meta_gradient`` with the meta-batch split over ``workers`` threads, sharing the intra-op threads
    (``workers`` <= 1: the plain call).

    Each worker runs the algorithm's own per-task loop on a contiguous slice of the tasks, on its
    own copy of the model module (``functional_call`` swaps a module's tensors while it runs, so a
    module cannot be shared between threads) and its own leaf views of θ, α and the algorithm's
    extra parameters (same storage, separate ``.grad``). The slices' meta-gradients are then
    added into the learner's ``.grad`` in slice order, each weighted by its share of the tasks, so
    the result is the whole batch's mean meta-gradient, deterministic, equal to the single-thread
    loop up to float summation order. Valid for algorithms whose meta-gradient and metrics are
    means over independent tasks (``task_parallel = True`` on the class).
    """
    if workers <= 1:
        return algo.meta_gradient(learner, batch)

    b = len(batch)
    bounds = [round(i * b / workers) for i in range(workers + 1)]
    slices = [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]
    outer = torch.get_num_threads()
    inner = max(1, outer // len(slices))
    results: list[Any] = [None] * len(slices)
    replicas = _replicas.setdefault(learner.model, [])
    replicas += [copy.deepcopy(learner.model) for _ in range(len(slices) - len(replicas))]

    def leaves(tensors: dict[str, Any]) -> dict[str, Any]:
        return {k: v.detach().requires_grad_(v.requires_grad) for k, v in tensors.items()}

    def work(j: int, lo: int, hi: int) -> None:
        try:
            torch.set_num_threads(inner)
            local = learner.replace(model=replicas[j], params=leaves(learner.params), inner_lr=leaves(learner.inner_lr), extra=leaves(learner.extra))
            for p in local.parameters():
                p.grad = torch.zeros_like(p)
            part = batch.tasks(lo, hi)
            metrics = algo.meta_gradient(local, part)
            results[j] = (metrics, [p.grad for p in local.parameters()])
        except BaseException as exc:  # re-raised on the calling thread
            results[j] = exc

    threads = [threading.Thread(target=work, args=(j, lo, hi)) for j, (lo, hi) in enumerate(slices[1:], start=1)]
    for t in threads:
        t.start()
    work(0, *slices[0])
    for t in threads:
        t.join()
    torch.set_num_threads(outer)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    totals: dict[str, float] = {}
    with torch.no_grad():
        for (lo, hi), (metrics, grads) in zip(slices, results, strict=True):
            w = (hi - lo) / b
            for p, g in zip(learner.parameters(), grads, strict=True):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(g, alpha=w)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + w * v
    return totals
