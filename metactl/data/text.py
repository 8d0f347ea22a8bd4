"""Text task sources: the intent benchmarks (``intents:DIR``) and a user's labeled texts (``text:PATH``).

Both tokenize with the backbone's ``tokenizer.json`` (``--backbone DIR``), once per text at ``open()``,
truncated at ``--max-length`` tokens (recorded in the preprocessing and the data spec). Episodes hold
``{"input_ids", "attention_mask"}`` int64 arrays ``(B, M, L)`` padded with 0 to the longest text of the
batch (never to a fixed length); after :meth:`ClassificationEpisodes.precompute` they hold ``{"features": (B, M, D)}``.

``intents:DIR``: ``DIR`` is the intents root (``clinc150/``, ``banking77/``, ``hwu64/`` beside each other)
or one dataset's folder. Only in-scope intents are used (CLINC150's ``oos`` is excluded). Protocols
(``--protocol``):

``domains`` (CLINC150 by domain; the default for the root and for ``clinc150/``). A fixed assignment of
CLINC150's 10 domains (``domains.json``, 15 intents each). The issue's "meta-train on 8, validate on 1,
test on 2" adds up to 11 domains; here the 8 non-test domains are 7 for meta-training and 1 for validation:

- meta-train (7 domains, 105 intents): banking, credit_cards, kitchen_and_dining, home, auto_and_commute,
  small_talk, meta; texts of the ``train`` split (100 per intent);
- validation (1 domain, 15 intents): work; texts of the ``train`` split (100 per intent: never
  meta-trained on, and 100 texts leave room for any shots + queries);
- test (2 domains, 30 intents; ``metactl evaluate``): travel, utility; texts of the ``test`` split (30 per
  intent). The ``val`` split of CLINC150 is not used.

``unseen-clinc150`` | ``unseen-banking77`` | ``unseen-hwu64`` (cross-dataset; needs the root): meta-train on
the ``train`` splits of the other two datasets, less ``--val-classes`` (default 10 %) of their intents,
drawn with ``--seed``, which validate (their ``train``-split texts); test = every intent of the unseen
dataset, texts of its ``test`` split. HWU64's test split has 3 to 19 texts per intent: shots + queries
above 3 leave ``iot_hue_lighton`` out, and 20 (5 shots + 15 queries) leave no intent, so evaluate it with
fewer queries. Intent names are ``dataset/intent`` (CLINC150 and BANKING77 both have an ``exchange_rate``).
``--protocol lake`` (the config's default, an Omniglot split) counts as no protocol given; ``vinyals`` is
an error.

One dataset's folder without a protocol (``intents:DIR/banking77``, ``intents:DIR/hwu64``): its intents
split by ``--val-classes`` like an image folder, ``train``-split texts; ``metactl evaluate`` on that run
uses the validation intents' ``test``-split texts. ``metactl evaluate --data intents:DIR`` with no
protocol takes every intent of ``DIR`` from the ``test`` splits.

``text:PATH`` (or a bare ``PATH`` ending in ``.csv``, ``.tsv`` or ``.jsonl``): a CSV/TSV with ``text`` and
``label`` columns, JSON lines with ``text`` and ``label`` keys, or a folder of ``<label>/**/*.txt`` (one text
per file) or ``<label>.txt`` (one text per non-empty line), read by :mod:`metactl.data.text_files` (adapt's
reader too). Labels split into train/validation by ``--val-classes`` (seeded), as for image folders.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from metactl.backbones import Backbone, backbone_pooling, resolve_backbone, text_classifier_spec
from metactl.data.episodes import ClassificationEpisodes, EpisodeBatch, split_classes
from metactl.data.label_names import label_texts
from metactl.data.sources import TaskData
from metactl.data.text_files import FORMATS_HINT, read_labeled_text_files, read_lines, read_table
from metactl.data.tokens import encode_rows as _encode
from metactl.data.tokens import load_tokenizer, pad, tokenize
from metactl.errors import MetactlError
from metactl.hidden import check_train_layers, pad_hidden

Progress = Callable[[int, int], None]
Texts = dict[str, list[str]]  # label -> its texts, in reading order
Arrays = dict[str, np.ndarray]

DATASETS = ("clinc150", "banking77", "hwu64")
INTENT_PROTOCOLS = ("domains", "unseen-clinc150", "unseen-banking77", "unseen-hwu64")
TRAIN_DOMAINS = ("banking", "credit_cards", "kitchen_and_dining", "home", "auto_and_commute", "small_talk", "meta")
VAL_DOMAINS = ("work",)
TEST_DOMAINS = ("travel", "utility")


# --- reading ------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """A whole benchmark file (CLINC150's JSON) as UTF-8 (a BOM is dropped); anything else is one error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MetactlError(f"{path}:{line}: not UTF-8.", "Save the file as UTF-8.") from None


def _add(texts: Texts, label: Any, text: Any, where: str) -> None:
    """One benchmark text (stripped; an empty one is left out) under its label (stripped, not empty)."""
    label, text = str(label).strip(), str(text).strip()
    if not label:
        raise MetactlError(f"{where}: empty label.", "Give every text a label.")
    if text:
        texts.setdefault(label, []).append(text)


def read_labeled_texts(path: Path, spec: str) -> Texts:
    """A user's labeled texts (``--data text:PATH``), label -> texts with labels sorted by code point,
    read by :func:`metactl.data.text_files.read_labeled_text_files` (adapt's reader too)."""
    if not path.exists():
        raise MetactlError(f"--data {spec}: no such file or folder.", FORMATS_HINT)
    return read_labeled_text_files(path, "--data").texts()


# --- the intent benchmarks ----------------------------------------------------------------------


def _dataset_kind(folder: Path) -> str | None:
    if (folder / "data_full.json").is_file() and (folder / "domains.json").is_file():
        return "clinc150"
    if (folder / "train.csv").is_file() and (folder / "test.csv").is_file():
        return "banking77"
    if (folder / "split" / "train" / "seq.in").is_file():
        return "hwu64"
    return None


def find_datasets(root: Path, spec: str) -> dict[str, Path]:
    """The benchmark folders under ``root`` (the intents root), or ``root`` itself (one dataset's folder)."""
    if not root.is_dir():
        raise MetactlError(f"--data {spec}: no such folder.", "Point at the intents root (clinc150/, banking77/, hwu64/) or one of those folders.")
    kind = _dataset_kind(root)
    if kind is not None:
        return {kind: root}
    found = {name: root / name for name in DATASETS if (root / name).is_dir() and _dataset_kind(root / name) == name}
    if not found:
        raise MetactlError(
            f"--data {spec}: no CLINC150 (data_full.json, domains.json), BANKING77 (train.csv, test.csv) or HWU64 (split/train/seq.in) files found.",
            "Point at the intents root (clinc150/, banking77/, hwu64/) or one of those folders.",
        )
    return found


def _json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise MetactlError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).", "Restore the file from the dataset's source.") from None


