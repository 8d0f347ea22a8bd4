"""``glyphs``: the built-in procedural family of handwritten-like characters.

Each class is a random composition of 1-4 pen strokes (lines, arcs, Bezier curves, loops, hooks,
dots) in a unit box; each drawing of a class is that composition with jittered control points,
a small random affine distortion (rotation, scale, shear, shift) and a random pen width, rendered
antialiased (a soft distance-to-stroke field) at 28x28, ink = 255, like Omniglot at 28x28.

Everything is a pure function of the class index: nothing is downloaded or shipped, and class
``c`` is the same on every machine. Classes are generated lazily and kept in memory.

Fixed class ranges: train ``[0, 4000)``, validation ``[4000, 4400)``, test ``[4400, 5000)``.
"""

from __future__ import annotations

import threading

import numpy as np

from metactl.data.episodes import ImagePool

TRAIN = (0, 4000)
VAL = (4000, 4400)
TEST = (4400, 5000)
DRAWINGS = 20
SIZE = 28
_SEED = 0x61797068  # fixed: the family itself never changes between versions


def _bezier(ctrl: np.ndarray, n: int) -> np.ndarray:
    """Points on a cubic Bezier curve; ctrl (..., 4, 2) -> (..., n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    b = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)  # (n, 4, 1)
    return np.einsum("nk,...kd->...nd", b[..., 0], ctrl)


def _class_strokes(rng: np.random.Generator) -> np.ndarray:
    """The class prototype: (S, 4, 2) cubic Bezier control polygons, scaled to fill the box."""
    strokes: list[np.ndarray] = []
    n_strokes = int(rng.choice([1, 2, 2, 3, 3, 3, 4, 4]))
    anchors: list[np.ndarray] = []
    kinds = ["line", "corner", "curve", "arc", "loop", "hook", "dot"]
    probs = [0.26, 0.2, 0.18, 0.14, 0.08, 0.1, 0.04]
    for _ in range(n_strokes):
        kind = kinds[rng.choice(len(kinds), p=probs)]
        # strokes often start where an earlier one was, as pen strokes do
        if anchors and rng.random() < 0.6:
            start = anchors[rng.integers(len(anchors))] + rng.normal(0, 0.05, 2)
        else:
            start = rng.uniform(-0.7, 0.7, 2)
        if kind == "dot":
            ctrl = start + np.array([[0.0, 0.0], [0.02, 0.0], [0.02, 0.02], [0.0, 0.02]])
        elif kind == "line":
            end = start + rng.uniform(-1.2, 1.2, 2)
            ctrl = np.stack([start, start + (end - start) / 3, start + 2 * (end - start) / 3, end])
        elif kind == "corner":  # two straight segments meeting at a sharp corner
            mid = start + rng.uniform(-1.0, 1.0, 2)
            end = mid + rng.uniform(-1.0, 1.0, 2)
            ctrl = np.stack([start, mid, mid, end])
            strokes.append(np.stack([start, (2 * start + mid) / 3, (start + 2 * mid) / 3, mid]))
            ctrl = np.stack([mid, (2 * mid + end) / 3, (mid + 2 * end) / 3, end])
        elif kind == "arc":
            r = rng.uniform(0.2, 0.55)
            a0 = rng.uniform(0, 2 * np.pi)
            sweep = rng.uniform(0.6, 1.6) * np.pi * rng.choice([-1, 1])
            centre = start - r * np.array([np.cos(a0), np.sin(a0)])
            k = 4 / 3 * np.tan(sweep / 4)
            p0 = centre + r * np.array([np.cos(a0), np.sin(a0)])
            p3 = centre + r * np.array([np.cos(a0 + sweep), np.sin(a0 + sweep)])
            p1 = p0 + k * r * np.array([-np.sin(a0), np.cos(a0)])
            p2 = p3 - k * r * np.array([-np.sin(a0 + sweep), np.cos(a0 + sweep)])
            ctrl = np.stack([p0, p1, p2, p3])
        elif kind == "loop":
            d = rng.uniform(-0.5, 0.5, 2)
            ctrl = np.stack([start, start + d + rng.normal(0, 0.4, 2), start + d + rng.normal(0, 0.4, 2), start + rng.normal(0, 0.05, 2)])
        elif kind == "hook":
            end = start + rng.uniform(-1.0, 1.0, 2)
            ctrl = np.stack([start, end + rng.normal(0, 0.5, 2), end + rng.normal(0, 0.3, 2), end])
        else:  # free curve
            ctrl = np.concatenate([start[None], start + rng.uniform(-1.0, 1.0, (3, 2))])
        strokes.append(ctrl)
        anchors += [ctrl[0], ctrl[-1]]
    ctrl = np.stack(strokes)
    # fill the frame as Omniglot characters do: centre, scale the longer side to ~1.5 box units
    pts = _bezier(ctrl, 14).reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    extent = max(float((hi - lo).max()), 0.25)
    return (ctrl - (lo + hi) / 2) * (rng.uniform(1.3, 1.6) / extent)


def render_class(index: int, drawings: int = DRAWINGS) -> np.ndarray:
    """All drawings of class ``index``: (drawings, 28, 28) uint8, ink = 255."""
    rng = np.random.default_rng([_SEED, index])
    ctrl = _class_strokes(rng)  # (S, 4, 2)
    # per-drawing motor noise and a small affine distortion (rotation, anisotropic scale, shear, shift)
    c = ctrl[None] + rng.normal(0, 0.05, (drawings, *ctrl.shape))
    theta = rng.normal(0, 0.12, drawings)
    sc = np.exp(rng.normal(0, 0.08, (drawings, 2)))
    sh = rng.normal(0, 0.1, drawings)
    cos, sin = np.cos(theta), np.sin(theta)
    a = np.empty((drawings, 2, 2))
    a[:, 0, 0], a[:, 0, 1] = cos * sc[:, 0], cos * sh - sin * sc[:, 1]
    a[:, 1, 0], a[:, 1, 1] = sin * sc[:, 0], sin * sh + cos * sc[:, 1]
    c = np.einsum("dij,dskj->dski", a, c) + rng.normal(0, 0.05, (drawings, 1, 1, 2))
    pts = _bezier(c, 10).astype(np.float32)  # (D, S, 10, 2)
    a0 = pts[:, :, :-1].reshape(drawings, -1, 2)  # segment starts (D, M, 2)
    ab = pts[:, :, 1:].reshape(drawings, -1, 2) - a0
    inv_len = 1.0 / np.maximum((ab * ab).sum(-1), 1e-9)  # (D, M)
    # pixel centres in the unit box [-1, 1]^2 (y down, like an image)
    g = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * 2 - 1
    gx = g[None, None, :, None]  # (1, 1, W, 1) broadcast against (D, H, W, M)
    gy = g[None, :, None, None]
    dx = gx - a0[:, None, None, :, 0]
    dy = gy - a0[:, None, None, :, 1]
    bx, by = ab[:, None, None, :, 0], ab[:, None, None, :, 1]
    t = np.clip((dx * bx + dy * by) * inv_len[:, None, None, :], 0.0, 1.0)
    ex, ey = dx - t * bx, dy - t * by
    dist = np.sqrt((ex * ex + ey * ey).min(axis=-1)).reshape(drawings, -1)  # (D, P)
    width = rng.uniform(0.05, 0.08, (drawings, 1))  # pen half-width in box units (0.7-1.1 px)
    soft = 2.0 / SIZE  # one pixel of antialiasing
    ink = np.clip((width + soft / 2 - dist) / soft, 0.0, 1.0)
    return np.round(ink.reshape(drawings, SIZE, SIZE) * 255).astype(np.uint8)


class GlyphPool(ImagePool):
    """A range of glyph classes, generated on first use and then cached."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def num_classes(self) -> int:
        return self.stop - self.start

    def count(self, c: int) -> int:
        return DRAWINGS

    def get(self, c: int) -> np.ndarray:
        arr = self._cache.get(c)
        if arr is None:
            arr = render_class(self.start + c)
            with self._lock:
                self._cache[c] = arr
        return arr

    def names(self) -> list[str]:
        return [f"glyph{self.start + i:05d}" for i in range(self.num_classes)]
