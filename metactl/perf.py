"""Process-level settings that make the training loop fast on CPU.

Large activations (tens of MB per meta-batch) are allocated and freed hundreds of times per
meta-step. With glibc's defaults each such block is a fresh ``mmap`` whose pages fault in on first
touch and are returned to the kernel on ``free``: on the 2-core benchmark machine that cost ~35 %
of a second-order meta-step (ReLU and zero-fills ran 5x slower than the arithmetic allows). Keeping
those blocks in the heap removes it (examples/benchmarks/meta_step.py measures it). Memory that
was once used is then kept by the process for reuse rather than returned between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
    from metactl.errors import MetactlError

    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise MetactlError(f"--device {device}: unknown device.", "Use cpu, cuda or cuda:N.")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MetactlError(f"--device {device}: no CUDA device is available to torch here.", "Use --device cpu (or install a CUDA build of torch).")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise MetactlError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here.", "Pick an existing device index.")
    return device
