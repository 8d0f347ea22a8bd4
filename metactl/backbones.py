"""The one reader of ``--backbone``: a pretrained body named by a local Hugging Face / sentence-transformers
folder, a metactl run dir, or a Hugging Face hub id ``org/name[@revision]``, resolved once into a
:class:`Backbone` (folder, kind, tokenizer, pooling, the sha256 of its weights, and where a hub id came
from). Every module that needs the body asks :func:`resolve_backbone` (or :func:`recorded_backbone`
for the body a run's model spec names); nothing else interprets the spec.

A hub id is looked up in the local Hugging Face cache first (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``: the ``models--org--name/refs|snapshots`` layout huggingface_hub
writes), and downloaded (only the files metactl reads, never pickle weights) only when it is not there,
``HF_HUB_OFFLINE`` is unset and the Hub answers. Reads no torch or transformers; huggingface_hub is
imported only when a hub id is resolved.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metactl.errors import MetactlError

HF_WEIGHTS = "model.safetensors"
RUN_WEIGHTS = "theta.safetensors"
RUN_META = "metactl.json"
TOKENIZER = "tokenizer.json"
DEFAULT_REVISION = "main"
# what a download fetches: the encoder, its tokenizer, sentence-transformers' pooling and its licence (no pickle)
HUB_FILES = (
    "config.json", HF_WEIGHTS, TOKENIZER, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
    "sentencepiece.bpe.model", "spiece.model", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "*_Pooling/config.json", "README.md",
)  # fmt: skip
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[\w][\w./-]*))?$")
SPEC_HINT = "Pass a local Hugging Face folder (config.json, model.safetensors, tokenizer.json), a metactl run dir, or a Hugging Face id org/name[@revision]."


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file (cached per path, size and modification time: hashed once per process)."""
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetactlError(f"{path}: cannot be read as JSON ({exc}).", "Use an intact pretrained folder.") from None


def run_model_spec(folder: Path) -> dict[str, Any]:
    """The model spec of a metactl run dir used as a backbone ({} for a Hugging Face folder)."""
    meta = folder / RUN_META
    if not meta.is_file():
        return {}
    model = _json(meta).get("model", {})
    return model if isinstance(model, dict) else {}


