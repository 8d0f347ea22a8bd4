from __future__ import annotations

from pathlib import Path

import pytest

from metactl.config import TrainConfig, load_toml, resolve
from metactl.errors import MetactlError


def test_toml_keys_with_dashes_and_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('algo = "fomaml"\nmeta-batch = 4\ninner_lr = 0.1\nrotations = true\n')
    cfg = resolve(load_toml(f), {"meta_batch": 8, "ways": None})
    assert cfg.algo == "fomaml" and cfg.meta_batch == 8 and cfg.inner_lr == 0.1 and cfg.rotations is True and cfg.ways == 5


def test_unknown_keys_and_bad_types_reported_together(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('wayz = 5\nmeta_batch = "big"\nlearn_inner_lr = 3\n')
    with pytest.raises(MetactlError) as exc:
        load_toml(f)
    msg = str(exc.value)
    assert "unknown key 'wayz'" in msg and "meta_batch must be int" in msg and "learn_inner_lr must be bool" in msg


def test_invalid_values_reported_together() -> None:
    with pytest.raises(MetactlError) as exc:
        TrainConfig(ways=1, meta_batch=0, inner_lr=-1.0, device="tpu")
    msg = str(exc.value)
    for part in ("ways must be >= 2", "meta-batch must be > 0", "inner-lr must be >= 0", "device must be"):
        assert part in msg


def test_bad_toml_syntax(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("ways = = 5")
    with pytest.raises(MetactlError, match="not valid TOML"):
        load_toml(f)


def test_every_optional_key_takes_a_value_of_its_type_from_toml(tmp_path: Path) -> None:
    """Keys whose default is None (``body-lr``, ``time-budget``, ``threads``, ``backbone`` ...) load a value
    of the type their annotation names, not only None."""
    import dataclasses

    sample = {"float": "0.5", "int": "2", "str": '"x"'}
    optional = [f for f in dataclasses.fields(TrainConfig) if f.default is None]
    assert {f.name for f in optional} >= {"body_lr", "time_budget", "threads", "backbone"}
    for f in optional:
        kind = str(f.type).split("|")[0].strip()
        path = tmp_path / f"{f.name}.toml"
        companions = {"body_lr": 'backbone = "/m"\ntrain_body = true\n', "train_layers": 'backbone = "/m"\n'}.get(f.name, "")  # what they apply to
        path.write_text(f"{companions}{f.name} = {sample[kind]}\n")
        assert load_toml(path)[f.name] == {"float": 0.5, "int": 2, "str": "x"}[kind], f.name
