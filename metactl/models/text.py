"""A text classifier on a pretrained encoder: a local Hugging Face / sentence-transformers folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, optional ``1_Pooling/`` and ``modules.json``),
its pooling, and a linear head.

What the inner loop adapts, and so what θ holds, is ``adapt``:

- ``head``: the head only, on a frozen body (ANIL on a foundation model). The body's features never
  change during meta-training, so the trainer computes them once per example (``features_fixed``);
- ``lora``: low-rank adapters (LoRA, Hu et al. 2021, through ``peft``) of rank ``lora_rank`` on every
  attention and feed-forward projection of the encoder (``query``, ``key``, ``value``, ``dense``), plus
  the head; their initial values and one inner learning rate per adapter matrix are meta-learned;
- ``all``: every weight (for small models).

The body is frozen (``Learner.frozen``: in every forward pass, never in θ, α, the optimizer or the run
dir) unless ``train_body``, which lets the outer loop update it (inner learning rate fixed at 0), or
``train_layers`` K, which lets it update only the top K transformer layers (the embeddings and the lower
layers stay frozen, so their hidden states can be cached once per text: :mod:`metactl.hidden`; the
forward pass takes ``{"hidden", "attention_mask", "body"}`` and runs the top K layers only). Texts go
through the body sorted by length, ``BUCKET`` at a time, each chunk padded only to its own longest. The run
records the backbone's path and the sha256 of its weights (and, for a Hugging Face hub id, where it came
from); :func:`metactl.backbones.recorded_backbone` finds and checks it, and a changed file is refused.
Dropout is off: the inner loop is a deterministic function of θ.

Second-order gradients need the eager attention implementation (PyTorch's fused CPU attention has no
double backward), which is what this module loads.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from metactl.api import Params
from metactl.backbones import Backbone, recorded_backbone, resolve_backbone, text_classifier_spec
from metactl.errors import MetactlError
from metactl.hidden import body_tag, check_tag
from metactl.models import AdaptableModules, ModelBase

warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)  # transformers' own deprecation, via peft

WEIGHTS = "model.safetensors"
LORA_TARGETS = r".*encoder\.layer\.\d+\..*\.(query|key|value|dense)$"  # every attention and feed-forward projection
ADAPT_MODES = ("head", "lora", "all")
BUCKET = 64  # texts per forward chunk: sorted by length, each chunk padded only to its own longest


def _hidden_size(backbone: Backbone) -> int:
    config = backbone.folder / "config.json"
    if backbone.kind != "huggingface" or not config.is_file():
        raise MetactlError(
            f"--backbone {backbone.spec}: not a pretrained model folder (config.json and {WEIGHTS} are needed).",
            "Pass a local Hugging Face / sentence-transformers folder, e.g. one saved with save_pretrained(), or a hub id.",
        )
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MetactlError(f"--backbone {backbone.spec}: cannot read its configuration ({exc}).", "Use an intact pretrained folder.") from None


def describe_backbone(backbone: str | Path) -> dict[str, Any]:
    """What a pretrained encoder (a folder or hub id, through :func:`resolve_backbone`) says about how to use
    it: pooling (``1_Pooling/config.json``; mean if absent), whether the sentence embedding is L2-normalised
    (a ``Normalize`` module in ``modules.json``), the hidden size, and whether it has a ``tokenizer.json``."""
    found = resolve_backbone(backbone)
    return {**found.pooling, "hidden": _hidden_size(found), "tokenizer": found.tokenizer is not None}


def text_model_spec(backbone: str | Path, num_classes: int, adapt: str, lora_rank: int, train_body: bool, max_length: int) -> dict[str, Any]:
    """The spec a text run records for ``backbone`` (:func:`metactl.backbones.text_classifier_spec`) and the
    encoder's hidden size."""
    if adapt not in ADAPT_MODES:
        raise MetactlError(f"--adapt {adapt}: unknown.", f"Use one of: {', '.join(ADAPT_MODES)}.")
    found = resolve_backbone(backbone)
    return {**text_classifier_spec(found, num_classes, adapt, lora_rank, train_body, max_length), "hidden": _hidden_size(found)}


