"""Evaluation: Omniglot protocols, Lake's one-shot runs, N' != N, --plot, presets."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from metactl.cli import app
from metactl.config import load_toml, resolve
from metactl.data import omniglot
from metactl.data.images import default_preprocessing
from metactl.registry import load_algorithm, make_config

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
TINY = ["--steps", "2", "--meta-batch", "2", "--eval-every", "0", "--width", "8", "--query-shots", "2", "--threads", "1", "--ways", "3"]

# (official id, part, alphabet): ids straddle the Vinyals boundary 1200 and include one Vinyals validation alphabet
CHARS = [(1, "images_background", "Latin"), (2, "images_background", "Latin"), (3, "images_background", "Latin"), (4, "images_background", "Latin"),
         (27, "images_background", "Armenian"), (28, "images_background", "Armenian"), (29, "images_background", "Armenian"),
         (965, "images_evaluation", "Angelic"), (966, "images_evaluation", "Angelic"), (1200, "images_evaluation", "Gurmukhi"),
         (1201, "images_evaluation", "Gurmukhi"), (1202, "images_evaluation", "Gurmukhi"), (1203, "images_evaluation", "Kannada"),
         (1204, "images_evaluation", "Kannada")]  # fmt: skip


def _png(rng: np.random.Generator, size: int = 24) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(rng.random((size, size)) > 0.8, 0, 255).astype(np.uint8)).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def fake_omniglot(root: Path, drawings: int = 4) -> Path:
    """The official layout: images_{background,evaluation}.zip of <part>/<Alphabet>/characterNN/XXXX_YY.png."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for part in omniglot.PARTS:
        with zipfile.ZipFile(root / f"{part}.zip", "w") as zf:
            for cid, p, alpha in CHARS:
                if p == part:
                    for d in range(drawings):
                        zf.writestr(f"{part}/{alpha}/character{cid % 100:02d}/{cid:04d}_{d + 1:02d}.png", _png(rng))
    return root


def fake_oneshot(path: Path, runs: int = 2, classes: int = 3) -> tuple[Path, list[list[int]]]:
    rng = np.random.default_rng(1)
    labels = []
    with zipfile.ZipFile(path, "w") as zf:
        for r in range(1, runs + 1):
            perm = [int(i) for i in rng.permutation(classes)]
            labels.append(perm)
            lines = []
            for c in range(classes):
                zf.writestr(f"run{r:02d}/training/class{c + 1:02d}.png", _png(rng))
                zf.writestr(f"run{r:02d}/test/item{c + 1:02d}.png", _png(rng))
                lines.append(f"run{r:02d}/test/item{c + 1:02d}.png run{r:02d}/training/class{perm[c] + 1:02d}.png")
            zf.writestr(f"run{r:02d}/class_labels.txt", "\n".join(lines) + "\n")
    return path, labels


def _ids(pool: omniglot.ArrayPool) -> list[int]:
    return [int(n.split(" ", 1)[0]) for n in pool.names()]


def test_protocol_splits(tmp_path: Path) -> None:
    data = omniglot.Omniglot(fake_omniglot(tmp_path / "omni"), default_preprocessing(28, True))
    lake = omniglot.protocol_pools(data, "lake", ("train", "val", "test"), val_fraction=0.3, seed=0)
    assert sorted(_ids(lake["train"]) + _ids(lake["val"])) == [1, 2, 3, 4, 27, 28, 29]
    assert set(_ids(lake["train"])).isdisjoint(_ids(lake["val"])) and lake["val"].num_classes == 2
    assert _ids(lake["test"]) == [965, 966, 1200, 1201, 1202, 1203, 1204]
    vin = omniglot.protocol_pools(data, "vinyals", ("train", "val", "test"))
    assert _ids(vin["train"]) == [1, 2, 3, 4, 965, 966, 1200]
    assert _ids(vin["val"]) == [27, 28, 29]  # Armenian is a Vinyals validation alphabet
    assert _ids(vin["test"]) == [1201, 1202, 1203, 1204]
    assert vin["test"].get(0).shape == (4, 28, 28) and vin["test"].get(0).dtype == np.uint8


