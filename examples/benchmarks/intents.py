"""Few-shot intents on unseen datasets: every row adapted on exactly the same K examples per intent.

    python examples/benchmarks/intents.py --unseen clinc150 banking77 hwu64 --shots 1 5 10 --draws 3 \\
        --run clinc150=runs/intents-clinc150 --run banking77=runs/intents-banking77 --run hwu64=runs/intents-hwu64 \\
        [--pretrain-run UNSEEN=RUN] [--rows ROW ...] [--skip-finetune] [--skip-setfit] [--onnx-shots 5] [--out-dir examples/results]

The setting (``metactl evaluate --all-classes``): all intents of the unseen dataset, K labeled texts per
intent drawn from its ``train`` split (draw d is a function of ``--seed`` and d only, the same for every
row and for ``metactl evaluate``), scored on its whole in-scope ``test`` split. The rows:

- ``centroid``, ``probe``: nearest class centroid and logistic regression on the frozen encoder (metactl's
  baselines; their runs learn nothing and are made here with ``--steps 1`` on a 4-label placeholder CSV);
- ``pretrain``: a ``--algo pretrain`` run given with ``--pretrain-run UNSEEN=RUN`` (supervised pre-training
  on the two other datasets), then fine-tuning a zero head; the learning rate and step count are the best
  of ``--pretrain-lrs`` x 1..``--pretrain-steps`` on the run's validation intents (``--split val``: intents
  of the two training datasets, ``train`` split) with the same K, never on a test split;
- ``finetune``: all of the encoder plus a new linear head trained on the K examples per intent (this
  script's own loop: AdamW, batches of 16, at most ``--ft-epochs`` epochs and ``--ft-max-steps`` steps),
  the learning rate the best of ``--ft-lrs`` on the validation intents of the protocol (``--val-classes``
  0.1 of the training datasets' intents, seed 0: the intents the presets validate on); ``--skip-finetune``;
- ``setfit``: the ``setfit`` package (optional: ``pip install setfit``) on the same encoder folder, its
  default contrastive fine-tuning and logistic-regression head, ``max_steps`` capped at ``--setfit-max-steps``;
- one row per ``--run UNSEEN=RUN`` (meta-trained runs, e.g. from ``examples/configs/intents-UNSEEN.toml``),
  adapted as ``metactl adapt`` adapts them (the run's validated step count, learned α); with ``--run-steps
  val`` (or ``both``) the step count is instead the best of 0..``--max-run-steps`` at each K on the run's
  validation intents in the same all-intents setting (``metactl evaluate --split val --all-classes``);
- one row per ``--ablation UNSEEN=RUN``: a run of the recipe (``examples/configs/intents-UNSEEN.toml``) with
  settings changed (``--ways 10``, ``--body-l2sp 0``, ``algo_options.cosine = false``, ``--algo pretrain``, …),
  adapted as ``metactl adapt`` adapts it; its description names what differs from the preset and the
  outer steps it ran (named ``ablation:<run dir>``);
- ``onnx``: the best ``--run`` row at the first ``--onnx-shots`` K (or ``--onnx-from ROW``), adapted on each
  draw (``metactl adapt``), exported (``metactl export --onnx --quantize int8``) and scored through
  onnxruntime + tokenizers, float and int8, with batch-1 latency and file size.

``--rows`` computes only the rows named (centroid probe pretrain finetune setfit runs ablations onnx) and keeps the
others from the existing JSON, so slow rows can be added one at a time; ``--shots`` likewise keeps a row's
cells at the other K. Fine-tuning reuses the validation accuracy of each learning rate, and the test
figures of the chosen one, that the JSON already holds for the same seed, draws and training settings (a
grid that grows costs only its new values); ``--fresh`` recomputes them.

Per row and K: accuracy (mean ± 95 % CI over the draws, and each draw), adaptation seconds (draw 0: from
the K texts per intent on disk to a ready model, model loading included), model size. Writes
``OUT_DIR/intents-UNSEEN.json`` (and ``.png`` with matplotlib); ``results_docs.py`` renders the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
UNSEEN = ("clinc150", "banking77", "hwu64")
ROWS = ("centroid", "probe", "pretrain", "finetune", "setfit", "runs", "ablations", "onnx")
SAME = ("protocol", "steps", "time_budget", "threads", "seed", "device")  # settings an ablation may change without saying so


def cell(values: np.ndarray) -> dict[str, Any]:
    """Mean ± 95 % CI (1.96 std / sqrt(n), as ``metactl evaluate``) over draws."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "ci95": float(1.96 * v.std() / np.sqrt(len(v))), "per_draw": v.tolist()}


def mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 1)


