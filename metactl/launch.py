"""``meta-train --nproc N``: start N local workers with torch.distributed's elastic launcher.

This is the launcher ``torchrun`` itself uses (``torch.distributed.launcher.api.elastic_launch``):
each worker is ``python -m metactl meta-train --config <resolved config> --out <run>`` with
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set; if a worker dies, the agent stops the others and
the launch fails with a clear error. Nothing here manages processes by hand.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from metactl.errors import MetactlError


def to_toml(values: dict[str, Any]) -> str:
    """The resolved config as TOML (scalars, plus the algo_options table)."""
    lines, tables = [], []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append(f"[{key}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in value.items()))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n\n" + "\n".join(tables)


def launch_local(cfg: Any, nproc: int, out: Path, force: bool, resume: bool, json_out: bool, log_to: list[str] | None = None) -> None:

    values = cfg.to_dict()
    if cfg.threads is None:
        values["threads"] = max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="metactl-launch-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(to_toml(values), encoding="utf-8")
        args = ["-m", "metactl", "meta-train", "--config", str(config), "--out", str(out)]
        args += ["--force"] if force else []
        args += ["--resume"] if resume else []
        args += ["--json"] if json_out else []
        for name in log_to or []:
            args += ["--log-to", name]  # each worker opens the loggers; only rank 0 writes to them
        launch = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=f"metactl-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0",
            max_restarts=0,
            monitor_interval=0.5,
            start_method="spawn",
        )
        try:
            elastic_launch(launch, sys.executable)(*args)
        except ChildFailedError as exc:
            rank, first = exc.get_first_failure()
            raise MetactlError(
                f"Distributed meta-training failed: worker rank {rank} exited with code {first.exitcode}.",
                "See that worker's message above; fix it and resume with --resume.",
            ) from None