def _load_encoder(folder: Path) -> nn.Module:
    """The encoder of a resolved backbone folder: local files only, never a hub call (a hub id was
    resolved to its cached snapshot before)."""
    hf_logging.set_verbosity_error()  # the loader's per-weight report and progress bar are not the user's business
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        kwargs: dict[str, Any] = {"attn_implementation": "eager", "local_files_only": True}
        if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta", "electra", "mpnet"):
            kwargs["add_pooling_layer"] = False  # sentence pooling is ours; the unused pooler would get no gradient
        encoder = AutoModel.from_pretrained(folder, config=config, **kwargs)
    except TypeError:
        encoder = AutoModel.from_pretrained(folder, attn_implementation="eager", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MetactlError(f"--backbone {folder}: transformers cannot load it ({str(exc).splitlines()[0]}).", "Use an intact pretrained folder.") from None
    return encoder.eval()


def pool(hidden: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Sentence embedding from token states ``hidden`` (n, L, D) and the attention mask (n, L)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def extended_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive attention mask a transformer layer takes: (n, 1, 1, L), 0 on tokens, the dtype's minimum on padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_layers(layers: Any, hidden: Tensor, mask: Tensor) -> Tensor:
    """``hidden`` (n, L, D) through transformer ``layers`` in order under the attention ``mask`` (n, L)."""
    ext = extended_mask(mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, ext)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def bucketed(fn: Any, mask: Tensor, *xs: Tensor, size: int = BUCKET) -> Tensor:
    """``fn(*xs_chunk, mask_chunk)`` over chunks of ``size`` rows taken in order of length (the attention
    mask's sum), each chunk cut to its own longest row; the rows' outputs back in their input order."""
    lengths = mask.sum(-1)
    n = int(lengths.shape[0])
    if n <= size:
        width = max(int(lengths.max()), 1) if n else 0
        return fn(*(x[:, :width] for x in xs), mask[:, :width])
    order = torch.argsort(lengths, stable=True)
    parts = []
    for lo in range(0, n, size):
        idx = order[lo : lo + size]
        width = max(int(lengths[idx].max()), 1)
        parts.append(fn(*(x[idx, :width] for x in xs), mask[idx, :width]))
    return torch.cat(parts).index_select(0, torch.argsort(order))


def _layer_list(encoder: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's transformer layers and their module path (BERT-style: ``encoder.layer``)."""
    for name, module in encoder.named_modules():
        if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
            return name, module
    raise MetactlError(
        "--train-layers needs a BERT-style encoder (embeddings, then encoder.layer); this backbone has another layout.",
        "Use --train-body (every layer) with this backbone, or a BERT-style one such as all-MiniLM-L6-v2.",
    )


class TextClassifier(ModelBase):
    """Pretrained encoder + pooling (+ L2 normalisation) + linear head."""

    def __init__(self, encoder: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.folder = Path(spec["backbone"])  # where the body was found (from_spec: perhaps found again by its hub id)
        self.encoder = encoder
        self.head = nn.Linear(int(spec["hidden"]), int(spec["num_classes"]))
        self.encoder.eval()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TextClassifier:
        body = recorded_backbone(spec)  # the recorded folder (or its hub id's snapshot), sha256 checked: hashed once per process
        encoder = _load_encoder(body.folder)
        spec = {**spec, "hidden": int(spec.get("hidden") or encoder.config.hidden_size)}
        if spec.get("adapt") == "lora":
            rank = int(spec.get("lora_rank", 8))
            lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, lora_dropout=0.0, bias="none")
            encoder = get_peft_model(encoder, lora)
        model = cls(encoder, spec)
        model.folder = body.folder
        k = model.train_layers()
        if k is not None and not 1 <= k <= model.depth():
            raise MetactlError(f"--train-layers {k}: the encoder has {model.depth()} layers.", f"Pass --train-layers between 1 and {model.depth()}.")
        return model

    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        self.encoder.eval()  # dropout off: adaptation is a deterministic function of θ
        return self

    def _sentence(self, hidden: Tensor, mask: Tensor) -> Tensor:
        f = pool(hidden, mask, self.spec.get("pooling", "mean"))
        return F.normalize(f, dim=-1) if self.spec.get("normalize") else f

    def _encode_chunk(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self._sentence(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Sentence features of token ids: every layer, length-bucketed (:func:`bucketed`)."""
        return bucketed(self._encode_chunk, attention_mask, input_ids)

    def train_layers(self) -> int | None:
        """K of ``--train-layers K`` (the top K layers train, the rest stay frozen), or None."""
        k = self.spec.get("train_layers")
        return int(k) if k is not None else None

    def depth(self) -> int:
        """The encoder's number of transformer layers."""
        return len(_layer_list(self.encoder)[1])

    def cached_layers(self) -> int:
        """How many lower layers (after the embeddings) a hidden-state cache holds: L - K."""
        k = self.train_layers()
        return self.depth() - k if k is not None else 0

    def body_tag(self) -> int:
        """The tag of hidden states this model's frozen lower layers compute (:func:`metactl.hidden.body_tag`)."""
        return body_tag(str(self.spec.get("backbone_sha256")), self.cached_layers(), int(self.spec.get("max_length", 64)))

    def lower_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The hidden states (n, L, D) entering layer L - K: embeddings, then the frozen lower layers."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        return run_layers(_layer_list(self.encoder)[1][: self.cached_layers()], hidden, attention_mask)

    def _top_chunk(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self._sentence(run_layers(_layer_list(self.encoder)[1][self.cached_layers() :], hidden, mask), mask)

    def encode_hidden(self, hidden: Tensor, attention_mask: Tensor, body: Tensor | None) -> Tensor:
        """Sentence features of cached lower-layer states: the top K layers, pooling and normalisation,
        length-bucketed. Rows tagged by another body (``body``) are refused."""
        check_tag(body, self.body_tag())
        return bucketed(self._top_chunk, attention_mask, hidden)

    def forward(self, x: dict[str, Tensor], ref: int | None = None, tasks: int = 1, return_features: bool = False) -> Tensor:
        """Logits (or the pooled features) of a dict of ``input_ids`` and ``attention_mask``, of cached
        lower-layer states (``hidden``, ``attention_mask``, ``body``) or of precomputed ``features``.
        No normalisation statistics: ``ref`` and ``tasks`` change nothing."""
        if "features" in x:
            f = x["features"]
        elif "hidden" in x:
            f = self.encode_hidden(x["hidden"], x["attention_mask"], x.get("body"))
        else:
            f = self.encode(x["input_ids"], x["attention_mask"])
        return f if return_features else self.head(f)

    def _body_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith("encoder.") and "lora_" not in n]

    def _trained_body_names(self) -> list[str]:
        """The body's entries the outer loop trains: every one with ``train_body``, the top K layers' with ``train_layers``."""
        if self.train_layers() is None:
            return self._body_names()
        path, layers = _layer_list(self.encoder)
        top = tuple(f"encoder.{path}.{i}." for i in range(self.cached_layers(), len(layers)))
        return [n for n in self._body_names() if n.startswith(top)]

    def frozen_parameter_names(self) -> list[str]:
        if self.spec.get("adapt") == "all":
            return []
        if self.spec.get("train_body"):
            trained = set(self._trained_body_names())
            return [n for n in self._body_names() if n not in trained]
        return self._body_names()

    def outer_only_parameter_names(self) -> list[str]:
        """With ``train_body`` in head/LoRA mode the body (``train_layers``: its top K layers) learns in the outer loop only (α fixed at 0)."""
        return self._trained_body_names() if self.spec.get("train_body") and self.spec.get("adapt") != "all" else []

    def features_fixed(self) -> bool:
        """True when nothing of the body ever changes: its features can be computed once per example."""
        return self.adapts_head_only() and not self.spec.get("train_body")

    def adapts_head_only(self) -> bool:
        """``--adapt head`` (with or without ``--train-body``): at adaptation time the body is fixed."""
        return self.spec.get("adapt") == "head"

    def merged_encoder(self) -> nn.Module:
        """The encoder with any LoRA adapters merged into its weights (a plain transformers model)."""
        enc = copy.deepcopy(self.encoder)
        return enc.merge_and_unload() if isinstance(enc, PeftModel) else enc

    def export_module(self, preprocessing: dict[str, Any]) -> TextExport:
        return TextExport(self.merged_encoder(), copy.deepcopy(self.head), self.spec).eval()

    def adaptable_modules(self, preprocessing: dict[str, Any]) -> AdaptableModules:
        if not self.adapts_head_only():
            raise MetactlError("export --adaptable needs a body that adaptation leaves unchanged (--adapt head).", "Export adaptable from a --adapt head run.")
        return AdaptableModules(TextEmbed(self.merged_encoder(), self.spec).eval())

    def export_assets(self, labels: list[str]) -> dict[str, bytes]:
        """``tokenizer.json`` and a ``config.json`` Hugging Face tooling reads (labels, architecture, pooling)."""
        folder = self.folder
        base = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config = {
            **base,
            "architectures": ["MetactlTextClassifier"],
            "metactl_encoder_architectures": base.get("architectures", []),
            "num_labels": len(labels),
            "id2label": {str(i): lab for i, lab in enumerate(labels)},
            "label2id": {lab: i for i, lab in enumerate(labels)},
            "pooling": self.spec.get("pooling", "mean"),
            "normalize": bool(self.spec.get("normalize")),
            "max_length": int(self.spec.get("max_length", 64)),
        }
        return {"tokenizer.json": (folder / "tokenizer.json").read_bytes(), "config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()}

    def adapted_assets(self) -> dict[str, bytes]:
        """The adapted LoRA as a PEFT adapter folder (``peft/``) that ``PeftModel.from_pretrained`` loads."""
        if not isinstance(self.encoder, PeftModel):
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            self.encoder.save_pretrained(tmp, safe_serialization=True)
            return {f"peft/{p.name}": p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}

    def deployment_buffers(self, params: Params, x: Any) -> dict[str, Tensor]:
        return {}


class TextEmbed(nn.Module):
    """``embed.onnx``: ``input_ids`` and ``attention_mask`` (int64, [batch, seq]) -> ``features`` [batch, D] (pooled, normalised as trained)."""

    input_names = ["input_ids", "attention_mask"]  # noqa: RUF012
    output_names = ["features"]  # noqa: RUF012

    def __init__(self, encoder: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.encoder, self.spec = encoder, dict(spec)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        f = pool(hidden, attention_mask, self.spec.get("pooling", "mean"))
        return F.normalize(f, dim=-1) if self.spec.get("normalize") else f

    def example_inputs(self) -> tuple[Tensor, ...]:
        return TextExport.example_inputs(self)  # type: ignore[arg-type]

    def client_inputs(self, examples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return TextExport.client_inputs(self, examples)  # type: ignore[arg-type]


class TextExport(nn.Module):
    """The exported graph: ``input_ids`` and ``attention_mask`` (int64, [batch, seq]) -> ``logits`` and ``probabilities``."""

    input_names = ["input_ids", "attention_mask"]  # noqa: RUF012
    output_names = ["logits", "probabilities"]  # noqa: RUF012

    def __init__(self, encoder: nn.Module, head: nn.Linear, spec: dict[str, Any]) -> None:
        super().__init__()
        self.encoder, self.head, self.spec = encoder, head, dict(spec)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        f = pool(hidden, attention_mask, self.spec.get("pooling", "mean"))
        if self.spec.get("normalize"):
            f = F.normalize(f, dim=-1)
        logits = self.head(f)
        return logits, torch.softmax(logits, dim=-1)

    def example_inputs(self) -> tuple[Tensor, ...]:
        ids = torch.tensor([[101, 2054, 2003, 102, 0], [101, 7592, 102, 0, 0]], dtype=torch.int64)
        return ids, (ids != 0).long()

    def client_inputs(self, examples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"input_ids": np.asarray(examples["input_ids"], np.int64), "attention_mask": np.asarray(examples["attention_mask"], np.int64)}


__all__ = ["ADAPT_MODES", "BUCKET", "TextClassifier", "TextEmbed", "TextExport", "bucketed", "describe_backbone", "pool", "run_layers", "text_model_spec"]