def load_clinc150(folder: Path) -> dict[str, Texts]:
    """CLINC150 "Full": ``train``/``val``/``test`` -> intent -> texts, in-scope only (``oos`` excluded)."""
    data = _json(folder / "data_full.json")
    out: dict[str, Texts] = {}
    for split in ("train", "val", "test"):
        texts: Texts = {}
        for n, pair in enumerate(data.get(split, [])):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise MetactlError(f"{folder / 'data_full.json'}: {split}[{n}] is not a [text, intent] pair.", "Restore the file from the dataset's source.")
            if pair[1] != "oos":
                _add(texts, pair[1], pair[0], f"{folder / 'data_full.json'}: {split}[{n}]")
        out[split] = texts
    return out


def clinc150_domains(folder: Path) -> dict[str, list[str]]:
    """CLINC150's ``domains.json``: domain -> its 15 intents."""
    domains = _json(folder / "domains.json")
    missing = [d for d in (*TRAIN_DOMAINS, *VAL_DOMAINS, *TEST_DOMAINS) if d not in domains]
    if missing:
        raise MetactlError(f"{folder / 'domains.json'}: no domain {', '.join(missing)}.", "Restore the file from the dataset's source.")
    return {str(k): [str(i) for i in v] for k, v in domains.items()}


def load_banking77(folder: Path) -> dict[str, Texts]:
    """BANKING77: ``train``/``test`` -> intent -> texts (``text``, ``category`` columns; texts stripped)."""
    out: dict[str, Texts] = {}
    for split in ("train", "test"):
        found = read_table(folder / f"{split}.csv", "--data", "category")  # the reader of text:FILE.csv
        out[split] = {intent: [text for text, _ in rows] for intent, rows in found.items()}
    return out


def load_hwu64(folder: Path) -> dict[str, Texts]:
    """HWU64 (DialoGLUE split): ``train``/``val``/``test`` (the ``valid`` folder) -> intent -> texts."""
    out: dict[str, Texts] = {}
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        seq, lab = folder / "split" / name / "seq.in", folder / "split" / name / "label"
        if not seq.is_file():
            continue
        lines, labels = [line for _, line in read_lines(seq, "--data")], [line for _, line in read_lines(lab, "--data")]
        if len(lines) != len(labels):
            raise MetactlError(f"{seq}: {len(lines)} lines but {lab} has {len(labels)}.", "Restore the files from the dataset's source.")
        texts: Texts = {}
        for n, (text, label) in enumerate(zip(lines, labels, strict=True), start=1):
            _add(texts, label, text, f"{lab}: line {n}")
        out[split] = texts
    return out


LOADERS: dict[str, Callable[[Path], dict[str, Texts]]] = {"clinc150": load_clinc150, "banking77": load_banking77, "hwu64": load_hwu64}


def intents_protocol(protocol: str | None, found: dict[str, Path], spec: str) -> str | None:
    """The intents protocol to use: ``protocol`` if it is one, the default for ``found`` otherwise
    (``lake``, the config's default, counts as not given). None: intents split by --val-classes."""
    hint = "Use --protocol domains (CLINC150) or unseen-clinc150 | unseen-banking77 | unseen-hwu64 (with the intents root)."
    if protocol in (None, "lake"):
        return "domains" if "clinc150" in found else None
    if protocol not in INTENT_PROTOCOLS:
        raise MetactlError(f"--protocol {protocol} is not a protocol of --data {spec}.", hint)
    if protocol == "domains" and "clinc150" not in found:
        raise MetactlError(f"--protocol domains splits CLINC150 by domain; --data {spec} has no CLINC150.", "Point at the intents root or clinc150/.")
    if protocol.startswith("unseen-") and set(found) != set(DATASETS):
        raise MetactlError(
            f"--protocol {protocol} needs all three datasets; --data {spec} has {', '.join(sorted(found))}.",
            "Point at the intents root holding clinc150/, banking77/ and hwu64/.",
        )
    return protocol


def _named(loaded: dict[str, dict[str, Texts]], split: str, prefix: bool) -> Texts:
    """Intents of ``split`` of the ``loaded`` datasets, named ``dataset/intent`` with ``prefix``."""
    return {(f"{d}/{i}" if prefix else i): t for d in sorted(loaded) for i, t in loaded[d][split].items()}


def _load(found: dict[str, Path], names: Iterable[str]) -> dict[str, dict[str, Texts]]:
    return {name: LOADERS[name](found[name]) for name in names}


def _domain_part(found: dict[str, Path]) -> Callable[[tuple[str, ...], str], Texts]:
    """``part(domains, split)``: CLINC150's intents of those domains (in ``domains.json`` order), ``split`` texts."""
    clinc, domains = load_clinc150(found["clinc150"]), clinc150_domains(found["clinc150"])

    def part(names: tuple[str, ...], split: str) -> Texts:
        missing = [i for d in names for i in domains[d] if i not in clinc[split]]
        if missing:
            raise MetactlError(
                f"{found['clinc150'] / 'data_full.json'}: no {split} examples of intent {', '.join(missing[:3])}"
                f"{' …' if len(missing) > 3 else ''}, which domains.json lists.",
                "Restore both files from the dataset's source (they must be the same release).",
            )
        return {i: clinc[split][i] for d in names for i in domains[d]}

    return part


def protocol_texts(found: dict[str, Path], protocol: str | None, val_fraction: float = 0.1, seed: int = 0, ways: int = 2) -> dict[str, Texts]:
    """``train``/``val``/``test`` -> intent -> texts for ``protocol`` (see the module docstring).
    ``val_fraction``, ``seed`` and ``ways`` choose the validation intents where the protocol draws them."""
    if protocol == "domains":
        part = _domain_part(found)
        return {"train": part(TRAIN_DOMAINS, "train"), "val": part(VAL_DOMAINS, "train"), "test": part(TEST_DOMAINS, "test")}
    if protocol is not None:
        unseen = protocol.removeprefix("unseen-")
        pooled = _named(_load(found, [d for d in DATASETS if d != unseen]), "train", True)
        test = _named(_load(found, [unseen]), "test", True)
    else:
        loaded = _load(found, found)
        pooled, test = _named(loaded, "train", len(found) > 1), _named(loaded, "test", len(found) > 1)
    names = sorted(pooled)
    train_ids, val_ids = split_classes(len(names), val_fraction, seed, ways)
    return {"train": {names[i]: pooled[names[i]] for i in train_ids}, "val": {names[i]: pooled[names[i]] for i in val_ids}, "test": test}


