from __future__ import annotations

import os
from pathlib import Path

import pytest

from metactl.testing import make_image_folder

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
OMNIGLOT = Path(os.environ.get("METACTL_OMNIGLOT", SHARED / "omniglot"))


def write_image_folder(root: Path, classes: int = 6, per_class: int = 6, size: int = 20, seed: int = 0) -> Path:
    """A tiny Omniglot-shaped tree of PNGs (dark ink on white)."""
    return make_image_folder(root, classes, per_class, size, seed, ink=0.2, omniglot_layout=True)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data")


@pytest.fixture
def omniglot_dir() -> Path:
    if not (OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"Omniglot not found at {OMNIGLOT} (set METACTL_OMNIGLOT)")
    return OMNIGLOT
