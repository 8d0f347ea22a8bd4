"""``--backbone`` through the one resolver (``metactl.backbones``): a local folder, and a Hugging Face hub id
``org/name[@revision]`` found in a real huggingface_hub cache layout built here from the real
all-MiniLM-L6-v2 files (``models--org--name/refs/main``, ``snapshots/<commit>/`` of relative symlinks into
``blobs/``, blobs named as the Hub names them), offline (``HF_HUB_OFFLINE=1``). The layout is checked
with huggingface_hub's own readers; the sha256 against hashlib on the shared file; a meta-train on a hub
id records where the body came from; an id not in the cache is one line naming the cache and a fetch
command. Image run dirs as backbones: tests/test_backbone.py."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

import huggingface_hub
from typer.testing import CliRunner

from metactl.backbones import hub_cache_dir, parse_hub_id, recorded_tokenizer, resolve_backbone
from metactl.cli import app
from metactl.errors import MetactlError

runner = CliRunner()
REPO = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
LFS = {"model.safetensors"}  # stored through LFS on the Hub: its blob is named by its sha256; the others by their git blob sha1


def _blob_name(path: Path) -> str:
    data = path.read_bytes()
    if path.name in LFS:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_hub_cache(cache: Path, source: Path, repo: str = REPO, commit: str = COMMIT, refs: tuple[str, ...] = ("main",)) -> Path:
    """What ``hf download REPO`` leaves in ``cache``: blobs, a snapshot of relative symlinks, refs. Returns the snapshot."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = f.relative_to(source)
        blob = root / "blobs" / _blob_name(f)
        if not blob.exists():
            try:
                os.link(f, blob)  # the same bytes; a copy where hard links are not allowed
            except OSError:
                shutil.copyfile(f, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)  # the Hub writes the bare hash, no newline
    return snapshot