def evaluation_texts(found: dict[str, Path], protocol: str | None, split: str = "test") -> Texts:
    """The texts ``metactl evaluate`` samples: the protocol's test intents (``test`` split); without a
    protocol every intent of ``found``, from the ``test`` splits. ``split="train"``: the same intents'
    ``train``-split texts (where ``--all-classes`` draws its support examples)."""
    if protocol == "domains":
        return _domain_part(found)(TEST_DOMAINS, split)
    if protocol is not None:
        return _named(_load(found, [protocol.removeprefix("unseen-")]), split, True)
    return _named(_load(found, found), split, len(found) > 1)


# --- backbone and tokenizer ---------------------------------------------------------------------


def _backbone(backbone: str | None, spec: str) -> Backbone:
    """``--backbone`` through the one resolver (a folder, a run dir or a Hugging Face hub id)."""
    if backbone is None:
        raise MetactlError(
            f"--data {spec} needs --backbone DIR (the pretrained encoder whose tokenizer reads the texts).",
            "Pass a Hugging Face folder with tokenizer.json or a hub id, e.g. --backbone sentence-transformers/all-MiniLM-L6-v2.",
        )
    return resolve_backbone(backbone)


def tokenizer_file(backbone: str | None, spec: str) -> Path:
    """``tokenizer.json`` of ``--backbone`` (a metactl run dir: that of the backbone it records)."""
    found = _backbone(backbone, spec)
    if found.tokenizer is None:
        raise MetactlError(
            f"--backbone {backbone}: no tokenizer.json in {found.folder}.",
            "Use a Hugging Face folder with a fast tokenizer (tokenizer.json); metactl does not build one from vocab.txt.",
        )
    return found.tokenizer


def text_preprocessing(tokenizer: Path, max_length: int) -> dict[str, Any]:
    """The preprocessing a text run records (read by adapt, export and predict)."""
    return {"kind": "text", "tokenizer": str(tokenizer), "max_length": max_length}


def text_model_spec(cfg: Any) -> dict[str, Any]:
    """The ``text-classifier`` spec for ``cfg`` (a TrainConfig with ``backbone`` set): see
    :func:`metactl.backbones.text_classifier_spec` (``backbone_source`` too when it names a hub id)."""
    found = _backbone(cfg.backbone, cfg.data)
    spec = text_classifier_spec(found, cfg.ways, cfg.adapt, cfg.lora_rank, cfg.train_body, cfg.max_length)
    k = getattr(cfg, "train_layers", None)
    if k is not None:  # the top K layers train: checked against the encoder's depth before any run folder exists
        check_train_layers(k, found.folder)
        spec["train_layers"] = int(k)
    return spec


# --- pools and episodes -------------------------------------------------------------------------


class TextPool:
    """Labeled texts, tokenized once: per class a list of token id rows (and, after :meth:`precompute`,
    a float32 feature row per text, which :meth:`take` then gives instead of the tokens). A
    :class:`~metactl.data.episodes.ClassPool`: :class:`ClassificationEpisodes` samples it as it samples images."""

    unit: ClassVar[str] = "texts"

    def __init__(self, labels: list[str], rows: list[list[np.ndarray]], truncated: int = 0) -> None:
        self.labels, self.rows, self.truncated = labels, rows, truncated
        self.features: list[np.ndarray] | None = None
        self.hidden: list[list[np.ndarray]] | None = None  # --train-layers: per class, each text's cached (tokens, D) lower-layer states
        self.hidden_tag = 0  # the body that computed them (metactl.hidden.body_tag)

    @classmethod
    def from_texts(cls, texts: Texts, tokenizer: Tokenizer, max_length: int) -> TextPool:
        labels = list(texts)
        flat = [t for label in labels for t in texts[label]]
        encoded, truncated = _encode(tokenizer, flat, max_length)
        rows, start = [], 0
        for label in labels:
            rows.append(encoded[start : start + len(texts[label])])
            start += len(texts[label])
        return cls(labels, rows, truncated)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def count(self, c: int) -> int:
        return len(self.rows[c])

    def names(self) -> list[str]:
        return list(self.labels)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows)

    def take(self, picks: list[tuple[int, np.ndarray]]) -> Arrays:
        """The examples ``(class, indices)`` in order: features (n, D), or tokens padded to their longest."""
        if self.features is not None:
            feats = self.features
            return {"features": np.concatenate([feats[c][idx] for c, idx in picks])}
        if self.hidden is not None:
            return pad_hidden([self.hidden[c][int(i)] for c, idx in picks for i in idx], self.hidden_tag)
        return pad([self.rows[c][int(i)] for c, idx in picks for i in idx])

    def get(self, c: int) -> Arrays:
        return self.take([(c, np.arange(self.count(c)))])

    def subset(self, ids: list[int]) -> TextPool:
        pool = TextPool([self.labels[i] for i in ids], [self.rows[i] for i in ids])
        if self.features is not None:
            pool.features = [self.features[i] for i in ids]
        if self.hidden is not None:
            pool.hidden, pool.hidden_tag = [self.hidden[i] for i in ids], self.hidden_tag
        return pool

    def _by_length(self) -> list[tuple[int, int]]:
        return sorted(((c, i) for c in range(self.num_classes) for i in range(self.count(c))), key=lambda ci: len(self.rows[ci[0]][ci[1]]))

    def precompute_hidden(self, fn: Callable[[Arrays], Any], tag: int, batch_size: int = 128, progress: Progress | None = None) -> None:
        """Cache each text's frozen lower-layer hidden states (``--train-layers``): ``fn`` maps padded
        ``{"input_ids", "attention_mask"}`` (n, L) to (n, L, D); each text keeps its own unpadded rows,
        computed once, ``batch_size`` texts at a time in order of length. From now on :meth:`take` gives
        ``{"hidden", "attention_mask", "body"}`` (:func:`metactl.hidden.pad_hidden`), tagged ``tag``.
        A pool whose states carry ``tag`` already is left as it is."""
        if self.hidden is not None and self.hidden_tag == tag:
            return
        order = self._by_length()
        hidden: list[list[np.ndarray]] = [[np.empty((0, 0), np.float32)] * self.count(c) for c in range(self.num_classes)]
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out = np.asarray(fn(pad([self.rows[c][i] for c, i in chunk])), dtype=np.float32)
            for (c, i), row in zip(chunk, out, strict=True):
                hidden[c][i] = row[: len(self.rows[c][i])].copy()
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
        self.hidden, self.hidden_tag = hidden, tag

    def precompute(self, fn: Callable[[Arrays], Any], batch_size: int = 256, progress: Progress | None = None) -> None:
        """Replace every text by ``fn`` of its tokens (a float32 row), computed once, ``batch_size``
        texts at a time, in order of length (little padding). ``fn`` maps ``{"input_ids",
        "attention_mask"}`` (n, L) to an (n, D) array."""
        order = self._by_length()
        feats: list[np.ndarray | None] = [None] * self.num_classes
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out = np.asarray(fn(pad([self.rows[c][i] for c, i in chunk])), dtype=np.float32)
            if out.ndim != 2 or out.shape[0] != len(chunk):
                raise ValueError(f"precompute: fn gave shape {out.shape} for {len(chunk)} texts; expected ({len(chunk)}, D)")
            for (c, i), row in zip(chunk, out, strict=True):
                if feats[c] is None:
                    feats[c] = np.empty((self.count(c), out.shape[1]), dtype=np.float32)
                feats[c][i] = row  # type: ignore[index]
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
        self.features = [f if f is not None else np.empty((0, 0), dtype=np.float32) for f in feats]


