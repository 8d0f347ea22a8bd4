from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
OMNIGLOT = Path(os.environ.get("METACTL_OMNIGLOT", SHARED / "omniglot"))


def write_image_folder(root: Path, classes: int = 6, per_class: int = 6, size: int = 20, seed: int = 0) -> Path:
    """A tiny class-per-folder tree of PNGs (dark ink on white, like Omniglot's files)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"alphabet{c % 2}" / f"character{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.random((size, size)) > 0.8
        for i in range(per_class):
            noisy = base ^ (rng.random((size, size)) > 0.95)
            Image.fromarray(np.where(noisy, 0, 255).astype(np.uint8)).save(d / f"{c:04d}_{i:02d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data")


@pytest.fixture
def omniglot_dir() -> Path:
    if not (OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"Omniglot not found at {OMNIGLOT} (set METACTL_OMNIGLOT)")
    return OMNIGLOT