def backbone_pooling(folder: Path) -> dict[str, Any]:
    """How a sentence-transformers folder pools token states: ``{"pooling": "mean"|"cls"|"max", "normalize": bool}``
    from ``modules.json`` and the pooling module's ``config.json`` (``1_Pooling/`` by default). A plain
    Hugging Face folder: mean pooling, no normalization. A metactl run: what its model spec records."""
    model = run_model_spec(folder)
    if "pooling" in model:
        return {"pooling": model["pooling"], "normalize": bool(model.get("normalize", False))}
    pooling_dir, normalize = folder / "1_Pooling", False
    if (folder / "modules.json").is_file():
        modules = _json(folder / "modules.json")
        for m in modules if isinstance(modules, list) else []:
            kind = str(m.get("type", ""))
            if kind.endswith(".Pooling"):
                pooling_dir = folder / str(m.get("path", "1_Pooling"))
            elif kind.endswith(".Normalize"):
                normalize = True
    config = pooling_dir / "config.json"
    if not config.is_file():
        return {"pooling": "mean", "normalize": normalize}
    cfg = _json(config)
    mode = cfg.get("pooling_mode")
    if mode is None:
        on = [k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
        mode = on[0] if len(on) == 1 else ("mean_tokens" if not on else "+".join(on))
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(str(mode), str(mode))
    if mode not in ("mean", "cls", "max"):
        raise MetactlError(f"{config}: pooling {mode!r} is not supported.", "metactl pools by mean, cls or max.")
    return {"pooling": mode, "normalize": normalize}


# --- Hugging Face hub ids -----------------------------------------------------------------------


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(org/name, revision or None)`` when ``spec`` has the shape of a hub id, else None."""
    m = HUB_ID.match(spec)
    if m is None or "--" in m["repo"] or ".." in m["repo"]:
        return None
    return m["repo"], m["revision"]


def hub_cache_dir() -> Path:
    """The cache huggingface_hub reads and writes, from the environment as it reads it (at call time):
    ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value: the Hub is never asked."""
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _fetch_hint(repo: str, revision: str) -> str:
    rev = "" if revision == DEFAULT_REVISION else f" --revision {revision}"
    return f"Fetch it where the Hub is reachable (hf download {repo}{rev}, or huggingface-cli download {repo}{rev}), or pass a local folder."


def _cached_snapshot(hf: Any, repo: str, revision: str, cache: Path) -> Path | None:
    """The cached snapshot folder of ``repo`` at ``revision`` (a branch, tag or commit), or None."""
    try:
        return Path(hf.snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True, allow_patterns=list(HUB_FILES)))
    except hf.utils.LocalEntryNotFoundError:  # not cached, or a snapshot the cache knows is incomplete
        return None


def _download(hf: Any, repo: str, revision: str, cache: Path, spec: str) -> Path:
    errors = hf.utils
    try:
        return Path(hf.snapshot_download(repo, revision=revision, cache_dir=cache, allow_patterns=list(HUB_FILES)))
    except errors.LocalEntryNotFoundError:  # the Hub did not answer
        raise MetactlError(
            f"--backbone {spec}: no such folder, not in the Hugging Face cache {cache / _repo_folder(repo)}, and the Hub cannot be reached.",
            _fetch_hint(repo, revision),
        ) from None
    except errors.RevisionNotFoundError:
        raise MetactlError(f"--backbone {spec}: the Hub has no revision {revision!r} of {repo}.", "Name a branch, tag or commit of that model.") from None
    except errors.RepositoryNotFoundError:  # gated repos included
        raise MetactlError(f"--backbone {spec}: no model {repo} on the Hugging Face Hub (or it is gated or private).", SPEC_HINT) from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise MetactlError(f"--backbone {spec}: downloading {repo} failed ({str(exc).splitlines()[0]}).", _fetch_hint(repo, revision)) from None


def _repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


@functools.cache
def _hub_snapshot(repo: str, revision: str, cache: Path, offline: bool, spec: str) -> tuple[Path, tuple[tuple[str, str], ...]]:
    """(snapshot folder, provenance) of a hub id: from the cache, else downloaded when allowed. Once per process."""
    import huggingface_hub as hf  # only a hub id needs it (the [text] extra)

    try:
        folder = _cached_snapshot(hf, repo, revision, cache)
    except hf.utils.HFValidationError as exc:
        raise MetactlError(f"--backbone {spec}: not a valid Hugging Face id ({exc}).", SPEC_HINT) from None
    if folder is None or not (folder / HF_WEIGHTS).is_file():
        if offline:
            where = cache / _repo_folder(repo)
            what = "no such folder, and not in the Hugging Face cache" if folder is None else f"no {HF_WEIGHTS} in its snapshot in the Hugging Face cache"
            raise MetactlError(f"--backbone {spec}: {what} {where} (HF_HUB_OFFLINE is set).", _fetch_hint(repo, revision))
        folder = _download(hf, repo, revision, cache, spec)
        if not (folder / HF_WEIGHTS).is_file():
            raise MetactlError(f"--backbone {spec}: {repo} has no {HF_WEIGHTS} at {revision}.", "metactl loads safetensors weights only (never pickle).")
    return folder, (("hub_id", repo), ("revision", revision), ("commit", folder.name))


# --- the resolver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backbone:
    """A resolved ``--backbone``. ``kind``: ``huggingface`` (a pretrained encoder folder) or ``run`` (a
    metactl run dir); ``tokenizer``: its ``tokenizer.json`` (a run's: that of the body it records; None for
    an image run); ``source``: ``{"hub_id", "revision" (as asked, default main), "commit"}`` for a hub id."""

    spec: str
    folder: Path
    kind: str
    weights: Path
    sha256: str
    pooling: dict[str, Any]
    tokenizer: Path | None
    source: dict[str, str] | None = None

    def run_model(self) -> dict[str, Any]:
        """The model spec a run backbone records ({} for a Hugging Face folder)."""
        return run_model_spec(self.folder) if self.kind == "run" else {}


def _locate(spec: str) -> tuple[Path, tuple[tuple[str, str], ...]]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve(), ()
    hub = parse_hub_id(spec)
    if hub is None or spec.startswith(("/", "./", "../", "~")):
        raise MetactlError(f"--backbone {spec}: {'not a folder' if path.exists() else 'no such folder'}.", SPEC_HINT)
    repo, revision = hub[0], hub[1] or DEFAULT_REVISION
    folder, source = _hub_snapshot(repo, revision, hub_cache_dir(), hub_offline(), spec)
    if not folder.is_dir():  # removed from the cache since this process looked
        _hub_snapshot.cache_clear()
        folder, source = _hub_snapshot(repo, revision, hub_cache_dir(), hub_offline(), spec)
    return folder, source


def _weights_file(folder: Path, spec: str) -> Path:
    if (folder / RUN_META).is_file():
        if not (folder / RUN_WEIGHTS).is_file():
            raise MetactlError(f"--backbone {spec}: not a finished metactl run (no {RUN_WEIGHTS}).", "Pass a run dir written by metactl meta-train.")
        return folder / RUN_WEIGHTS
    if not (folder / HF_WEIGHTS).is_file():
        missing = " and no ".join(n for n in (HF_WEIGHTS, TOKENIZER) if not (folder / n).is_file())
        raise MetactlError(
            f"--backbone {spec}: no {missing} in {folder}: neither a pretrained model folder nor a metactl run ({RUN_META}).",
            "Use a Hugging Face folder saved with safetensors weights (never pickle), or a run dir.",
        )
    return folder / HF_WEIGHTS


def _run_tokenizer(folder: Path) -> Path | None:
    model = run_model_spec(folder)
    if not model.get("backbone"):
        return None  # an image run
    try:
        return recorded_backbone(model, check=False).tokenizer
    except MetactlError:
        return None


@functools.cache
def _described(spec: str, folder: Path, source: tuple[tuple[str, str], ...], weights: Path, size: int, mtime_ns: int) -> Backbone:
    kind = "run" if weights.name == RUN_WEIGHTS else "huggingface"
    own = folder / TOKENIZER
    tokenizer = own if own.is_file() else (_run_tokenizer(folder) if kind == "run" else None)
    return Backbone(
        spec=spec, folder=folder, kind=kind, weights=weights, sha256=_sha256(str(weights.resolve()), size, mtime_ns),
        pooling=backbone_pooling(folder), tokenizer=tokenizer, source=dict(source) or None,
    )  # fmt: skip


def resolve_backbone(spec: str | Path) -> Backbone:
    """``--backbone`` resolved: a folder (``metactl.json`` in it: a run), else a hub id ``org/name[@revision]``
    found in the Hugging Face cache (downloaded when missing, online and allowed). Cached per spec and
    weights-file version, so the weights are hashed once per process."""
    text = str(spec).strip()
    if not text:
        raise MetactlError("--backbone is empty.", SPEC_HINT)
    folder, source = _locate(text)
    weights = _weights_file(folder, text)
    st = weights.stat()
    return _described(text, folder, source, weights, st.st_size, st.st_mtime_ns)


def recorded_backbone(model: dict[str, Any], check: bool = True) -> Backbone:
    """The body a run's model spec names (``backbone``; when that folder is gone and ``backbone_source``
    names a hub id, the same commit found again in the Hugging Face cache), its weights checked against
    ``backbone_sha256`` (``check``). Adapt, evaluate and export rebuild a text model through this."""
    folder = Path(str(model["backbone"]))
    source = model.get("backbone_source")
    missing = f"The pretrained body {folder} is missing (this run or model was trained on top of it)"
    if folder.is_dir():
        found = resolve_backbone(folder)
    elif isinstance(source, dict) and source.get("hub_id"):
        hub_id, commit = str(source["hub_id"]), str(source.get("commit") or source.get("revision") or DEFAULT_REVISION)
        try:
            found = resolve_backbone(f"{hub_id}@{commit}")
        except MetactlError as exc:
            raise MetactlError(f"{missing}, and {hub_id} at {commit} could not be resolved again ({exc.message})", _fetch_hint(hub_id, commit)) from None
    else:
        raise MetactlError(f"{missing}.", "Put the same pretrained folder back at that path.")
    want = model.get("backbone_sha256")
    if check and want and found.sha256 != want:
        raise MetactlError(
            f"{found.weights} is not the file this was trained on (sha256 {found.sha256[:12]}…, expected {str(want)[:12]}…).",
            "Use the exact pretrained weights the run was meta-trained with.",
        )
    return found


def recorded_tokenizer(preprocessing: dict[str, Any], model: dict[str, Any]) -> Path:
    """The ``tokenizer.json`` a text run records (``preprocessing["tokenizer"]``); when that file is gone and
    the model spec names its body by hub id, that commit's tokenizer found again in the Hugging Face cache."""
    path = Path(str(preprocessing["tokenizer"]))
    if path.is_file() or not isinstance(model.get("backbone_source"), dict):
        return path
    try:
        found = recorded_backbone(model, check=False)
    except MetactlError:
        return path  # the caller's own "tokenizer not found" names the recorded path
    return found.tokenizer or path