class DomainEpisodes(ClassificationEpisodes):
    """Whole-domain episodes (``metactl evaluate --by-domain``): each episode's classes are every intent
    of one domain (``groups``: pool indices per domain, all of one size), the domain drawn at random
    per episode; then K + Q texts per intent as :class:`ClassificationEpisodes` draws them."""

    def __init__(self, pool: TextPool, groups: dict[str, list[int]], shots: int, queries: int, what: str = "evaluation") -> None:
        sizes = {len(g) for g in groups.values()}
        if len(sizes) != 1:
            raise MetactlError(f"--by-domain: the domains have different numbers of intents ({sorted(sizes)}).", "Use domains of one size.")
        super().__init__(pool, sizes.pop(), shots, queries, what)
        short = [pool.labels[c] for g in groups.values() for c in g if c not in set(self.eligible.tolist())]
        if short:
            raise MetactlError(
                f"--by-domain: intent {', '.join(short[:3])} has fewer than {shots + queries} texts (shots {shots} + query-shots {queries}).",
                "Lower --shots or --query-shots.",
            )
        self.domains = list(groups)
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups.values()]

    def classes(self, rng: np.random.Generator) -> np.ndarray:
        return self.groups[int(rng.integers(len(self.groups)))]


ALL_CLASSES_STREAM = 2  # the random stream of --all-classes draws (0: training, 1: evaluation episodes)


class AllClassesEpisodes:
    """Every class at once (``metactl evaluate --all-classes``), the few-shot intent papers' setting.

    Draw ``d`` holds ``shots`` support texts per class of ``support``, picked by a generator seeded with
    ``(seed, d)`` only, so draw ``d`` is the same for every run, every ``--episodes`` and every call. Its
    queries are every text of ``query`` (a dataset's whole ``test`` split: the same for every draw), or,
    without ``query``, every text of ``support`` not drawn as support in that draw. Labels are the
    indices of ``support``'s classes; ``query`` may not name a class ``support`` lacks. Queries are
    ordered by length, so that predicting them ``query_chunk`` at a time pads little.

    After :meth:`precompute` (a frozen body) texts are features: every query text once, and the support
    texts of each draw when the draw is made (only the texts drawn are encoded)."""

    query_chunk: ClassVar[int] = 256

    def __init__(self, support: TextPool, query: TextPool | None, shots: int, what: str = "evaluation", names: TextPool | None = None) -> None:
        if shots < 1:
            raise MetactlError(f"--shots must be >= 1 (got {shots}).", "Pass a positive number of support texts per class.")
        need = shots + (0 if query is not None else 1)
        short = [label for c, label in enumerate(support.labels) if support.count(c) < need]
        if short:
            more = f" ({len(short)} in all)" if len(short) > 3 else ""
            raise MetactlError(
                f"The {what} data has fewer than {need} texts for intent {', '.join(short[:3])}{more}: --shots {shots} needs {need}.", "Lower --shots."
            )
        index = {label: c for c, label in enumerate(support.labels)}
        if query is not None:
            unknown = [label for label in query.labels if label not in index]
            if unknown:
                raise MetactlError(f"The {what} test texts have intents with no training texts: {', '.join(unknown[:3])}.", "Check the dataset files.")
            self.query_labels = np.array([index[label] for label in query.labels], dtype=np.int64)
        self.support, self.query, self.shots, self.what = support, query, shots, what
        self.names = names  # --label-names: one text per class of ``support``, its readable name, added to every draw's support
        self.ways = support.num_classes
        self._fn: Callable[[Arrays], Any] | None = None
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._queries: tuple[Arrays, np.ndarray] | None = None

    def __len__(self) -> int:
        """Query texts per draw (the whole query set; without one, those left after the support)."""
        if self.query is not None:
            return len(self.query)
        return len(self.support) - self.ways * self.shots

    def precompute(self, fn: Callable[[Arrays], Any], batch_size: int = 256, progress: Progress | None = None) -> None:
        """From now on draws hold ``{"features": fn(tokens)}`` (an (n, D) float32 array per text)."""
        self._fn = fn
        (self.query or self.support).precompute(fn, batch_size, progress)
        if self.names is not None:
            self.names.precompute(fn, batch_size)
        self._queries = None

    def precompute_hidden(self, fn: Callable[[Arrays], Any], tag: int, batch_size: int = 128, progress: Progress | None = None) -> None:
        """From now on draws hold cached lower-layer hidden states (:meth:`TextPool.precompute_hidden`)."""
        for pool in (self.support, self.query, self.names):
            if pool is not None:
                pool.precompute_hidden(fn, tag, batch_size, progress)
        self._queries = None

    def with_shots(self, shots: int) -> AllClassesEpisodes:
        """The same classes and queries with ``shots`` support texts per class, sharing the texts'
        features computed so far (a benchmark scores K = 1, 5, 10 on one pass over the test split)."""
        other = AllClassesEpisodes(self.support, self.query, shots, self.what, self.names)
        other._fn, other._cache, other._queries = self._fn, self._cache, self._queries
        return other

    def picks(self, seed: int, d: int) -> list[np.ndarray]:
        """Draw ``d``'s support: per class, the indices of its ``shots`` texts in ``support``."""
        rng = np.random.default_rng([seed, ALL_CLASSES_STREAM, d])
        return [np.sort(rng.choice(self.support.count(c), size=self.shots, replace=False)) for c in range(self.ways)]

    def _support_x(self, picks: list[np.ndarray]) -> Arrays:
        if self._fn is None or self.query is None:  # tokens, or a pool whose every text is features already
            return self.support.take(list(enumerate(picks)))
        todo = [(c, int(i)) for c, idx in enumerate(picks) for i in idx if (c, int(i)) not in self._cache]
        todo.sort(key=lambda ci: len(self.support.rows[ci[0]][ci[1]]))
        for start in range(0, len(todo), 256):
            chunk = todo[start : start + 256]
            out = np.asarray(self._fn(pad([self.support.rows[c][i] for c, i in chunk])), dtype=np.float32)
            self._cache.update(zip(chunk, out, strict=True))
        return {"features": np.stack([self._cache[(c, int(i))] for c, idx in enumerate(picks) for i in idx])}

    def _query_xy(self, picks: list[np.ndarray]) -> tuple[Arrays, np.ndarray]:
        if self.query is not None:
            if self._queries is None:
                pool = self.query
                order = sorted(((c, i) for c in range(pool.num_classes) for i in range(pool.count(c))), key=lambda ci: len(pool.rows[ci[0]][ci[1]]))
                x = pool.take([(c, np.array([i])) for c, i in order])
                self._queries = (x, np.array([self.query_labels[c] for c, _ in order], dtype=np.int64))
            return self._queries
        pool = self.support
        rest = [(c, i) for c in range(self.ways) for i in np.setdiff1d(np.arange(pool.count(c)), picks[c])]
        rest.sort(key=lambda ci: len(pool.rows[ci[0]][int(ci[1])]))
        return pool.take([(c, np.array([i])) for c, i in rest]), np.array([c for c, _ in rest], dtype=np.int64)

    def draw(self, seed: int, d: int) -> EpisodeBatch:
        """Draw ``d`` as an episode batch of one task: support (1, N*K, ...), class-major; queries (1, Q, ...)."""
        picks = self.picks(seed, d)
        sx = {k: v[None] for k, v in self._support_x(picks).items()}
        qx, qy = self._query_xy(picks)
        shots = self.shots
        if self.names is not None:  # each class's name after its K texts
            sx, shots = with_names(sx, self.names.take([(c, np.array([0])) for c in range(self.ways)]), 1, self.ways, shots), shots + 1
        sy = np.repeat(np.arange(self.ways), shots).astype(np.int64)
        return EpisodeBatch(sx, sy[None], {k: v[None] for k, v in qx.items()}, qy[None], np.arange(self.ways)[None])