class Bench:
    """One unseen dataset: its texts, the shared sampler (features computed once) and the rows."""

    def __init__(self, args: argparse.Namespace, unseen: str, work: Path, before: dict[str, Any]) -> None:
        from metactl.data.text import evaluation_texts, find_datasets

        self.args, self.unseen, self.work = args, unseen, work
        self.protocol = f"unseen-{unseen}"
        self.data = f"intents:{args.intents}"
        self.found = find_datasets(args.intents, self.data)
        self.train_texts = evaluation_texts(self.found, self.protocol, "train")
        self.test_texts = evaluation_texts(self.found, self.protocol, "test")
        self.samplers: dict[str, dict[int, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.before = before  # OUT_DIR's JSON from an earlier invocation, for `earlier` (empty with --fresh)
        self.loaded: dict[Path, tuple[dict[str, Any], Any]] = {}
        self.oos_cache: dict[str, dict[str, Any]] = {}

    def earlier(self, name: str, shots: int, settings: dict[str, Any]) -> dict[str, Any]:
        """Row ``name``'s cell at K = ``shots`` in OUT_DIR's JSON, when it was computed with the same seed,
        draws and ``settings`` (empty otherwise, or with ``--fresh``)."""
        b = self.before
        if b.get("seed") != self.args.seed or b.get("draws") != self.args.draws:
            return {}
        for r in b.get("rows", []):
            if r["row"] == name and all(r.get("settings", {}).get(k) == v for k, v in settings.items()):
                return r.get("cells", {}).get(str(shots), {})
        return {}

    # --- the draws -------------------------------------------------------------------------------

    def load(self, run: Path, head: str | None = None) -> tuple[dict[str, Any], Any]:
        """``metactl.runs.load_run``, once per run; ``head``: the run's metadata with ProtoMAML's ``test_head``
        replaced (the same θ adapted from another starting head)."""
        from metactl import runs

        if run not in self.loaded:
            self.loaded[run] = runs.load_run(run)
        meta, learner = self.loaded[run]
        if head is not None:
            algorithm = meta["algorithm"]
            meta = {**meta, "algorithm": {**algorithm, "config": {**algorithm.get("config", {}), "test_head": head}}}
        return meta, learner

    def sampler(self, meta: dict[str, Any], learner: Any, shots: int, body: str, split: str, names: bool = False) -> Any:
        """The all-classes sampler for K = ``shots``, the body's features computed once for all K: per
        ``body`` (the frozen MiniLM, shared by its rows, or a run whose outer loop trained the body),
        split (``val``: the run's own validation intents) and ``names`` (each intent's name one more support text)."""
        from metactl.data import all_classes_sampler
        from metactl.evaluate import feature_fn

        mine = self.samplers.setdefault(f"{body}:{split}:{names}", {})
        if not mine:
            own = split == "val"
            base = all_classes_sampler(meta, None if own else self.data, shots, None if own else self.protocol, split, label_names=names)
            base.precompute(feature_fn(learner, "cpu"))
            mine[shots] = base
        if shots not in mine:
            mine[shots] = next(iter(mine.values())).with_shots(shots)
        return mine[shots]

    def curve(
        self,
        run: Path,
        shots: int,
        draws: int,
        steps: int,
        lr: float | None = None,
        split: str = "test",
        names: bool = False,
        ece: np.ndarray | None = None,
        head: str | None = None,
    ) -> np.ndarray:
        """Accuracy of each draw after 0..``steps`` inner steps, as ``metactl evaluate --all-classes`` (with
        ``--split val``: on the run's own validation intents; ``names``: ``--label-names``) computes it; when
        only the head adapts, on the body's features computed once (:meth:`sampler`). ``ece``: filled with
        each draw's expected calibration error."""
        from metactl.data import all_classes_sampler
        from metactl.evaluate import run_curve

        meta, learner = self.load(run, head)
        seed = self.args.seed
        if learner.model.adapts_head_only():
            body = "frozen" if learner.model.features_fixed() and split == "test" else str(run)  # validation intents differ by run
            sampler = self.sampler(meta, learner, shots, body, split, names)
            return run_curve(meta, learner, sampler, draws, steps, seed, inner_lr=lr, precompute=False, ece=ece)
        own = split == "val"
        sampler = all_classes_sampler(meta, None if own else self.data, shots, None if own else self.protocol, split, label_names=names)
        return run_curve(meta, learner, sampler, draws, steps, seed, inner_lr=lr, ece=ece)

    def support_texts(self, shots: int, d: int) -> dict[str, list[str]]:
        """Draw d's support texts (the sampler's picks, applied to the same ordered texts)."""
        from metactl.data.text import AllClassesEpisodes, TextPool

        pool = TextPool(list(self.train_texts), [[np.zeros(1, np.int64)] * len(t) for t in self.train_texts.values()])
        picks = AllClassesEpisodes(pool, None, shots).picks(self.args.seed, d)
        return {label: [texts[int(i)] for i in idx] for (label, texts), idx in zip(self.train_texts.items(), picks, strict=True)}

    def support_folder(self, shots: int, d: int) -> Path:
        folder = self.work / f"support-{shots}shot-draw{d}"
        if not folder.exists():
            folder.mkdir(parents=True)
            for label, texts in self.support_texts(shots, d).items():
                (folder / f"{label.split('/', 1)[1]}.txt").write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
        return folder

    def test_pairs(self) -> tuple[list[str], list[str]]:
        texts = [t for ts in self.test_texts.values() for t in ts]
        labels = [label.split("/", 1)[1] for label, ts in self.test_texts.items() for _ in ts]
        return texts, labels

    # --- rows scored by metactl (the same code path as ``metactl evaluate --all-classes``) ---------

    def metactl_row(
        self,
        name: str,
        run: Path,
        description: str,
        command: str,
        steps: int | None = None,
        lr: float | None = None,
        only: list[int] | None = None,
        names: bool | None = None,
        head: str | None = None,
    ) -> dict[str, Any]:
        """A run scored at each K as ``metactl evaluate --all-classes`` scores it: accuracy, expected
        calibration error, and (CLINC150) out-of-scope detection; ``names`` None: as the run was trained;
        ``head``: ProtoMAML's starting head replaced (see :meth:`load`)."""
        from metactl.config import TrainConfig

        meta, learner = self.load(run)
        cfg = TrainConfig(**meta["config"])
        k = steps if steps is not None else int(meta.get("adapt_steps", cfg.test_inner_steps))  # as `metactl adapt` does
        named = cfg.label_names if names is None else names
        row: dict[str, Any] = {"row": name, "description": description, "run": str(run), "algorithm": cfg.algo, "adapt": cfg.adapt, "cells": {}}
        row["label_names"] = named
        for shots in only or self.args.shots:
            t0 = time.perf_counter()
            ece = np.zeros((self.args.draws, k + 1))
            c = cell(self.curve(run, shots, self.args.draws, k, lr, names=named, ece=ece, head=head)[:, k])
            c["ece"] = round(float(ece[:, k].mean()), 4)
            if self.unseen == "clinc150":
                c["oos"] = self.oos(run, shots, k, named, head)
            c["score_seconds"] = round(time.perf_counter() - t0, 1)
            if head is None:
                c["adapt_seconds"] = self.adapt_seconds(run, shots, k, named)
            c["command"] = (
                f"metactl evaluate --from {run} --data {self.data} --protocol {self.protocol} --all-classes --shots {shots} "
                f"--episodes {self.args.draws} --seed {self.args.seed} --steps {k}"
                + (f" --inner-lr {lr}" if lr is not None else "")
                + (" --label-names" if named else " --no-label-names")
            )
            row["cells"][str(shots)] = c
            print(f"  {name} {shots}-shot: {100 * c['mean']:.1f} ± {100 * c['ci95']:.1f}, ECE {c['ece']:.3f}", flush=True)
        theta_mb = round(sum(v.numel() for v in learner.params.values()) * 4 / 2**20, 1)
        row["model_mb"] = theta_mb if cfg.train_body or cfg.adapt == "all" else round(self.body_mb() + theta_mb, 1)  # float32
        row["command"] = command
        return row

    def adapt_seconds(self, run: Path, shots: int, steps: int, names: bool | None = None) -> float:
        """``metactl adapt`` on draw 0's support folder: seconds from the call to the adapted folder on disk."""
        from metactl.adapt import adapt

        t0 = time.perf_counter()
        adapt(self.support_folder(shots, 0), run, steps=steps, out=self.work / "adapted-timing", force=True, label_names=names)
        return round(time.perf_counter() - t0, 1)

    def body_mb(self) -> float:
        return mb(self.args.backbone / "model.safetensors")

    def baseline_run(self, algo: str, shots: int) -> Path:
        """A centroid or probe run (nothing learned; ``--steps 1``) on the protocol, its settings chosen on the
        validation intents at K = ``shots``: the probe's C and temperature, the centroid's temperature. ``--ways
        64`` holds out the same 64 validation intents as the recipes (examples/configs/intents-*.toml)."""
        from metactl.config import TrainConfig
        from metactl.train import meta_train

        run = self.work / f"run-{algo}-{shots}shot"
        if not (run / "theta.safetensors").exists():
            cfg = TrainConfig(
                algo=algo, backbone=str(self.args.backbone), adapt="head", data=self.data, protocol=self.protocol, ways=64, shots=shots,
                query_shots=5, steps=1, eval_every=0, eval_episodes=1, max_length=64,
            )  # fmt: skip
            meta_train(cfg, run, force=True)
        return run

    def baseline_row(self, algo: str, names: bool) -> dict[str, Any]:
        """The centroid or probe at each K from its run at that K (:meth:`baseline_run`), with or without label names."""
        from metactl.runs import read_meta

        label = {
            "centroid": "nearest class centroid on frozen MiniLM (temperature fitted on validation intents)",
            "probe": "logistic-regression probe on frozen MiniLM (C and temperature chosen on validation intents)",
        }[algo] + (", + label names" if names else "")
        name = algo + ("+names" if names else "")
        cells = {}
        for shots in self.args.shots:
            run = self.baseline_run(algo, shots)
            sub = self.metactl_row(name, run, label, "", only=[shots], names=names)
            cells[str(shots)] = {**sub["cells"][str(shots)], "choice": read_meta(run)["algorithm"].get("selection", {})}
        a = self.args
        command = f"metactl meta-train --algo {algo} --backbone {a.backbone} --adapt head --data {self.data} --protocol {self.protocol}"
        command += " --ways 64 --shots K --steps 1"
        return {**sub, "run": str(self.work / f"run-{algo}-Kshot"), "cells": cells, "command": command}

    # --- out-of-scope detection (CLINC150) ----------------------------------------------------------

    def oos_inputs(self, run: Path, learner: Any, labels: list[str]) -> dict[str, Any]:
        """CLINC150's in-scope ``val`` texts (labels in ``labels``' order), ``oos_val`` and ``oos_test`` texts
        as the run's body's features (once per body)."""
        import torch

        from metactl.data.text import TextPool, load_tokenizer
        from metactl.evaluate import feature_fn

        body = "frozen" if learner.model.features_fixed() else str(run)
        if body in self.oos_cache:
            return self.oos_cache[body]
        raw = json.loads((self.args.intents / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
        val: dict[str, list[str]] = {label: [] for label in labels}
        for text, intent in raw["val"]:
            val[f"clinc150/{intent}"].append(text)
        meta, _ = self.load(run)
        prep = meta["preprocessing"]
        tok = load_tokenizer(Path(prep["tokenizer"]), int(prep["max_length"]))
        fn = feature_fn(learner, "cpu")
        out: dict[str, Any] = {}
        for key, texts in (("val", val), ("oos_val", {"oos": [t for t, _ in raw["oos_val"]]}), ("oos_test", {"oos": [t for t, _ in raw["oos_test"]]})):
            pool = TextPool.from_texts(texts, tok, int(prep["max_length"]))
            pool.precompute(fn)
            x = pool.take([(c, np.arange(pool.count(c))) for c in range(pool.num_classes)])
            out[key] = ({k: torch.from_numpy(v) for k, v in x.items()}, torch.cat([torch.full((pool.count(c),), c) for c in range(pool.num_classes)]))
        self.oos_cache[body] = out
        return out

    def oos(self, run: Path, shots: int, k: int, names: bool, head: str | None = None) -> dict[str, Any] | None:
        """Out-of-scope detection by thresholding the top probability, the run adapted on each draw as for
        its accuracy: AUROC (in-scope test texts against ``oos_test``), and in-scope accuracy / out-of-scope
        recall at the threshold that maximises their mean on CLINC150's ``val`` split (in-scope ``val`` and
        ``oos_val``), never on test. Mean over the draws (None for a run whose body adapts)."""
        import torch

        from metactl import runs
        from metactl.calibration import auroc, oos_at_threshold, threshold_on_validation
        from metactl.config import TrainConfig
        from metactl.data.tensors import to_batch
        from metactl.evaluate import _head_only_inputs, algorithm_of_run, predict_in_chunks

        meta, learner = self.load(run, head)
        if not learner.model.adapts_head_only():
            return None
        cfg = TrainConfig(**meta["config"])
        sampler = self.sampler(meta, learner, shots, "frozen" if learner.model.features_fixed() else str(run), "test", names)
        if sampler.ways != cfg.ways:
            learner, _ = runs.with_head(learner, meta["model"], sampler.ways)
        algo, extra = algorithm_of_run(meta, cfg), self.oos_inputs(run, learner, list(sampler.support.labels))
        rows = []
        for d in range(self.args.draws):
            sx, sy, qx, qy = _head_only_inputs(learner, *to_batch(sampler.draw(self.args.seed, d), "cpu").task(0))
            params = algo.adapt(learner, sx, sy, k)[k]

            def top(x: Any, params: Any = params, sx: Any = sx) -> tuple[np.ndarray, np.ndarray]:
                with torch.no_grad():
                    p, c = predict_in_chunks(learner, params, sx, x, 256).float().softmax(-1).max(-1)
                return p.numpy(), c.numpy()

            (tq, cq), (tv, cv) = top(qx), top(extra["val"][0])
            t_val, t_test = top(extra["oos_val"][0])[0], top(extra["oos_test"][0])[0]
            chosen = threshold_on_validation(tv, cv == extra["val"][1].numpy(), t_val)
            at = oos_at_threshold(chosen.threshold, tq, cq == qy.numpy(), t_test)
            rows.append((auroc(tq, t_test), at.in_scope_accuracy, at.oos_recall, chosen.threshold))
        m = np.mean(rows, axis=0)
        return dict(zip(("auroc", "in_scope_accuracy", "oos_recall", "threshold"), (round(float(v), 4) for v in m), strict=True))

    # --- pretrain: the learning rate and steps chosen on the validation intents ------------------

    def pretrain_row(self, run: Path) -> dict[str, Any]:
        choice = {}
        for shots in self.args.shots:
            best = (-1.0, 0.0, 0)
            for lr in self.args.pretrain_lrs:
                accuracy = self.curve(run, shots, 1, self.args.pretrain_steps, lr, split="val")[0]
                best = max([best, *((float(a), lr, step) for step, a in enumerate(accuracy) if step)])  # a zero head: 0 steps is chance
            choice[str(shots)] = {"val_accuracy": best[0], "inner_lr": best[1], "steps": best[2]}
        cells = {}
        for shots in self.args.shots:
            c = choice[str(shots)]
            sub = self.metactl_row("pretrain", run, "", "", steps=c["steps"], lr=c["inner_lr"], only=[shots])  # each K with its own choice
            cells[str(shots)] = {**sub["cells"][str(shots)], "choice": c}
        row = {**sub, "cells": cells, "row": "pretrain", "description": "supervised pre-training on the two other datasets, then fine-tuning a zero head"}
        grid = ", ".join(str(x) for x in self.args.pretrain_lrs)
        row["command"] = f"metactl evaluate --from {run} --split val --all-classes --inner-lr LR --steps {self.args.pretrain_steps} (LR in {grid})"
        return row

    # --- a meta-trained run, its step count chosen per K on the validation intents -------------------

    def val_steps_row(self, run: Path, description: str) -> dict[str, Any]:
        """The run adapted with, at each K, the step count (0 .. ``--max-run-steps``) best on its validation
        intents in the same setting (all of them, K texts each, ``--split val``); ties go to fewer steps, and
        0 steps is the meta-learned initial head itself (ProtoMAML: the prototypes)."""
        cells = {}
        for shots in self.args.shots:
            accuracy = self.curve(run, shots, 1, self.args.max_run_steps, split="val")[0]
            step = max(range(len(accuracy)), key=lambda s: (accuracy[s], -s))
            sub = self.metactl_row(f"metactl:{run.name}:val-steps", run, "", "", steps=step, only=[shots])
            cells[str(shots)] = {**sub["cells"][str(shots)], "choice": {"steps": step, "val_accuracy": float(accuracy[step])}}
        command = f"metactl evaluate --from {run} --split val --all-classes --steps {self.args.max_run_steps}, then the best step count"
        description += ", steps chosen per K on validation"
        return {**sub, "row": f"metactl:{run.name}:val-steps", "description": description, "cells": cells, "command": command}

    def ablation_row(self, run: Path) -> dict[str, Any]:
        """A run of the recipe with some settings changed, adapted as ``metactl adapt`` adapts it."""
        from metactl.runs import read_meta

        meta = read_meta(run)
        description = "the recipe, " + ", ".join(ablation_changes(meta["config"], self.unseen)) + f"; {meta['steps_done']} outer steps"
        row = self.metactl_row(f"ablation:{run.name}", run, description, f"metactl meta-train ... --out {run}")
        return {**row, "steps_done": meta["steps_done"]}

    # --- plain fine-tuning of the whole encoder ----------------------------------------------------

    def finetune_row(self) -> dict[str, Any]:
        from metactl.data.text import AllClassesEpisodes, TextPool, load_tokenizer, protocol_texts

        val = protocol_texts(self.found, self.protocol, 0.1, 0, 10)["val"]
        tok = load_tokenizer(self.args.backbone / "tokenizer.json", 64)
        val_pool = TextPool.from_texts(val, tok, 64)
        row: dict[str, Any] = {"row": "finetune", "description": "MiniLM + a new head, all weights trained on the K examples", "cells": {}}
        same = {"epochs": self.args.ft_epochs, "max_steps": self.args.ft_max_steps, "batch": 16, "optimizer": "AdamW"}
        for shots in self.args.shots:
            grid = {}
            prev = self.earlier("finetune", shots, same)  # a learning rate's figures do not change when the grid grows
            prev_grid = prev.get("choice", {}).get("val_grid", {})
            vs = AllClassesEpisodes(val_pool, None, shots, "validation")
            picks = vs.picks(self.args.seed, 0)
            names = list(val)
            support = {n: [val[n][int(i)] for i in idx] for n, idx in zip(names, picks, strict=True)}
            rest = [(t, c) for c, n in enumerate(names) for i, t in enumerate(val[n]) if i not in set(picks[c].tolist())]
            for lr in self.args.ft_lrs:
                if str(lr) in prev_grid:
                    grid[str(lr)] = prev_grid[str(lr)]
                else:
                    grid[str(lr)] = self.finetune_once(support, rest[:: max(1, len(rest) // 1000)], lr)[0]
                    print(f"  finetune {shots}-shot, validation, lr {lr}: {100 * grid[str(lr)]:.1f}", flush=True)
            lr = max(self.args.ft_lrs, key=lambda x: grid[str(x)])
            if prev.get("choice", {}).get("lr") == lr:
                row["cells"][str(shots)] = {**prev, "choice": {"lr": lr, "val_grid": grid}}  # the test figures of this learning rate, computed before
                print(f"  finetune {shots}-shot (lr {lr}, as before): {100 * prev['mean']:.1f}", flush=True)
                continue
            accs, secs = [], []
            texts, labels = self.test_pairs()
            for d in range(self.args.draws):
                sup = {label.split("/", 1)[1]: ts for label, ts in self.support_texts(shots, d).items()}
                order = list(sup)
                acc, s = self.finetune_once(sup, [(t, order.index(lab)) for t, lab in zip(texts, labels, strict=True)], lr)
                accs.append(acc)
                secs.append(s)
            row["cells"][str(shots)] = {**cell(np.array(accs)), "adapt_seconds": round(secs[0], 1), "choice": {"lr": lr, "val_grid": grid}}
            print(f"  finetune {shots}-shot (lr {lr}): {100 * np.mean(accs):.1f}", flush=True)
        row["model_mb"] = self.body_mb()
        row["settings"] = {**same, "lrs": self.args.ft_lrs}
        return row

    def finetune_once(self, support: dict[str, list[str]], queries: list[tuple[str, int]], lr: float) -> tuple[float, float]:
        """Accuracy on ``queries`` after fine-tuning MiniLM (mean pooling, L2 normalised) + a zero linear head; training seconds."""
        import torch
        import torch.nn.functional as F
        from tokenizers import Tokenizer
        from transformers import AutoModel

        torch.manual_seed(self.args.seed)
        tok = Tokenizer.from_file(str(self.args.backbone / "tokenizer.json"))
        tok.enable_truncation(64)
        tok.enable_padding()

        def embed(model: Any, texts: list[str]) -> torch.Tensor:
            enc = tok.encode_batch(texts)
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            return F.normalize(pooled, dim=-1)

        t0 = time.perf_counter()
        model = AutoModel.from_pretrained(str(self.args.backbone))
        labels = list(support)
        head = torch.nn.Linear(model.config.hidden_size, len(labels))
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=lr)
        xs = [(t, c) for c, label in enumerate(labels) for t in support[label]]
        rng = np.random.default_rng(self.args.seed)
        step = 0
        model.train()
        for _ in range(self.args.ft_epochs):
            for lo in range(0, len(xs), 16):
                if step >= self.args.ft_max_steps:
                    break
                if lo == 0:
                    rng.shuffle(xs)
                batch = xs[lo : lo + 16]
                loss = F.cross_entropy(head(embed(model, [t for t, _ in batch])) * 20, torch.tensor([c for _, c in batch]))  # scale 20: cosine logits
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        seconds = time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for lo in range(0, len(queries), 128):
                part = queries[lo : lo + 128]
                pred = head(embed(model, [t for t, _ in part])).argmax(-1)
                correct += int((pred == torch.tensor([c for _, c in part])).sum())
        return correct / max(len(queries), 1), seconds

    # --- SetFit ------------------------------------------------------------------------------------

    def setfit_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"row": "setfit", "description": "SetFit: contrastive fine-tuning of MiniLM + logistic regression", "cells": {}}
        try:
            from datasets import Dataset
            from setfit import SetFitModel, Trainer, TrainingArguments
        except ImportError as exc:
            row["status"] = f"not installed ({exc.name})"
            return row
        import setfit

        texts, labels = self.test_pairs()
        for shots in self.args.shots:
            accs, secs = [], []
            for d in range(self.args.draws):
                sup = {label.split("/", 1)[1]: ts for label, ts in self.support_texts(shots, d).items()}
                t0 = time.perf_counter()
                model = SetFitModel.from_pretrained(str(self.args.backbone))
                train = Dataset.from_dict({"text": [t for ts in sup.values() for t in ts], "label": [lab for lab, ts in sup.items() for _ in ts]})
                targs = TrainingArguments(
                    output_dir=str(self.work / "setfit"), max_steps=self.args.setfit_max_steps, seed=self.args.seed, report_to="none"
                )  # no experiment tracker (transformers would pick any installed one)
                trainer = Trainer(model=model, args=targs, train_dataset=train)
                trainer.train()
                secs.append(time.perf_counter() - t0)
                pred = list(model.predict(texts, batch_size=128))
                accs.append(float(np.mean([str(p) == y for p, y in zip(pred, labels, strict=True)])))
            row["cells"][str(shots)] = {**cell(np.array(accs)), "adapt_seconds": round(secs[0], 1)}
            print(f"  setfit {shots}-shot: {100 * np.mean(accs):.1f}", flush=True)
        row["model_mb"] = self.body_mb()
        row["settings"] = {"version": setfit.__version__, "max_steps": self.args.setfit_max_steps, "otherwise": "SetFit's TrainingArguments defaults"}
        return row

    # --- ONNX --------------------------------------------------------------------------------------

    def onnx_row(self, source: dict[str, Any]) -> dict[str, Any]:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from metactl.adapt import adapt
        from metactl.export import export

        run = Path(source["run"])
        row: dict[str, Any] = {"row": "onnx", "description": f"{source['row']} exported to ONNX, scored in onnxruntime", "source": source["row"], "cells": {}}
        texts, labels = self.test_pairs()
        for shots in self.args.onnx_shots:
            if str(shots) not in source["cells"]:
                continue
            steps = int(source["cells"][str(shots)]["command"].split("--steps ")[1].split()[0])
            float_acc, int8_acc, lat_f, lat_q = [], [], [], []
            for d in range(self.args.draws):
                adapted, exported = self.work / f"onnx-adapted-{shots}-{d}", self.work / f"onnx-export-{shots}-{d}"
                adapt(self.support_folder(shots, d), run, steps=steps, out=adapted, force=True)
                export(adapted, exported, quantize="int8", force=True)
                tok = Tokenizer.from_file(str(exported / "tokenizer.json"))
                id2label = json.loads((exported / "config.json").read_text())["id2label"]
                for name, accs, lats in (("model.onnx", float_acc, lat_f), ("model.int8.onnx", int8_acc, lat_q)):
                    session = ort.InferenceSession(str(exported / name), providers=["CPUExecutionProvider"])
                    correct = 0
                    for lo in range(0, len(texts), 64):
                        enc = tok.encode_batch(texts[lo : lo + 64])
                        feed = {"input_ids": np.array([e.ids for e in enc], np.int64), "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
                        pred = session.run(["probabilities"], feed)[0].argmax(1)
                        correct += sum(id2label[str(int(p))] == y for p, y in zip(pred, labels[lo : lo + 64], strict=True))
                    accs.append(correct / len(texts))
                    if d == 0:
                        times = []
                        for t in texts[: self.args.latency_texts]:
                            e = tok.encode(t)
                            feed = {"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask], np.int64)}
                            t0 = time.perf_counter()
                            session.run(["probabilities"], feed)
                            times.append(time.perf_counter() - t0)
                        lats.append(1000 * statistics.median(times))
            row["cells"][str(shots)] = {
                **cell(np.array(float_acc)),
                "int8": cell(np.array(int8_acc)),
                "torch": source["cells"][str(shots)]["per_draw"],
                "latency_ms": {"float": round(lat_f[0], 2), "int8": round(lat_q[0], 2)},
            }
            row["model_mb"] = {"float": mb(exported / "model.onnx"), "int8": mb(exported / "model.int8.onnx")}
            print(f"  onnx {shots}-shot: float {100 * np.mean(float_acc):.1f}, int8 {100 * np.mean(int8_acc):.1f}", flush=True)
        return row

    # --- all rows ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t_all = time.perf_counter()
        a = self.args
        for algo in ("centroid", "probe"):
            if algo in a.rows:
                self.rows.extend(self.baseline_row(algo, names) for names in (False, True))
        pre = a.pretrain_run.get(self.unseen)
        if "pretrain" in a.rows:
            self.rows.append(self.pretrain_row(pre) if pre else {"row": "pretrain", "status": "not run (no --pretrain-run given)", "cells": {}})
        if "finetune" in a.rows:
            self.rows.append({"row": "finetune", "status": "skipped (--skip-finetune)", "cells": {}} if a.skip_finetune else self.finetune_row())
        if "setfit" in a.rows:
            self.rows.append({"row": "setfit", "status": "skipped (--skip-setfit)", "cells": {}} if a.skip_setfit else self.setfit_row())
        metactl_rows = []
        for run in a.run.get(self.unseen, []) if "runs" in a.rows else []:
            from metactl.runs import read_meta

            cfg = read_meta(run)["config"]
            first = {True: " (first order)", False: " (second order)"}.get(cfg.get("algo_options", {}).get("first_order"), "")
            desc = f"metactl {cfg['algo']}{first} --adapt {cfg['adapt']}" + (f" rank {cfg['lora_rank']}" if cfg["adapt"] == "lora" else "")
            if cfg.get("train_layers"):
                desc += f" --train-layers {cfg['train_layers']} (body lr {cfg['body_lr']:g}), {cfg['ways']}-way"
            elif cfg.get("train_body"):
                desc += " --train-body" + (f" (body lr {cfg['body_lr']:g})" if cfg.get("body_lr") else "")
            desc += ", label names" if cfg.get("label_names") else ""
            probe_head = cfg.get("algo_options", {}).get("test_head") == "probe"
            desc += ", probe head" if probe_head else ""
            if a.run_steps in ("adapt", "both"):
                metactl_rows.append(self.metactl_row(f"metactl:{run.name}", run, desc, f"metactl meta-train ... --out {run}"))
                if cfg.get("label_names"):  # the ablations that cost no training: the same run adapted without the names,
                    metactl_rows.append(self.metactl_row(f"metactl:{run.name}:no-names", run, desc + " (adapted without them)", "", names=False))
                if probe_head:  # and from its prototypes instead of the probe
                    row = self.metactl_row(f"metactl:{run.name}:prototype-head", run, desc.replace(", probe head", ", prototype head"), "", head="prototype")
                    metactl_rows.append(row)
            if a.run_steps in ("val", "both"):
                metactl_rows.append(self.val_steps_row(run, desc))
        self.rows.extend(metactl_rows)
        if "ablations" in a.rows:
            self.rows.extend(self.ablation_row(run) for run in a.ablation.get(self.unseen, []))
        if "onnx" in a.rows:
            onnx_from = [r for r in self.rows if r["row"] == a.onnx_from] if a.onnx_from else metactl_rows
            scored = [r for r in onnx_from if any(str(k) in r.get("cells", {}) for k in a.onnx_shots)]
            if scored and a.onnx_shots:
                best = max(scored, key=lambda r: r["cells"][str(a.onnx_shots[0])]["mean"])
                self.rows.append(self.onnx_row(best))
            else:
                self.rows.append({"row": "onnx", "status": "not run (no metactl run given)", "cells": {}})
        return {
            "unseen": self.unseen,
            "protocol": self.protocol,
            "intents": len(self.test_texts),
            "test_texts": sum(len(t) for t in self.test_texts.values()),
            "shots": a.shots,
            "draws": a.draws,
            "seed": a.seed,
            "backbone": str(a.backbone),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "rows": self.rows,
            "seconds": round(time.perf_counter() - t_all, 1),
        }


CHANGES = {
    "ways": lambda v, p: f"{v}-way episodes (recipe {p})",
    "body_warmup": lambda v, p: "no body warmup" if not v else f"body warmup {v} steps (recipe {p})",
    "body_l2sp": lambda v, p: "no L2-SP" if not v else f"L2-SP {v:g} (recipe {p:g})",
    "keep_best": lambda v, p: "the last θ kept, not the best on validation" if not v else "the best θ on validation kept",
    "label_names": lambda v, p: "no label names" if not v else "label names",
    "algo": lambda v, p: "all-intents cosine-softmax pre-training instead of episodes" if v == "pretrain" else f"--algo {v} (recipe {p})",
    "cosine": lambda v, p: "Euclidean prototypes at scale 1 (recipe: cosine, learned temperature)" if v is False else f"cosine {v} (recipe {p})",
}


def ablation_changes(config: dict[str, Any], unseen: str) -> list[str]:
    """What a run's config changes against the recipe preset ``examples/configs/intents-<unseen>.toml``
    (the settings of ``SAME`` aside; a ``--algo pretrain`` run's own learning rate aside)."""
    import tomllib

    preset = tomllib.loads((ROOT / "examples" / "configs" / f"intents-{unseen}.toml").read_text(encoding="utf-8"))
    mine = {**config, **config.get("algo_options", {})}
    theirs = {**{k: v for k, v in preset.items() if k != "algo_options"}, **preset.get("algo_options", {})}
    if config.get("algo") == preset.get("algo"):  # an option the preset leaves at its default (None: the algorithm decides)
        theirs = {**{k: None for k in config.get("algo_options", {})}, **theirs}
    out = []
    for key in sorted(set(mine) | set(theirs)):
        if key in SAME or key in ("algo_options", "backbone", "data", "test_head") or (key == "meta_lr" and mine.get("algo") != theirs.get("algo")):
            continue
        v, p = mine.get(key), theirs.get(key)
        if key in theirs and v != p:
            out.append(CHANGES.get(key, lambda v, p, key=key: f"{key} = {v} (recipe {p})")(v, p))
    return out or ["as the preset"]


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the rows of ``old`` it did not compute (``--rows``) and the cells of ``old``'s rows at
    the K it did not compute (``--shots``): a row is replaced by a new row of its name unless the new one
    has no figures (skipped, not run) and the old one has; the old row's cells at K outside ``new``'s
    shots stay."""
    rows = {r["row"]: r for r in old.get("rows", [])}
    for r in new["rows"]:
        before = rows.get(r["row"], {}).get("cells", {})
        if r.get("cells"):
            kept = {k: c for k, c in before.items() if int(k) not in new["shots"]}
            rows[r["row"]] = {**r, "cells": dict(sorted({**kept, **r["cells"]}.items(), key=lambda kc: int(kc[0])))}
        elif not before:
            rows[r["row"]] = r

    def rank(name: str) -> tuple[int, str]:
        group = "runs" if name.startswith("metactl:") else "ablations" if name.startswith("ablation:") else name.split("+")[0]
        return (ROWS.index(group) if group in ROWS else len(ROWS), name)

    shots = sorted(set(old.get("shots", [])) | set(new["shots"]))
    return {**new, "shots": shots, "rows": [rows[n] for n in sorted(rows, key=rank)], "seconds": round(old.get("seconds", 0) + new["seconds"], 1)}


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in result["rows"]:
        ks = [int(k) for k in r.get("cells", {}) if r["cells"][k]]
        if ks:
            ys = [100 * r["cells"][str(k)]["mean"] for k in ks]
            es = [100 * r["cells"][str(k)]["ci95"] for k in ks]
            ax.errorbar(ks, ys, yerr=es, marker="o", capsize=3, label=r["row"])
    ax.set(xlabel="K (labeled texts per intent)", ylabel="accuracy (%)", title=f"all {result['intents']} intents of {result['unseen']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pairs(items: list[str], what: str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for item in items:
        unseen, sep, path = item.partition("=")
        if not sep or unseen not in UNSEEN:
            raise SystemExit(f"{what} {item}: write UNSEEN=PATH with UNSEEN one of {', '.join(UNSEEN)}")
        out.setdefault(unseen, []).append(Path(path))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unseen", nargs="+", choices=UNSEEN, default=list(UNSEEN))
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", action="append", default=[], metavar="UNSEEN=RUN", help="a meta-trained run to score (repeatable)")
    p.add_argument("--ablation", action="append", default=[], metavar="UNSEEN=RUN", help="a run of the recipe with settings changed (repeatable)")
    p.add_argument("--pretrain-run", action="append", default=[], metavar="UNSEEN=RUN", help="an --algo pretrain run")
    p.add_argument("--pretrain-lrs", nargs="+", type=float, default=[1.0, 3.0, 10.0, 30.0, 100.0])
    p.add_argument("--pretrain-steps", type=int, default=160)
    p.add_argument(
        "--run-steps", choices=("adapt", "val", "both"), default="adapt",
        help="adapt --run rows with the run's own step count (as metactl adapt), with the count best per K on the validation intents, or both rows",
    )  # fmt: skip
    p.add_argument("--max-run-steps", type=int, default=10, help="the largest step count --run-steps val tries")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="compute these rows; the others are kept from OUT_DIR's JSON")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--ft-lrs", nargs="+", type=float, default=[2e-5, 5e-5, 1e-4, 2e-4])
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--ft-max-steps", type=int, default=300)
    p.add_argument("--skip-setfit", action="store_true")
    p.add_argument("--setfit-max-steps", type=int, default=300)
    p.add_argument("--onnx-shots", nargs="*", type=int, default=[5])
    p.add_argument("--onnx-from", default=None, help="the row to export (default: the best --run row)")
    p.add_argument("--latency-texts", type=int, default=100)
    p.add_argument("--backbone", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    p.add_argument("--intents", type=Path, default=SHARED / "datasets" / "intents")
    p.add_argument("--workdir", type=Path, default=Path("runs/intents-bench"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "examples" / "results")
    p.add_argument("--fresh", action="store_true", help="recompute fine-tuning cells even where OUT_DIR's JSON has them for the same settings")
    args = p.parse_args(argv)
    args.run = pairs(args.run, "--run")
    args.ablation = pairs(args.ablation, "--ablation")
    args.pretrain_run = {k: v[-1] for k, v in pairs(args.pretrain_run, "--pretrain-run").items()}
    args.backbone, args.intents = args.backbone.resolve(), args.intents.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for unseen in args.unseen:
        print(f"{unseen}: all intents, K = {args.shots}, {args.draws} draws", flush=True)
        work = args.workdir / unseen
        work.mkdir(parents=True, exist_ok=True)
        dest = args.out_dir / f"intents-{unseen}.json"
        before = json.loads(dest.read_text(encoding="utf-8")) if dest.exists() else {}
        result = Bench(args, unseen, work, {} if args.fresh else before).run()
        if set(args.rows) != set(ROWS) and before:
            result = merge(before, result)
        with tempfile.NamedTemporaryFile("w", dir=args.out_dir, delete=False, suffix=".tmp") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        Path(f.name).replace(dest)
        plot(result, dest.with_suffix(".png"))
        print(f"{dest} ({result['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
