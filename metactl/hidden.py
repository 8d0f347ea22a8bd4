"""Cached lower-layer hidden states (``--train-layers K``): the body's frozen lower layers run once per text.

With ``--train-layers K`` the outer loop trains only the top K of an encoder's L transformer layers; the
embeddings and layers 0..L-K-1 never change. So a text pool computes, once per dataset split, each text's
hidden states entering layer L-K (``(tokens, D)`` float32, its own unpadded length; in memory: ~24 k intent
texts x ~15 tokens x 384 floats ≈ 0.55 GB) and its episodes give those instead of token ids::

    {"hidden": (n, T, D) float32, "attention_mask": (n, T) int64, "body": (n,) int64}

padded with zeros to the longest of the batch. ``body`` tags every row with :func:`body_tag` of the body
that computed it (the sha256 of its weights, the number of cached layers, the token limit), and the model
refuses rows whose tag is not its own: hidden states cached from a body that changed since are never used.

Imports numpy only (never torch): :mod:`metactl.data.text` uses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from metactl.errors import MetactlError

Arrays = dict[str, np.ndarray]


def body_tag(sha256: str, lower: int, max_length: int) -> int:
    """A 62-bit integer naming cached hidden states: the body's weights, how many of its lower layers
    were run, and the token limit. Different bodies get different tags."""
    digest = hashlib.sha256(f"{sha256}:{int(lower)}:{int(max_length)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def encoder_depth(folder: Path) -> int:
    """The number of transformer layers of the pretrained encoder in ``folder`` (its ``config.json``:
    ``num_hidden_layers``, or ``n_layers`` / ``num_layers``)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MetactlError(f"--backbone {folder}: cannot read its config.json ({exc}).", "Use an intact pretrained folder.") from None
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise MetactlError(f"--backbone {folder}: its config.json gives no number of layers (num_hidden_layers).", "Use a transformer encoder folder.")


def check_train_layers(k: int | None, folder: Path) -> None:
    """``--train-layers K`` must name 1..depth of the encoder's layers (one MetactlError otherwise)."""
    if k is None:
        return
    depth = encoder_depth(folder)
    if not 1 <= k <= depth:
        raise MetactlError(
            f"--train-layers {k}: the encoder in {folder} has {depth} layers, so K must be 1..{depth}.",
            f"Pass --train-layers between 1 and {depth} (--train-body alone trains every layer).",
        )


def pad_hidden(rows: list[np.ndarray], tag: int) -> Arrays:
    """Hidden-state rows ``(t_i, D)`` -> ``{"hidden", "attention_mask", "body"}`` padded with 0 to the longest row."""
    width = max((len(r) for r in rows), default=0)
    dim = rows[0].shape[1] if rows else 0
    hidden = np.zeros((len(rows), width, dim), dtype=np.float32)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        hidden[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return {"hidden": hidden, "attention_mask": mask, "body": np.full(len(rows), tag, dtype=np.int64)}


def check_tag(found: Any, expected: int) -> None:
    """Refuse hidden states (their ``body`` tags, an array or tensor) that another body computed."""
    bad = found is None or bool((found != expected).any())
    if bad:
        raise MetactlError(
            "Cached lower-layer hidden states were computed by a different body (its weights, cached layers or --max-length changed since the cache).",
            "Compute the cache again from the run's own body: open the data again (metactl meta-train does this itself).",
        )


__all__ = ["body_tag", "check_tag", "check_train_layers", "encoder_depth", "pad_hidden"]