# --- label names as extra support (--label-names) -------------------------------------------------


def names_pool(labels: list[str], tokenizer: Tokenizer, max_length: int) -> TextPool:
    """One text per label, its readable name (:mod:`metactl.data.label_names`), in the order of ``labels``."""
    return TextPool.from_texts(dict(zip(labels, ([n] for n in label_texts(labels)), strict=True)), tokenizer, max_length)


def with_names(support: Arrays, names: Arrays, tasks: int, ways: int, shots: int) -> Arrays:
    """Support arrays (tasks, ways * shots, ...) class-major, with each class's name (``names``: (tasks * ways,
    ...)) after its ``shots`` examples: (tasks, ways * (shots + 1), ...). Token arrays of different lengths
    are padded with 0 to the longer (padding under a zero attention mask)."""
    out = {}
    for key, v in support.items():
        a, b = v.reshape(tasks, ways, shots, *v.shape[2:]), names[key].reshape(tasks, ways, 1, *names[key].shape[1:])
        width = [max(x, y) for x, y in zip(a.shape[3:], b.shape[3:], strict=True)]
        a, b = (np.pad(x, [(0, 0)] * 3 + [(0, w - d) for w, d in zip(width, x.shape[3:], strict=True)]) for x in (a, b))
        out[key] = np.concatenate([a, b], axis=2).reshape(tasks, ways * (shots + 1), *width)
    return out


class NamedEpisodes(ClassificationEpisodes):
    """:class:`ClassificationEpisodes` whose support holds, after each class's K texts, its readable name
    (``--label-names``): K + 1 support examples per class, class-major. The texts drawn are those of the
    plain sampler (the same random calls), so a run with names sees the same texts as one without."""

    def __init__(self, pool: TextPool, ways: int, shots: int, queries: int, names: TextPool, what: str = "training") -> None:
        super().__init__(pool, ways, shots, queries, what)
        self.names = names

    def precompute(self, fn: Callable[[Arrays], Any], batch_size: int = 256, progress: Progress | None = None) -> None:
        super().precompute(fn, batch_size, progress)
        self.names.precompute(fn, batch_size)

    def precompute_hidden(self, fn: Callable[[Arrays], Any], tag: int, batch_size: int = 128, progress: Progress | None = None) -> None:
        super().precompute_hidden(fn, tag, batch_size, progress)
        self.names.precompute_hidden(fn, tag, batch_size)

    def sample(self, rng: np.random.Generator, tasks: int) -> EpisodeBatch:
        b = super().sample(rng, tasks)
        assert b.classes is not None and isinstance(b.support_x, dict)
        names = self.names.take([(int(c), np.array([0])) for c in b.classes.reshape(-1)])
        k = self.shots + 1
        sy = np.broadcast_to(np.repeat(np.arange(self.ways), k), (tasks, self.ways * k)).astype(np.int64)
        return EpisodeBatch(with_names(b.support_x, names, tasks, self.ways, self.shots), sy, b.query_x, b.query_y, b.classes)


# --- harder training episodes: classes by similarity or by domain (--episode-classes) ------------------

Centroids = Callable[[Arrays], Any]  # what a pool's take() gives -> (n, D) features of the starting body


