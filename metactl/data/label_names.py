"""Label names as extra support (``--label-names``): each class's name, made readable, is one more
support example of that class, at meta-train (the text samplers' support sets) and at adapt (the
user's support labels).

Readable: the part after the last ``/`` (a dataset prefix such as ``banking77/``), ``_``, ``-`` and
``.`` as spaces, camelCase split into words, spaces collapsed: ``banking77/card_arrival`` →
``card arrival``, ``AtmSupport`` → ``Atm Support``. A name must hold a word (at least one letter once
readable): ``123``, ``__`` or ``😀`` give none, which is one error naming the label.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from metactl.data.examples import LabeledExamples
from metactl.errors import MetactlError

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def readable(label: str) -> str:
    """``label`` as words (see the module docstring); may be empty or hold no letter."""
    name = label.strip().rsplit("/", 1)[-1]
    name = _CAMEL.sub(" ", re.sub(r"[_\-.]+", " ", name))
    return " ".join(name.split())


def has_word(text: str) -> bool:
    """At least one letter (any script)."""
    return any(ch.isalpha() for ch in text)


def label_texts(labels: Iterable[str], what: str = "--label-names") -> list[str]:
    """The readable name of every label, in order; a label that yields no word is a MetactlError naming it."""
    labels = list(labels)
    names = [readable(label) for label in labels]
    bad = [label for label, name in zip(labels, names, strict=True) if not has_word(name)]
    if bad:
        more = f" ({len(bad)} in all)" if len(bad) > 3 else ""
        shown = ", ".join(repr(label) for label in bad[:3])
        raise MetactlError(
            f"{what}: label {shown}{more} gives no word to use as its example (a name needs at least one letter).",
            "Rename the label with a word (e.g. card_arrival), or drop --label-names.",
        )
    return names


def add_label_names(data: LabeledExamples, preprocessing: dict[str, Any]) -> LabeledExamples:
    """A text support set with each label's readable name as one more example of it (after the texts),
    tokenized with the run's tokenizer (``preprocessing``) and padded with the texts to the longest."""
    from metactl.data.tokens import encode, load_tokenizer  # the [text] extra

    names = label_texts(data.labels)
    if not isinstance(data.examples, dict) or data.texts is None:
        raise MetactlError("--label-names adds each label's name as a text example: text runs only.", "Drop --label-names.")
    encoded, truncated = encode(load_tokenizer(preprocessing["tokenizer"], int(preprocessing["max_length"])), names)
    width = max(data.examples["input_ids"].shape[1], encoded["input_ids"].shape[1])
    examples = {key: np.concatenate([np.pad(v, [(0, 0), (0, width - v.shape[1])]) for v in (data.examples[key], encoded[key])]) for key in data.examples}
    targets = np.concatenate([data.targets, np.arange(len(names), dtype=np.int64)])
    files = [*data.files, *(f"label name of {label!r}" for label in data.labels)]
    return dataclasses.replace(data, examples=examples, targets=targets, files=files, texts=[*data.texts, *names], truncated=data.truncated + truncated)


__all__ = ["add_label_names", "has_word", "label_texts", "readable"]