@pytest.fixture
def hub(tmp_path: Path, minilm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline machine whose Hugging Face cache (HF_HUB_CACHE) holds all-MiniLM-L6-v2 at ``COMMIT``."""
    cache = tmp_path / "hf" / "hub"
    make_hub_cache(cache, minilm_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_the_cache_is_the_layout_huggingface_hub_reads(hub: Path, minilm_dir: Path) -> None:
    info = huggingface_hub.scan_cache_dir(hub)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO and repo.repo_type == "model"
    (rev,) = repo.revisions
    assert rev.commit_hash == COMMIT and rev.refs == frozenset({"main"})
    assert {f.file_path.relative_to(rev.snapshot_path).as_posix() for f in rev.files} == {
        p.relative_to(minilm_dir).as_posix() for p in minilm_dir.rglob("*") if p.is_file()
    }
    cached = huggingface_hub.try_to_load_from_cache(REPO, "1_Pooling/config.json", cache_dir=hub)
    assert cached == str(hub / f"models--sentence-transformers--all-MiniLM-L6-v2/snapshots/{COMMIT}/1_Pooling/config.json")


def test_a_hub_id_resolves_to_its_cached_snapshot(hub: Path, minilm_dir: Path) -> None:
    assert hub_cache_dir() == hub
    found = resolve_backbone(REPO)
    snapshot = hub / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / COMMIT
    assert found.folder == snapshot and found.kind == "huggingface"
    assert found.source == {"hub_id": REPO, "revision": "main", "commit": COMMIT}
    assert found.sha256 == hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()
    assert found.weights == snapshot / "model.safetensors" and found.tokenizer == snapshot / "tokenizer.json"
    assert found.pooling == {"pooling": "mean", "normalize": True}  # the snapshot's modules.json + 1_Pooling, as for the folder
    assert resolve_backbone(REPO) is found, "one resolution per process"
    local = resolve_backbone(minilm_dir)
    assert local.folder == minilm_dir.resolve() and local.source is None and local.sha256 == found.sha256


def test_a_revision_may_be_a_branch_tag_or_commit(hub: Path, minilm_dir: Path) -> None:
    other = "0" * 39 + "1"
    make_hub_cache(hub, minilm_dir, commit=other, refs=("v1",))  # a tag at another commit beside main
    assert resolve_backbone(f"{REPO}@main").source == {"hub_id": REPO, "revision": "main", "commit": COMMIT}
    assert resolve_backbone(f"{REPO}@{COMMIT}").source == {"hub_id": REPO, "revision": COMMIT, "commit": COMMIT}
    by_tag = resolve_backbone(f"{REPO}@v1")
    assert by_tag.source == {"hub_id": REPO, "revision": "v1", "commit": other} and by_tag.folder.name == other
    with pytest.raises(MetactlError, match=r"not in the Hugging Face cache .*--revision nope"):
        resolve_backbone(f"{REPO}@nope")


def test_an_id_not_in_the_cache_is_one_line_naming_the_cache_and_how_to_fetch_it(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(MetactlError) as e:
        resolve_backbone("acme/no-such-model")
    text = str(e.value)
    assert str(hub / "models--acme--no-such-model") in text and "HF_HUB_OFFLINE is set" in text
    assert "hf download acme/no-such-model" in text and "\n" not in text
    data = tmp_path / "texts.csv"
    data.write_text("text,label\nhello,a\n", encoding="utf-8")
    r = runner.invoke(app, ["meta-train", "--backbone", "acme/no-such-model", "--data", f"text:{data}", "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(hub / "models--acme--no-such-model") in r.output and "hf download acme/no-such-model" in r.output, r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("spec", "hub_id"),
    [
        ("sentence-transformers/all-MiniLM-L6-v2", ("sentence-transformers/all-MiniLM-L6-v2", None)),
        ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
        ("all-MiniLM-L6-v2", None),  # a bare name is a folder, never an id
        ("./org/name", None),
        ("org--x/name", None),
        ("org/na..me", None),
        ("org/name/extra", None),
    ],
)
def test_what_counts_as_a_hub_id(spec: str, hub_id: tuple[str, str | None] | None) -> None:
    assert parse_hub_id(spec) == hub_id


def test_a_missing_path_that_is_no_hub_id_says_no_such_folder(tmp_path: Path) -> None:
    with pytest.raises(MetactlError, match=r"--backbone .*nope: no such folder\. Pass a local Hugging Face folder"):
        resolve_backbone(tmp_path / "nope")


def test_resolving_a_folder_imports_neither_torch_nor_huggingface_hub(minilm_dir: Path) -> None:
    code = (
        "import sys; from metactl.backbones import resolve_backbone; "
        f"b = resolve_backbone({str(minilm_dir)!r}); assert b.tokenizer is not None; "
        "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _texts_csv(path: Path) -> Path:
    words = ["alarm", "weather", "music", "timer", "balance", "flight"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label in words:
            w.writerows([f"please help me with my {label} number {i}", label] for i in range(4))
    return path


def test_meta_train_on_a_hub_id_records_where_the_body_came_from(hub: Path, minilm_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["meta-train", "--backbone", REPO, "--data", f"text:{_texts_csv(tmp_path / 'texts.csv')}", "--ways", "2", "--shots", "1"]
    args += ["--query-shots", "2", "--meta-batch", "2", "--steps", "1", "--eval-every", "0", "--eval-episodes", "2", "--max-length", "16"]
    r = runner.invoke(app, [*args, "--out", str(run)])
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "metactl.json").read_text(encoding="utf-8"))
    snapshot = hub / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / COMMIT
    sha = hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()
    assert meta["config"]["backbone"] == REPO, "the config keeps what the user typed"
    model = meta["model"]
    assert model["backbone"] == str(snapshot) and model["backbone_sha256"] == sha
    assert model["backbone_source"] == {"hub_id": REPO, "revision": "main", "commit": COMMIT}
    assert meta["preprocessing"]["tokenizer"] == str(snapshot / "tokenizer.json")

    # the recorded folder is gone (another machine, a cleaned path): the hub id finds the same commit again
    from metactl.models.text import TextClassifier

    moved = {**model, "backbone": str(tmp_path / "gone")}
    assert TextClassifier.from_spec(moved).folder == snapshot
    assert recorded_tokenizer({"tokenizer": str(tmp_path / "gone" / "tokenizer.json")}, moved) == snapshot / "tokenizer.json"
    # ... and `metactl adapt` on such a run reads the support with that tokenizer and rebuilds that body
    meta["model"], meta["preprocessing"]["tokenizer"] = moved, str(tmp_path / "gone" / "tokenizer.json")
    (run / "metactl.json").write_text(json.dumps(meta), encoding="utf-8")
    r = runner.invoke(app, ["adapt", "--from", str(run), "--support", str(_texts_csv(tmp_path / "shots.csv")), "--out", str(tmp_path / "adapted")])
    assert r.exit_code == 0, r.output
    adapted = json.loads((tmp_path / "adapted" / "metactl.json").read_text(encoding="utf-8"))
    assert adapted["preprocessing"]["tokenizer"] == str(snapshot / "tokenizer.json")
    shutil.rmtree(hub / "models--sentence-transformers--all-MiniLM-L6-v2")
    with pytest.raises(MetactlError, match=r"is missing .* not in the Hugging Face cache .*hf download sentence-transformers/all-MiniLM-L6-v2 --revision"):
        TextClassifier.from_spec(moved)