def class_centroids(pool: TextPool, fn: Centroids, batch_size: int = 256, progress: Progress | None = None) -> np.ndarray:
    """(classes, D) float32: each class's mean of ``fn`` over its texts, ``batch_size`` texts at a time in
    order of length. ``fn`` takes what :meth:`TextPool.take` gives (tokens, cached hidden states or features)."""
    order = sorted(((c, i) for c in range(pool.num_classes) for i in range(pool.count(c))), key=lambda ci: len(pool.rows[ci[0]][ci[1]]))
    sums: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out = np.asarray(fn(pool.take([(c, np.array([i])) for c, i in chunk])), dtype=np.float64)
        if sums is None:
            sums = np.zeros((pool.num_classes, out.shape[1]))
        np.add.at(sums, np.array([c for c, _ in chunk]), out)
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    counts = np.maximum([pool.count(c) for c in range(pool.num_classes)], 1)
    return (sums / counts[:, None]).astype(np.float32) if sums is not None else np.zeros((pool.num_classes, 0), np.float32)


class NearestClasses:
    """``--episode-classes nearest``: an anchor class drawn at random, then ``ways`` − 1 classes drawn at random
    among its 2·(``ways`` − 1) nearest (cosine similarity of the class centroids, :meth:`prepare`), in random
    order. Only ``eligible`` classes (those of the training pool with K + Q texts) are ever drawn."""

    def __init__(self, pool: TextPool, eligible: np.ndarray, ways: int) -> None:
        self.eligible, self.ways = eligible, ways
        self.nearest: np.ndarray | None = None  # per eligible class, the positions in ``eligible`` of its nearest, nearest first

    def prepare(self, pool: TextPool, fn: Centroids, batch_size: int = 256, progress: Progress | None = None) -> None:
        """The neighbours of each class, by the centroids of ``fn`` (the body as training starts) over ``pool``."""
        c = class_centroids(pool, fn, batch_size, progress)[self.eligible].astype(np.float64)
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        sim = c @ c.T
        np.fill_diagonal(sim, -np.inf)
        m = min(2 * (self.ways - 1), len(self.eligible) - 1)
        self.nearest = np.argsort(-sim, axis=1, kind="stable")[:, :m]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.nearest is None:
            raise RuntimeError("--episode-classes nearest: the class centroids were not computed (call precompute_centroids first)")
        anchor = int(rng.integers(len(self.eligible)))
        near = rng.choice(self.nearest[anchor], size=self.ways - 1, replace=False)
        return rng.permutation(self.eligible[np.concatenate([[anchor], near])])


class DomainClasses:
    """``--episode-classes domain``: one domain drawn at random among those with at least ``ways`` eligible
    classes, then ``ways`` of its classes. When no domain has that many, whole domains in random order fill
    the episode (the last one in part). ``domains``: label -> domain (:func:`intent_domains`)."""

    def __init__(self, pool: TextPool, eligible: np.ndarray, ways: int, domains: dict[str, str] | None, spec: str) -> None:
        hint = "Use --episode-classes random or nearest, or intents:DIR data with CLINC150 or HWU64 (their domains)."
        if domains is None:
            raise MetactlError(f"--episode-classes domain draws each episode within one domain; --data {spec} has no domains.", hint)
        groups: dict[str, list[int]] = {}
        for c in eligible.tolist():
            groups.setdefault(domains[pool.labels[c]], []).append(int(c))
        if len(groups) < 2:
            raise MetactlError(f"--episode-classes domain: the training intents of --data {spec} are all of one domain ({', '.join(groups)}).", hint)
        self.ways = ways
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups.values()]
        self.full = [g for g in self.groups if len(g) >= ways]

    def prepare(self, pool: TextPool, fn: Centroids, batch_size: int = 256, progress: Progress | None = None) -> None:
        """Nothing: domains need no features."""

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.full:
            return rng.choice(self.full[int(rng.integers(len(self.full)))], size=self.ways, replace=False)
        order = rng.permutation(len(self.groups))
        return rng.permutation(np.concatenate([rng.permutation(self.groups[i]) for i in order])[: self.ways])


def intent_domains(found: dict[str, Path], protocol: str | None, labels: list[str]) -> dict[str, str]:
    """label -> its domain: CLINC150's (``domains.json``), HWU64's scenario (its intents are
    ``<scenario>_<intent>``), BANKING77's one (banking); ``dataset/intent`` labels get ``dataset/domain``."""
    clinc = {i: d for d, intents in clinc150_domains(found["clinc150"]).items() for i in intents} if "clinc150" in found else {}
    bare = "clinc150" if protocol == "domains" else next(iter(found))  # unprefixed labels: one dataset's
    out: dict[str, str] = {}
    for label in labels:
        dataset, _, intent = label.rpartition("/")
        kind = dataset or bare
        domain = clinc[intent] if kind == "clinc150" else intent.split("_", 1)[0] if kind == "hwu64" else "banking"
        out[label] = f"{dataset}/{domain}" if dataset else domain
    return out


class _ChosenClasses:
    """Mixin of the training samplers of ``--episode-classes nearest|domain``: after the base sampler's checks,
    ``choice(pool, eligible, ways)`` (:class:`NearestClasses`, :class:`DomainClasses`) draws each episode's
    classes; the K + Q texts per class are drawn as before."""

    pool: TextPool
    eligible: np.ndarray
    ways: int

    def __init__(self, *args: Any, choice: Callable[[TextPool, np.ndarray, int], NearestClasses | DomainClasses], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]  # the sampler class after this mixin
        self.choice = choice(self.pool, self.eligible, self.ways)

    def classes(self, rng: np.random.Generator) -> np.ndarray:
        return self.choice.draw(rng)

    def precompute_centroids(self, fn: Centroids, batch_size: int = 256, progress: Progress | None = None) -> None:
        """What the choice needs from the body as training starts (``nearest``: the class centroids of ``fn``)."""
        self.choice.prepare(self.pool, fn, batch_size, progress)


class ChosenEpisodes(_ChosenClasses, ClassificationEpisodes):
    """Training episodes whose classes ``--episode-classes nearest|domain`` chooses (:class:`_ChosenClasses`)."""


class NamedChosenEpisodes(_ChosenClasses, NamedEpisodes):
    """:class:`ChosenEpisodes` with each class's readable name as one more support example (``--label-names``)."""


