"""Text support sets for ``adapt`` / ``export``: the labeled texts read by :mod:`metactl.data.text_files`
(the reader meta-train's ``text:PATH`` uses too: ``shots/<label>/**/*.txt``, ``shots/<label>.txt``,
``shots.csv|.tsv|.jsonl``), at least 2 labels, tokenized by :mod:`metactl.data.tokens` with the run's
``preprocessing["tokenizer"]`` (a ``tokenizer.json``), truncated at ``preprocessing["max_length"]``
tokens and padded with 0 to the longest example. Imports ``tokenizers`` (the ``[text]`` extra), never
torch or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metactl.data.examples import LabeledExamples
from metactl.data.text_files import MAX_BYTES, read_labeled_text_files, read_lines
from metactl.data.tokens import encode, load_tokenizer
from metactl.errors import MetactlError


def read_text_support(path: Path, preprocessing: dict[str, Any], what: str = "--support") -> LabeledExamples:
    """Read, check and tokenize a text support set (see the module docstring); nothing is written."""
    read = read_labeled_text_files(path, what)
    if len(read.examples) < 2:
        raise MetactlError(f"{what} {path}: found 1 label ({next(iter(read.examples))!r}); need at least 2.", "Add examples of each further label.")
    labels = list(read.examples)
    rows = [(text, i, source) for i, label in enumerate(labels) for text, source in read.examples[label]]
    tokenizer = load_tokenizer(preprocessing["tokenizer"], int(preprocessing["max_length"]))
    texts = [text for text, _, _ in rows]
    examples, truncated = encode(tokenizer, texts)
    targets = np.array([i for _, i, _ in rows], dtype=np.int64)
    return LabeledExamples(examples, targets, labels, [s for _, _, s in rows], read.skipped, dict(preprocessing), texts, truncated)


__all__ = ["MAX_BYTES", "encode", "load_tokenizer", "read_lines", "read_text_support"]