def test_omniglot_needs_the_official_files(tmp_path: Path) -> None:
    root = tmp_path / "x"
    for part in omniglot.PARTS:  # the right folder names, but files not named XXXX_YY.png
        for c in range(3):
            d = root / part / "Alpha" / f"character{c:02d}"
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"img{i}.png").write_bytes(_png(np.random.default_rng(i)))
    result = runner.invoke(app, ["meta-train", "--data", f"omniglot:{root}", *TINY, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "XXXX_YY.png" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def _vinyals_run(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A tiny run meta-trained on a fake Omniglot with the Vinyals protocol: (dataset root, run dir, its metactl.json)."""
    root = fake_omniglot(tmp_path / "omni", drawings=5)
    run = tmp_path / "run"
    result = runner.invoke(app, ["meta-train", "--data", f"omniglot:{root}", "--protocol", "vinyals", *TINY, "--out", str(run)])
    assert result.exit_code == 0, result.output
    return root, run, json.loads((run / "metactl.json").read_text())


def test_meta_train_and_evaluate_on_the_protocols_test_characters(tmp_path: Path) -> None:
    root, run, meta = _vinyals_run(tmp_path)
    assert meta["data"]["kind"] == "omniglot" and meta["data"]["protocol"] == "vinyals"
    assert meta["data"]["train"]["characters"] == 7 and meta["data"]["val"]["characters"] == 3
    from metactl.data import held_out_sampler

    sampler = held_out_sampler(meta, None, 3, 1, 2)
    assert _ids(sampler.pool) == [1201, 1202, 1203, 1204]  # default: the run's protocol's test set
    sampler = held_out_sampler(meta, f"omniglot:{root}", 3, 1, 2, "lake")
    assert _ids(sampler.pool) == [965, 966, 1200, 1201, 1202, 1203, 1204]
    js = tmp_path / "e.json"
    result = runner.invoke(app, ["evaluate", "--from", str(run), "--episodes", "3", "--steps", "1", "--shots", "1", "--query-shots", "3", "--json", str(js)])
    assert result.exit_code == 0, result.output
    out = json.loads(js.read_text())
    assert out["runs"][0]["algorithm"] == "maml" and [s["step"] for s in out["runs"][0]["steps"]] == [0, 1]


def test_split_val_scores_the_runs_validation_characters(tmp_path: Path) -> None:
    from metactl.data import held_out_sampler
    from metactl.errors import MetactlError

    _, run, meta = _vinyals_run(tmp_path)
    assert _ids(held_out_sampler(meta, None, 3, 1, 2, split="val").pool) == [27, 28, 29]  # Vinyals validation: Armenian
    assert _ids(held_out_sampler(meta, None, 3, 1, 2).pool) == [1201, 1202, 1203, 1204]
    with pytest.raises(MetactlError, match="own data"):
        held_out_sampler(meta, "glyphs", 3, 1, 2, split="val")
    result = runner.invoke(app, ["evaluate", "--from", str(run), "--split", "train", "--episodes", "2"])
    assert result.exit_code == 1 and "--split train: unknown" in result.output


def test_inner_lr_fine_tunes_at_one_rate_for_every_tensor(tmp_path: Path) -> None:
    """``--inner-lr`` = the same run with every stored α replaced by that rate (written by hand here)."""
    from safetensors.numpy import load_file, save_file

    run = tmp_path / "run"
    result = runner.invoke(app, ["meta-train", *TINY, "--learn-inner-lr", "--out", str(run)])
    assert result.exit_code == 0, result.output
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    theta = load_file(str(run / "theta.safetensors"))
    assert any(k.startswith("inner_lr.") for k in theta)
    save_file({k: (np.full_like(v, 0.03) if k.startswith("inner_lr.") else v) for k, v in theta.items()}, str(copy / "theta.safetensors"))
    args = ["--episodes", "8", "--steps", "3", "--shots", "2", "--query-shots", "4"]
    curves = {}
    for name, rd, extra in (("flag", run, ["--inner-lr", "0.03"]), ("by hand", copy, []), ("own", run, [])):
        js = tmp_path / f"{name}.json"
        result = runner.invoke(app, ["evaluate", "--from", str(rd), *args, *extra, "--json", str(js)])
        assert result.exit_code == 0, result.output
        curves[name] = [s["mean"] for s in json.loads(js.read_text())["runs"][0]["steps"]]
    assert curves["flag"] == pytest.approx(curves["by hand"], abs=1e-9)
    assert curves["flag"] != pytest.approx(curves["own"], abs=1e-9)  # the run's own α is not 0.03
    result = runner.invoke(app, ["evaluate", "--from", str(run), "--inner-lr", "-1", "--episodes", "2"])
    assert result.exit_code == 1 and "--inner-lr must be > 0" in result.output


def test_oneshot_runs_reader(tmp_path: Path) -> None:
    _, labels = fake_oneshot(tmp_path / "all_runs.zip")
    runs = omniglot.oneshot_runs(tmp_path, default_preprocessing(28, True))  # the folder holding it works too
    assert len(runs) == 2 and runs.ways == 3 and runs.shots == 1
    b = runs.batch
    assert b.support_x.shape == (2, 3, 1, 28, 28) and b.query_x.shape == (2, 3, 1, 28, 28)
    assert b.query_y.tolist() == labels and b.support_y.tolist() == [[0, 1, 2]] * 2


def test_evaluate_oneshot_runs_with_another_way_count(tmp_path: Path, image_folder: Path) -> None:
    """A 3-way run evaluated on 4-way runs: a zero head, so step 0 predicts label 0 for every query."""
    run = tmp_path / "run"
    assert runner.invoke(app, ["meta-train", "--data", str(image_folder), *TINY, "--out", str(run)]).exit_code == 0
    path, _ = fake_oneshot(tmp_path / "all_runs.zip", runs=3, classes=4)
    js = tmp_path / "e.json"
    result = runner.invoke(app, ["evaluate", "--from", str(run), "--data", f"oneshot:{path}", "--steps", "2", "--json", str(js)])
    assert result.exit_code == 0, result.output
    r = json.loads(js.read_text())["runs"][0]
    assert r["episodes"] == 3 and r["ways"] == 4 and r["head"] == "zero-initialised"
    assert r["steps"][0]["mean"] == pytest.approx(0.25)


def test_metasgd_element_lr_with_another_way_count(tmp_path: Path, image_folder: Path) -> None:
    run = tmp_path / "run"
    assert runner.invoke(app, ["meta-train", "--algo", "metasgd", "--data", str(image_folder), *TINY, "--out", str(run)]).exit_code == 0
    js = tmp_path / "e.json"
    args = ["evaluate", "--from", str(run), "--data", str(image_folder), "--ways", "2", "--query-shots", "2", "--episodes", "2", "--steps", "1"]
    args += ["--json", str(js)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads(js.read_text())["runs"][0]
    assert r["ways"] == 2 and r["head"] == "zero-initialised" and r["steps"][0]["mean"] == pytest.approx(0.5)


def test_plot_written_and_clear_message_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    assert runner.invoke(app, ["meta-train", *TINY, "--out", str(run)]).exit_code == 0
    png = tmp_path / "curves.png"
    result = runner.invoke(app, ["evaluate", "--from", str(run), "--from", str(run), "--episodes", "2", "--steps", "2", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    again = runner.invoke(app, ["evaluate", "--from", str(run), "--episodes", "2", "--plot", str(png)])
    assert again.exit_code == 1 and "--force" in again.output
    bad = runner.invoke(app, ["evaluate", "--from", str(run), "--episodes", "2", "--plot", str(tmp_path / "c.jpg")])
    assert bad.exit_code == 1 and ".png" in bad.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    missing = runner.invoke(app, ["evaluate", "--from", str(run), "--episodes", "2", "--plot", str(tmp_path / "d.png")])
    assert missing.exit_code == 1 and "metactl[plot]" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "d.png").exists()


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_presets_load_and_validate(preset: str) -> None:
    path = CONFIGS / preset
    cfg = resolve(load_toml(path), {})
    algo = load_algorithm(cfg.algo)
    make_config(algo, cfg.algo_options)  # the algorithm accepts its options
    stem = path.stem
    if stem.startswith("omniglot-"):
        ways, shots = stem.removeprefix("omniglot-").split("-")
        assert cfg.data.startswith("omniglot:") and cfg.protocol in omniglot.PROTOCOLS and cfg.rotations
        assert (cfg.ways, cfg.shots) == (int(ways.removesuffix("way")), int(shots.removesuffix("shot")))
    elif stem.startswith("intents-"):  # run from the repository root: the paths are beside it, as CI has them
        protocol = stem.removeprefix("intents-").split("-")[0]  # intents-<protocol>[-<variant>]
        assert cfg.backbone == "../shared/models/all-MiniLM-L6-v2" and cfg.adapt in ("head", "lora") and cfg.learn_inner_lr
        assert cfg.time_budget is not None and 0 < cfg.time_budget <= 30  # the CPU budget
        if protocol == "domains":
            assert (cfg.data, cfg.protocol, cfg.ways) == ("intents:../shared/datasets/intents/clinc150", "domains", 15)
        else:  # meta-trains on the other two datasets only
            assert (cfg.data, cfg.protocol) == ("intents:../shared/datasets/intents", f"unseen-{protocol}")
    else:
        assert cfg.data == "sinusoid" and cfg.shots == 10


def test_all_presets_present() -> None:
    names = {p.name for p in CONFIGS.glob("*.toml")}
    assert names >= {f"omniglot-{w}way-{k}shot.toml" for w in (5, 20) for k in (1, 5)} | {"sinusoid.toml"}
    assert names >= {f"intents-{p}.toml" for p in ("clinc150", "banking77", "hwu64", "domains")}


@pytest.mark.parametrize("unseen", ["clinc150", "banking77", "hwu64"])
def test_intents_presets_meta_train_on_the_other_two_datasets(unseen: str, intents_dir: Path) -> None:
    """What the preset's protocol reads (no model, no training): the other two datasets' train splits."""
    from metactl.data.text import DATASETS, find_datasets, protocol_texts

    cfg = resolve(load_toml(CONFIGS / f"intents-{unseen}.toml"), {"data": f"intents:{intents_dir}"})
    parts = protocol_texts(find_datasets(intents_dir, cfg.data), cfg.protocol, cfg.val_classes, cfg.seed, cfg.ways)
    seen = {name.split("/")[0] for part in ("train", "val") for name in parts[part]}
    assert seen == set(DATASETS) - {unseen} and {name.split("/")[0] for name in parts["test"]} == {unseen}
    ten_percent = {"clinc150": 14, "banking77": 21, "hwu64": 23}[unseen]  # the documented split: max(ways, 10 % of the intents)
    assert len(parts["val"]) == max(cfg.ways, ten_percent) == 64  # the 64-way recipe validates on 64 intents


def test_real_omniglot_protocol_counts(omniglot_dir: Path) -> None:
    data = omniglot.Omniglot(omniglot_dir, default_preprocessing(28, True))
    vin = omniglot.protocol_pools(data, "vinyals", ("train", "val", "test"))
    assert (vin["train"].num_classes, vin["val"].num_classes, vin["test"].num_classes) == (1028, 172, 423)
    lake = omniglot.protocol_pools(data, "lake", ("test",))
    assert lake["test"].num_classes == 659


def test_snapshots_are_runs_evaluate_reads(tmp_path: Path) -> None:
    from metactl import runs
    from metactl.config import EvaluateOptions
    from metactl.evaluate import evaluate_runs
    from metactl.testing import make_image_folder, tiny_config
    from metactl.train import meta_train

    data = make_image_folder(tmp_path / "data")
    cfg = tiny_config("maml", data, steps=4, snapshot_every=2, eval_every=2)
    out = meta_train(cfg, tmp_path / "run").path
    snaps = sorted((out / runs.SNAPSHOTS).iterdir())
    assert [s.name for s in snaps] == ["step-0000002", "step-0000004"]
    metas = [runs.read_meta(s) for s in snaps]
    assert [m["steps_done"] for m in metas] == [2, 4] and all(m["status"] == "snapshot" for m in metas)
    assert 0 < metas[0]["seconds"] <= metas[1]["seconds"] <= runs.read_meta(out)["seconds"]
    final, last = runs.load_tensors(out / runs.THETA), runs.load_tensors(snaps[-1] / runs.THETA)
    assert set(final) == set(last) and all(np.array_equal(final[k].numpy(), last[k].numpy()) for k in final)
    first = runs.load_tensors(snaps[0] / runs.THETA)
    assert not all(np.array_equal(first[k].numpy(), final[k].numpy()) for k in final)
    results = evaluate_runs(snaps, EvaluateOptions(data=str(data), query_shots=2, episodes=3))
    assert [r["run"] for r in results] == [str(s) for s in snaps] and all(len(r["steps"]) == cfg.test_inner_steps + 1 for r in results)


def test_snapshot_every_is_validated() -> None:
    from metactl.config import TrainConfig
    from metactl.errors import MetactlError

    with pytest.raises(MetactlError, match="snapshot-every must be >= 0"):
        TrainConfig(snapshot_every=-1)