def text_classifier_spec(backbone: Backbone, num_classes: int, adapt: str, lora_rank: int, train_body: bool, max_length: int) -> dict[str, Any]:
    """The ``text-classifier`` model spec a run records for ``backbone``: the resolved folder, the sha256 of
    its weights, its pooling, and ``backbone_source`` (hub id, revision, commit) when it came from the Hub."""
    if backbone.kind == "run":
        body = backbone.run_model().get("backbone")
        raise MetactlError(
            f"--backbone {backbone.spec}: a metactl run cannot be the pretrained body of a text run.",
            f"Pass the pretrained folder it was trained on{f' ({body})' if body else ''} or a Hugging Face id.",
        )
    spec: dict[str, Any] = {
        "kind": "text-classifier",
        "backbone": str(backbone.folder),
        "backbone_sha256": backbone.sha256,
        "num_classes": int(num_classes),
        "adapt": adapt,
        "lora_rank": int(lora_rank),
        "train_body": bool(train_body),
        **backbone.pooling,
        "max_length": int(max_length),
    }
    if backbone.source:
        spec["backbone_source"] = dict(backbone.source)
    return spec


__all__ = [
    "HUB_FILES",
    "Backbone",
    "backbone_pooling",
    "hub_cache_dir",
    "hub_offline",
    "parse_hub_id",
    "recorded_backbone",
    "recorded_tokenizer",
    "resolve_backbone",
    "run_model_spec",
    "text_classifier_spec",
    "weights_sha256",
]
