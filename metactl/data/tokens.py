"""The one tokenizer loader and encoder: meta-train, evaluate, adapt, export and predict all tokenize
here, with a backbone's ``tokenizer.json``, truncated at ``max_length`` tokens and padded with 0 to the
longest text of the batch (never to a fixed length).

Imports numpy and ``tokenizers`` (the ``[text]`` extra) only, never torch or transformers: predict loads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from metactl.errors import MetactlError

Arrays = dict[str, np.ndarray]


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """A ``tokenizer.json`` without its own padding (we pad per batch), truncating at ``max_length`` tokens."""
    p = Path(path)
    if not p.is_file():
        raise MetactlError(f"{p}: tokenizer file not found.", "The run records its backbone's tokenizer.json by path: restore that folder.")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises plain Exceptions for a damaged file
        raise MetactlError(f"{p}: not a loadable tokenizer.json ({exc}).", "Use the tokenizer.json of a Hugging Face fast tokenizer.") from None
    tok.no_padding()
    tok.enable_truncation(int(max_length))
    return tok


def encode_rows(tokenizer: Tokenizer, texts: list[str], max_length: int | None = None) -> tuple[list[np.ndarray], int]:
    """Token id rows (int64, unpadded) and how many texts were truncated. With ``max_length`` the
    tokenizer is first set to no padding and truncation at ``max_length``; without it, as loaded."""
    if max_length is not None:
        tokenizer.no_padding()
        tokenizer.enable_truncation(int(max_length))
    encodings = tokenizer.encode_batch(texts)
    return [np.asarray(e.ids, dtype=np.int64) for e in encodings], sum(1 for e in encodings if e.overflowing)


def pad(rows: list[np.ndarray], pad_id: int = 0) -> Arrays:
    """Token id rows -> ``input_ids``/``attention_mask`` int64 (n, L), right-padded with ``pad_id`` to the longest row."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def encode(tokenizer: Tokenizer, texts: list[str], pad_id: int = 0) -> tuple[Arrays, int]:
    """``{"input_ids", "attention_mask"}`` int64 (n, L) padded to the longest of these texts (the
    tokenizer as loaded by :func:`load_tokenizer`); and how many texts the tokenizer truncated."""
    rows, truncated = encode_rows(tokenizer, list(texts))
    return pad(rows, pad_id), truncated


def tokenize(tokenizer: Tokenizer, texts: Iterable[str], max_length: int) -> Arrays:
    """``texts`` -> ``{"input_ids", "attention_mask"}`` int64 (n, L): truncated at ``max_length`` tokens,
    padded with 0 to the longest text of this batch."""
    return pad(encode_rows(tokenizer, list(texts), max_length)[0])


__all__ = ["encode", "encode_rows", "load_tokenizer", "pad", "tokenize"]