def text_episodes(
    cfg: Any, train: TextPool, val: TextPool, tokenizer: Tokenizer, domains: dict[str, str] | None = None
) -> tuple[ClassificationEpisodes, ClassificationEpisodes]:
    """The training and validation samplers of a text source: with ``cfg.label_names`` each class's name
    is one more support example (every label checked first: one without a word is an error). With
    ``cfg.episode_classes`` nearest or domain (``domains``: label -> domain) the training episodes' classes
    are chosen so; validation episodes stay random."""
    how = cfg.episode_classes
    choice: Any = NearestClasses if how == "nearest" else partial(DomainClasses, domains=domains, spec=cfg.data)
    if not cfg.label_names:
        val_episodes = ClassificationEpisodes(val, cfg.ways, cfg.shots, cfg.query_shots, "validation")
        if how == "random":
            return ClassificationEpisodes(train, cfg.ways, cfg.shots, cfg.query_shots), val_episodes
        return ChosenEpisodes(train, cfg.ways, cfg.shots, cfg.query_shots, choice=choice), val_episodes
    label_texts([*train.labels, *val.labels])
    names = names_pool(train.labels, tokenizer, cfg.max_length)
    val_episodes = NamedEpisodes(val, cfg.ways, cfg.shots, cfg.query_shots, names_pool(val.labels, tokenizer, cfg.max_length), "validation")
    if how == "random":
        return NamedEpisodes(train, cfg.ways, cfg.shots, cfg.query_shots, names), val_episodes
    return NamedChosenEpisodes(train, cfg.ways, cfg.shots, cfg.query_shots, names, choice=choice), val_episodes


def named_all_classes(sampler: Any, meta: dict[str, Any]) -> AllClassesEpisodes:
    """An all-classes sampler of a text run with each class's readable name added to every draw's support
    (``metactl evaluate --all-classes --label-names``); the texts drawn are the same as without names."""
    if not isinstance(sampler, AllClassesEpisodes):
        raise MetactlError("--label-names adds each intent's name to the support: text runs only.", "Drop --label-names.")
    tok, length = _text_run(meta, "--label-names")
    names = names_pool(sampler.support.labels, tok, length)
    return AllClassesEpisodes(sampler.support, sampler.query, sampler.shots, sampler.what, names)


def all_classes_validation(sampler: Any, shots: int) -> AllClassesEpisodes:
    """Every class of a text validation sampler at once (``--val-all-classes``): draws of ``shots`` support
    texts per class, the rest its queries, as ``metactl evaluate --all-classes --split val`` draws them;
    with the sampler's label names (:class:`NamedEpisodes`) added to each draw's support."""
    pool = getattr(sampler, "pool", None)
    if not isinstance(pool, TextPool):
        raise MetactlError("--val-all-classes validates on every validation class of text data at once.", "Use it with intents:DIR or text:PATH data.")
    return AllClassesEpisodes(pool, None, shots, "validation", sampler.names if isinstance(sampler, NamedEpisodes) else None)


# --- the sources --------------------------------------------------------------------------------


def _text_run(meta: dict[str, Any], spec: str) -> tuple[Tokenizer, int]:
    """The tokenizer a text run records, and its ``max_length`` (a MetactlError for a run of other data)."""
    prep = meta.get("preprocessing") or {}
    if prep.get("kind") != "text":
        raise MetactlError(f"--data {spec}: this run was not trained on text.", "Evaluate it on the kind of data it was trained on.")
    length = int(prep["max_length"])
    return load_tokenizer(Path(prep["tokenizer"]), length), length


def _same_path(path: Path, recorded: dict[str, Any], kind: str) -> bool:
    return recorded.get("kind") == kind and str(path.expanduser().resolve()) == recorded.get("path")


def _counts(parts: dict[str, Texts]) -> tuple[dict[str, int], dict[str, int]]:
    return {k: len(v) for k, v in parts.items()}, {k: sum(len(t) for t in v.values()) for k, v in parts.items()}


class Intents:
    """``intents:DIR``: CLINC150, BANKING77 and HWU64 by ``--protocol`` (see :mod:`metactl.data.text`)."""

    name: ClassVar[str] = "intents"
    takes_argument: ClassVar[bool] = True

    def open(self, cfg: Any, arg: str | None, progress: Progress | None) -> TaskData:
        spec = f"intents:{arg}"
        tok_file = tokenizer_file(cfg.backbone, spec)
        root = Path(str(arg)).expanduser()
        found = find_datasets(root, spec)
        protocol = intents_protocol(cfg.protocol, found, spec)
        parts = protocol_texts(found, protocol, cfg.val_classes, cfg.seed, cfg.ways)
        tok = load_tokenizer(tok_file, cfg.max_length)
        train, val = (TextPool.from_texts(parts[p], tok, cfg.max_length) for p in ("train", "val"))
        domains = intent_domains(found, protocol, train.labels) if cfg.episode_classes == "domain" else None
        train_episodes, val_episodes = text_episodes(cfg, train, val, tok, domains)
        intents, texts = _counts(parts)
        test = list(TEST_DOMAINS) if protocol == "domains" else (f"all {protocol.removeprefix('unseen-')} intents" if protocol else "the validation intents")
        return TaskData(
            kind="classification",
            spec={
                "kind": "intents",
                "path": str(root.resolve()),
                "protocol": protocol,
                "datasets": ["clinc150"] if protocol == "domains" else sorted(found),
                "intents": intents,
                "texts": texts,
                "max_length": cfg.max_length,
                "truncated": {"train": train.truncated, "val": val.truncated},
            },
            train=train_episodes,
            val=val_episodes,
            model_spec=text_model_spec(cfg),
            preprocessing=text_preprocessing(tok_file, cfg.max_length),
            split={
                "protocol": protocol,
                "train": list(TRAIN_DOMAINS) if protocol == "domains" else f"{len(parts['train'])} intents",
                "val": list(parts["val"]),
                "test": test,
            },
        )

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> ClassificationEpisodes:
        """The protocol's test intents (``protocol``, else the run's own when ``arg`` is its data);
        no protocol: every intent of ``arg`` (the run's own data: its validation intents), ``test`` splits."""
        tok, length = _text_run(meta, f"intents:{arg}")
        found, proto, same = self._protocol_of(meta, arg, protocol)
        test = evaluation_texts(found, proto)
        if proto is None and same and "val" in meta.get("split", {}):
            keep = set(meta["split"]["val"])
            test = {k: v for k, v in test.items() if k in keep}
        pool = TextPool.from_texts(test, tok, length)
        return ClassificationEpisodes(pool, ways, shots, queries, f"{proto or 'intents'} test")

    def _protocol_of(self, meta: dict[str, Any], arg: str | None, protocol: str | None) -> tuple[dict[str, Path], str | None, bool]:
        """The datasets under ``arg``, the protocol to use (as :meth:`held_out` chooses it) and whether
        ``arg`` is the run's own data."""
        spec = f"intents:{arg}"
        root = Path(str(arg)).expanduser()
        found = find_datasets(root, spec)
        recorded = meta.get("data", {})
        same = _same_path(root, recorded, "intents")
        if protocol is None and same:
            return found, recorded.get("protocol"), same
        return found, (intents_protocol(protocol, found, spec) if protocol is not None else None), same

    def _validation(self, meta: dict[str, Any], arg: str | None) -> Texts:
        """The run's validation intents (``train``-split texts), split as meta-training split them."""
        cfg = meta.get("config", {})
        found, proto, _ = self._protocol_of(meta, arg, None)
        return protocol_texts(found, proto, float(cfg.get("val_classes", 0.1)), int(cfg.get("seed", 0)), int(cfg.get("ways", 2)))["val"]

    def all_classes(self, meta: dict[str, Any], arg: str | None, shots: int, protocol: str | None, split: str = "test") -> AllClassesEpisodes:
        """Every test intent of the protocol (as :meth:`held_out` chooses them): support texts drawn from
        their ``train`` split, queries = their whole ``test`` split. ``split="val"``: every validation
        intent of the run, support and queries both from their ``train``-split texts (disjoint)."""
        tok, length = _text_run(meta, f"intents:{arg}")
        if split == "val":
            return AllClassesEpisodes(TextPool.from_texts(self._validation(meta, arg), tok, length), None, shots, "validation")
        found, proto, same = self._protocol_of(meta, arg, protocol)
        train, test = evaluation_texts(found, proto, "train"), evaluation_texts(found, proto, "test")
        if proto is None and same and "val" in meta.get("split", {}):
            keep = set(meta["split"]["val"])
            train, test = ({k: v for k, v in t.items() if k in keep} for t in (train, test))
        what = f"{proto or 'intents'} test"
        return AllClassesEpisodes(TextPool.from_texts(train, tok, length), TextPool.from_texts(test, tok, length), shots, what)

    def by_domain(self, meta: dict[str, Any], arg: str | None, shots: int, queries: int, protocol: str | None, split: str = "test") -> DomainEpisodes:
        """Whole-domain episodes of the ``domains`` protocol: every intent of one test domain (travel or
        utility; ``test`` split), or with ``split="val"`` of the validation domain (work; ``train`` split)."""
        tok, length = _text_run(meta, f"intents:{arg}")
        found, proto, _ = self._protocol_of(meta, arg, protocol)
        if proto != "domains":
            raise MetactlError(f"--by-domain draws whole CLINC150 domains; the protocol here is {proto or 'none'}.", "Add --protocol domains.")
        names, part_split = (VAL_DOMAINS, "train") if split == "val" else (TEST_DOMAINS, "test")
        part = _domain_part(found)
        pool = TextPool.from_texts(part(names, part_split), tok, length)
        index = {label: c for c, label in enumerate(pool.labels)}
        groups = {d: [index[i] for i in part((d,), part_split)] for d in names}
        return DomainEpisodes(pool, groups, shots, queries, f"{'validation' if split == 'val' else 'test'} domain")


