"""Omniglot (Lake et al. 2015) with the splits the papers use, and Lake's 20 one-shot runs.

``--data omniglot:DIR`` where ``DIR`` holds the official ``images_background`` and
``images_evaluation`` archives (``.zip`` as downloaded, or the extracted folders). Characters are
identified by their official ID, the ``XXXX`` of ``XXXX_YY.png`` (1..964 background, 965..1623
evaluation). Two protocols:

- ``lake``: meta-train on ``images_background`` (964 characters; ``val_classes`` of them held out
  for validation, seeded), test on all 659 ``images_evaluation`` characters (20 new alphabets).
- ``vinyals`` (Vinyals et al. 2016, the split MAML and its successors report): characters
  1..1200 train, of which the 172 of Armenian, Bengali, Early_Aramaic, Hebrew and
  Mkhedruli_(Georgian) are the validation part; characters 1201..1623 (423) are the test set.

``--rotations`` adds each training character rotated by 90/180/270 degrees as new classes, as the
papers do (4 x 1028 = 4112 training classes under ``vinyals``). Validation and test are unrotated.

``--data oneshot:PATH`` (``all_runs.zip`` or the folder holding it): the 20 fixed 20-way 1-shot
runs of Lake et al. (``runNN/training/classNN.png``, ``runNN/test/itemNN.png``,
``runNN/class_labels.txt``), each run an episode with one query per class.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from metactl.data.episodes import EpisodeBatch, split_classes
from metactl.data.folder import ArrayPool, Progress, _list_classes, load_folder
from metactl.data.images import decode_bytes, preprocess
from metactl.errors import MetactlError

PROTOCOLS = ("lake", "vinyals")
PARTS = ("images_background", "images_evaluation")
VINYALS_VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
VINYALS_TRAIN_LAST = 1200  # official IDs 1..1200 train (+ val), 1201..1623 test
TEST_SETS = {"lake": "images_evaluation: characters 965..1623 (659)", "vinyals": "characters 1201..1623 (423)"}
_ID = re.compile(r"(\d{4})_\d{2}\.png$", re.IGNORECASE)


def find_parts(root: Path) -> dict[str, Path] | None:
    """``{part: path}`` when ``root`` is a folder with both official parts (zip or extracted), else None."""
    if not root.is_dir():
        return None
    found: dict[str, Path] = {}
    for part in PARTS:
        for cand in (root / f"{part}.zip", root / part):
            if cand.exists():
                found[part] = cand
                break
    return found if len(found) == len(PARTS) else None


def _character_ids(path: Path) -> tuple[list[str], list[int]]:
    """Class names (sorted, as ``load_folder`` orders them) and the official character ID of each."""
    classes, zf = _list_classes(path)
    if zf is not None:
        zf.close()
    names = sorted(classes)
    ids = []
    for n in names:
        m = _ID.search(sorted(classes[n])[0])
        if m is None:
            raise MetactlError(
                f"{path}: {n} does not hold official Omniglot files (XXXX_YY.png).",
                "omniglot:DIR needs the official images_background/images_evaluation archives; use --data PATH for other folders.",
            )
        ids.append(int(m.group(1)))
    return names, ids


class Omniglot:
    """The official parts of one Omniglot folder, decoded on demand."""

    def __init__(self, root: Path, prep: dict[str, Any], progress: Progress | None = None) -> None:
        parts = find_parts(root)
        if parts is None:
            raise MetactlError(
                f"omniglot:{root}: expected images_background(.zip) and images_evaluation(.zip) in this folder.",
                "Point omniglot: at the folder holding the official Omniglot archives.",
            )
        self.root, self.parts, self.prep, self.progress = root, parts, prep, progress
        self._pools: dict[str, tuple[ArrayPool, np.ndarray]] = {}

    def part(self, name: str) -> tuple[ArrayPool, np.ndarray]:
        if name not in self._pools:
            path = self.parts[name]
            names, ids = _character_ids(path)
            pool = load_folder(path, self.prep, self.progress)
            if pool.names() != names:  # both sort the same class folders; a mismatch means the files changed underneath
                raise MetactlError(f"{path} changed while it was being read.", "Run again.")
            self._pools[name] = (pool, np.asarray(ids, dtype=np.int64))
        return self._pools[name]

    def characters(self, parts: tuple[str, ...], keep: Any) -> ArrayPool:
        """The characters of ``parts`` for which ``keep(official_id, class_name)`` is true, by ID."""
        chosen: list[tuple[int, ArrayPool, int]] = []
        for p in parts:
            pool, ids = self.part(p)
            names = pool.names()
            chosen += [(int(ids[c]), pool, c) for c in range(pool.num_classes) if keep(int(ids[c]), names[c])]
        chosen.sort(key=lambda t: t[0])
        images = [pool.get(c) for _, pool, c in chosen]
        offsets = np.concatenate([[0], np.cumsum([len(i) for i in images])]).astype(np.int64)
        names = [f"{i:04d} {pool.names()[c]}" for i, pool, c in chosen]
        return ArrayPool(np.concatenate(images) if images else np.empty((0,)), offsets, names)


def _alphabet(name: str) -> str:
    # "images_background/<Alphabet>/characterNN" -> Alphabet
    bits = name.split(" ", 1)[-1].split("/")
    return bits[-2] if len(bits) >= 2 else ""


def protocol_pools(data: Omniglot, protocol: str, which: tuple[str, ...], val_fraction: float = 0.1, seed: int = 0) -> dict[str, ArrayPool]:
    """``{"train"|"val"|"test": pool}`` for the requested members of ``which`` under ``protocol``."""
    if protocol not in PROTOCOLS:
        raise MetactlError(f"Unknown Omniglot protocol {protocol!r}.", f"Use one of: {', '.join(PROTOCOLS)}.")
    out: dict[str, ArrayPool] = {}
    if protocol == "lake":
        if "train" in which or "val" in which:
            background = data.characters(("images_background",), lambda i, n: True)
            train_ids, val_ids = split_classes(background.num_classes, val_fraction, seed, 2)
            out["train"], out["val"] = background.subset(train_ids), background.subset(val_ids)
        if "test" in which:
            out["test"] = data.characters(("images_evaluation",), lambda i, n: True)
    else:
        val_alpha = set(VINYALS_VAL_ALPHABETS)
        if "train" in which:
            out["train"] = data.characters(PARTS, lambda i, n: i <= VINYALS_TRAIN_LAST and _alphabet(n) not in val_alpha)
        if "val" in which:
            out["val"] = data.characters(PARTS, lambda i, n: i <= VINYALS_TRAIN_LAST and _alphabet(n) in val_alpha)
        if "test" in which:
            out["test"] = data.characters(("images_evaluation",), lambda i, n: i > VINYALS_TRAIN_LAST)
    return {k: v for k, v in out.items() if k in which}


def describe(pools: dict[str, ArrayPool], protocol: str) -> dict[str, Any]:
    return {k: {"characters": p.num_classes, "images": int(p.offsets[-1])} for k, p in pools.items()} | {"protocol": protocol}


class FixedEpisodes:
    """A fixed list of episodes (e.g. Lake's one-shot runs); ``sample`` is not random."""

    def __init__(self, batch: EpisodeBatch, names: list[str]) -> None:
        self.batch, self.names = batch, names
        self.ways = int(batch.support_y.max()) + 1
        self.shots = batch.support_x.shape[1] // self.ways

    def __len__(self) -> int:
        return self.batch.support_x.shape[0]

    def episodes(self, start: int, n: int) -> EpisodeBatch:
        b = self.batch
        s = slice(start, start + n)
        return EpisodeBatch(b.support_x[s], b.support_y[s], b.query_x[s], b.query_y[s])

    def sample(self, rng: np.random.Generator, tasks: int) -> EpisodeBatch:
        return self.episodes(0, tasks)


def oneshot_runs(path: Path, prep: dict[str, Any]) -> FixedEpisodes:
    """Lake et al.'s 20-way one-shot runs from ``all_runs.zip`` (or the folder holding it)."""
    if path.is_dir() and (path / "all_runs.zip").exists():
        path = path / "all_runs.zip"
    if not (path.is_file() and zipfile.is_zipfile(path)):
        raise MetactlError(f"oneshot:{path}: not all_runs.zip.", "Point oneshot: at Lake et al.'s all_runs.zip or the folder holding it.")
    with zipfile.ZipFile(path) as zf:
        members = set(zf.namelist())
        runs = sorted({m.split("/", 1)[0] for m in members if m.endswith("/class_labels.txt")})
        if not runs:
            raise MetactlError(f"{path}: no runNN/class_labels.txt inside.", "Use the official all_runs.zip.")
        sx, sy, qx, qy = [], [], [], []
        for run in runs:
            pairs = [line.split() for line in zf.read(f"{run}/class_labels.txt").decode().splitlines() if line.strip()]
            train = sorted({t for _, t in pairs})
            index = {t: i for i, t in enumerate(train)}

            def load(member: str, run: str = run) -> np.ndarray:
                if member not in members:
                    raise MetactlError(f"{path}: {member} is listed in {run}/class_labels.txt but missing.", "Use the official all_runs.zip.")
                return preprocess(decode_bytes(zf.read(member), f"{path}:{member}"), prep)

            sx.append(np.stack([load(t) for t in train])[:, None])
            sy.append(np.arange(len(train)))
            qx.append(np.stack([load(q) for q, _ in pairs])[:, None])
            qy.append(np.array([index[t] for _, t in pairs]))
    batch = EpisodeBatch(np.stack(sx), np.stack(sy).astype(np.int64), np.stack(qx), np.stack(qy).astype(np.int64))
    return FixedEpisodes(batch, runs)
