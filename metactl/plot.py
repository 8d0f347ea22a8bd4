"""Adaptation-curve plots (the ``plot`` extra: ``pip install "metactl[plot]"``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from metactl.errors import MetactlError
from metactl.runs import atomic_write_bytes


def _pyplot() -> Any:
    try:
        import matplotlib  # lazy: matplotlib is the optional [plot] extra; its absence is a clear error, not an ImportError
    except ImportError:
        raise MetactlError(
            "--plot needs matplotlib, which is not installed.", 'Install the extra: pip install "metactl[plot]" (or pip install matplotlib).'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the headless backend above

    return plt


def check_plot_target(out: Path) -> Any:
    """A usable ``--plot`` target and matplotlib present (checked before any work); returns pyplot."""
    if out.suffix.lower() != ".png":
        raise MetactlError(f"--plot {out}: the plot is written as PNG.", "Give a file name ending in .png.")
    return _pyplot()


def plot_curves(results: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """One line per run: metric vs inner step with its 95 % confidence band; written atomically as PNG."""
    plt = check_plot_target(out)
    metric = results[0].get("metric", "accuracy")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in results:
        steps = [s["step"] for s in r["steps"]]
        scale = 100.0 if metric == "accuracy" else 1.0
        mean = [s["mean"] * scale for s in r["steps"]]
        ci = [s["ci95"] * scale for s in r["steps"]]
        label = f"{r['algorithm']} ({Path(r['run']).name})"
        (line,) = ax.plot(steps, mean, marker="o", label=label)
        ax.fill_between(
            steps, [m - c for m, c in zip(mean, ci, strict=True)], [m + c for m, c in zip(mean, ci, strict=True)], color=line.get_color(), alpha=0.2
        )
    ax.set_xlabel("inner (adaptation) steps on the support set")
    ax.set_ylabel("query accuracy (%)" if metric == "accuracy" else "query MSE")
    if metric == "mse":
        ax.set_yscale("log")
    ax.set_xticks(sorted({s["step"] for r in results for s in r["steps"]}))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out