class LabeledText:
    """``text:PATH`` (and a bare ``.csv``/``.tsv``/``.jsonl`` path): a user's labeled texts."""

    name: ClassVar[str] = "text"
    takes_argument: ClassVar[bool] = True

    def open(self, cfg: Any, arg: str | None, progress: Progress | None) -> TaskData:
        spec = f"text:{arg}"
        tok_file = tokenizer_file(cfg.backbone, spec)
        path = Path(str(arg)).expanduser()
        texts = read_labeled_texts(path, spec)
        labels = list(texts)
        train_ids, val_ids = split_classes(len(labels), cfg.val_classes, cfg.seed, cfg.ways)
        tok = load_tokenizer(tok_file, cfg.max_length)
        pool = TextPool.from_texts(texts, tok, cfg.max_length)
        train_episodes, val_episodes = text_episodes(cfg, pool.subset(train_ids), pool.subset(val_ids), tok)
        return TaskData(
            kind="classification",
            spec={
                "kind": "text",
                "path": str(path.resolve()),
                "classes": len(labels),
                "texts": len(pool),
                "max_length": cfg.max_length,
                "truncated": pool.truncated,
            },
            train=train_episodes,
            val=val_episodes,
            model_spec=text_model_spec(cfg),
            preprocessing=text_preprocessing(tok_file, cfg.max_length),
            split={"train": [labels[i] for i in train_ids], "val": [labels[i] for i in val_ids]},
        )

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> ClassificationEpisodes:
        """Every label of ``arg``; the run's own data: its validation labels."""
        spec = f"text:{arg}"
        tok, length = _text_run(meta, spec)
        path = Path(str(arg)).expanduser()
        texts = read_labeled_texts(path, spec)
        if _same_path(path, meta.get("data", {}), "text") and "val" in meta.get("split", {}):
            keep = set(meta["split"]["val"])
            texts = {k: v for k, v in texts.items() if k in keep}
        pool = TextPool.from_texts(texts, tok, length)
        return ClassificationEpisodes(pool, ways, shots, queries, "evaluation")

    def all_classes(self, meta: dict[str, Any], arg: str | None, shots: int, protocol: str | None, split: str = "test") -> AllClassesEpisodes:
        """Every label :meth:`held_out` would sample (``split="val"``: the run's validation labels); the
        texts not drawn as support are the queries."""
        if split != "val":
            return AllClassesEpisodes(self.held_out(meta, arg, 2, 1, 0, protocol).pool, None, shots)
        tok, length = _text_run(meta, f"text:{arg}")
        keep = set(meta.get("split", {}).get("val", []))
        texts = {k: v for k, v in read_labeled_texts(Path(str(arg)).expanduser(), f"text:{arg}").items() if k in keep}
        pool = TextPool.from_texts(texts, tok, length)
        return AllClassesEpisodes(pool, None, shots, "validation")


__all__ = [
    "ALL_CLASSES_STREAM",
    "DATASETS",
    "INTENT_PROTOCOLS",
    "TEST_DOMAINS",
    "TRAIN_DOMAINS",
    "VAL_DOMAINS",
    "AllClassesEpisodes",
    "ChosenEpisodes",
    "DomainClasses",
    "DomainEpisodes",
    "Intents",
    "LabeledText",
    "NamedChosenEpisodes",
    "NamedEpisodes",
    "NearestClasses",
    "TextPool",
    "backbone_pooling",
    "class_centroids",
    "evaluation_texts",
    "find_datasets",
    "intent_domains",
    "intents_protocol",
    "load_banking77",
    "load_clinc150",
    "load_hwu64",
    "load_tokenizer",
    "pad",
    "protocol_texts",
    "read_labeled_texts",
    "text_model_spec",
    "text_preprocessing",
    "tokenize",
    "tokenizer_file",
]
