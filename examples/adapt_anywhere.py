"""Adapt a metactl model to your own labels and classify, with onnxruntime and numpy only.

Copy this file into your app. It needs the folder written by ``metactl export --from RUN --adaptable``
and ``pip install onnxruntime numpy pillow`` (images) or ``pip install onnxruntime numpy tokenizers`` (text):
no torch, no metactl.

    python adapt_anywhere.py ADAPTABLE_DIR SUPPORT_DIR INPUT [INPUT ...]

SUPPORT_DIR holds your labeled examples: for an image model one subfolder of images per label; for a
text model one ``<label>.txt`` per label, one example per line. INPUT: image files, or texts.

The three calls (the folder's README.md says the same):
1. ``embed.onnx``: the model's inputs -> ``features`` (an image model also returns the normalisation
   statistics of the batch: embed the whole support set in one call and keep them);
2. ``adapt.onnx``: support ``features`` + ``labels`` (int64, 0..C-1, every class present) -> ``weight``, ``bias``;
3. ``classify.onnx``: new inputs + ``weight`` + ``bias`` (+ the statistics) -> ``probabilities``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def readable(label: str) -> str:
    """A label as words (card_arrival -> "card arrival", CardArrival -> "Card Arrival"): a text run that trained with
    label names (metactl.json ``label_names``) takes each label's name as one more support example, as ``metactl adapt`` does."""
    name = re.sub(r"[_\-.]+", " ", label.strip().rsplit("/", 1)[-1])
    return " ".join(re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name).split())


def check_labels(labels: np.ndarray) -> int:
    """C, after checking the labels are 0..C-1 with every class present (the adapt graph assumes it)."""
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0:
        raise SystemExit("labels must be a non-empty list of class ids 0..C-1")
    c = int(labels.max()) + 1
    missing = sorted(set(range(c)) - set(labels.tolist()))
    if missing or c < 2:
        raise SystemExit(f"every class 0..{c - 1} needs an example (missing: {missing}), and at least two classes")
    return c


class Adaptable:
    """The three graphs of an adaptable folder and how to feed them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "metactl.json").read_text(encoding="utf-8"))
        if self.meta.get("kind") != "adaptable":
            raise SystemExit(f"{folder}: not a folder from `metactl export --adaptable`")
        self.prep = self.meta["preprocessing"]
        self.state = list(self.meta["io"].get("state") or [])
        self.embed, self.adapt_graph, self.classify_graph = (
            ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"]) for name in ("embed", "adapt", "classify")
        )
        self.text = self.meta["modality"] == "text"
        if self.text:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.tokenizer.no_padding()
            self.tokenizer.enable_truncation(int(self.prep["max_length"]))

    def inputs(self, items: list[str] | list[Path]) -> dict[str, np.ndarray]:
        """Texts -> token ids and attention mask (padded with 0 to the longest); image files -> raw pixels (batch, 1, size, size)."""
        if self.text:
            rows = [e.ids for e in self.tokenizer.encode_batch([str(t) for t in items])]
            width = max(len(r) for r in rows)
            ids = np.array([r + [0] * (width - len(r)) for r in rows], np.int64)
            return {"input_ids": ids, "attention_mask": (np.arange(width)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int64)}
        from PIL import Image

        size = int(self.prep["size"])
        pixels = [np.asarray(Image.open(p).convert("L").resize((size, size), Image.Resampling.LANCZOS), np.float32) for p in items]
        return {"pixels": np.stack(pixels)[:, None]}

    def adapt(self, items: list[str] | list[Path], labels: np.ndarray) -> dict[str, np.ndarray]:
        """Embed the support set (one call: an image model's statistics are the support's), then adapt: the head and statistics."""
        check_labels(labels)
        out = self.embed.run(None, self.inputs(items))
        weight, bias = self.adapt_graph.run(["weight", "bias"], {"features": out[0], "labels": labels.astype(np.int64)})
        return {"weight": weight, "bias": bias, **dict(zip(self.state, out[1:], strict=True))}

    def classify(self, head: dict[str, np.ndarray], items: list[str] | list[Path]) -> np.ndarray:
        return self.classify_graph.run(["probabilities"], {**self.inputs(items), **head})[0]


def read_support(folder: Path, text: bool) -> tuple[list[str], list[str] | list[Path], np.ndarray]:
    """(label names, examples, class ids) of a support folder: <label>.txt files (text) or <label>/ image folders."""
    if text:
        files = sorted(folder.glob("*.txt"))
        per_label = [[line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()] for f in files]
        names = [f.stem for f in files]
    else:
        dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        per_label = [sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")) for d in dirs]
        names = [d.name for d in dirs]
    examples = [x for xs in per_label for x in xs]
    labels = np.array([i for i, xs in enumerate(per_label) for _ in xs], np.int64)
    return names, examples, labels


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    model = Adaptable(Path(argv[0]))
    names, examples, labels = read_support(Path(argv[1]), model.text)
    if model.text and model.meta.get("label_names"):
        examples, labels = [*examples, *(readable(n) for n in names)], np.concatenate([labels, np.arange(len(names))])
    head = model.adapt(examples, labels)
    items = argv[2:] if model.text else [Path(a) for a in argv[2:]]
    for item, p in zip(items, model.classify(head, items), strict=True):
        print(json.dumps({"input": str(item), "label": names[int(p.argmax())], "probability": round(float(p.max()), 4)}, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1:])
