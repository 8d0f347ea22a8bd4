"""The contract suite over every registered algorithm (plugins run the same suite on themselves),
and proof that it can fail: hand-made broken algorithms (small subclasses of MAML, registered
through a real entry point) and a broken exporter each turn it red with a message naming the fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from metactl.algorithms.maml import MAML, MAMLConfig
from metactl.api import CLASS_ATTRIBUTES, HOOKS, INSTANCE_ATTRIBUTES, Algorithm, Learner, Params, SetupInfo, TaskBatch
from metactl.errors import MetactlError
from metactl.registry import ENV, available_names
from metactl.testing import check_algorithm, register_plugin


@pytest.mark.parametrize("name", available_names())
def test_algorithm_contract(name: str, tmp_path: Path) -> None:
    check_algorithm(name, tmp_path)


@pytest.mark.parametrize(
    ("name", "options"),
    [("maml", {"per_step_inner_lr": True, "multi_step_loss": True, "second_order_after": 1}), ("anil", {"tasks_per_forward": 0})],
)
def test_algorithm_options_keep_the_contract(name: str, options: dict, tmp_path: Path) -> None:
    check_algorithm(name, tmp_path, algo_options=options)


# --- mutants: each breaks one promise of the contract ---------------------------------------------


class AssignsGrad(MAML):
    """``p.grad = g`` instead of accumulating into it."""

    name: ClassVar[str] = "mutant-assigns-grad"

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        for p in learner.parameters():
            p.grad = None
        return super().meta_gradient(learner, batch)


class StepsTheta(MAML):
    """Takes an SGD step on θ itself (the trainer owns the step)."""

    name: ClassVar[str] = "mutant-steps-theta"

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        metrics = super().meta_gradient(learner, batch)
        with torch.no_grad():
            for p in learner.params.values():
                p -= 0.01 * p.grad
        return metrics


class StepsAlpha(MAML):
    """Takes a step on the inner learning rates α itself."""

    name: ClassVar[str] = "mutant-steps-alpha"

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        metrics = super().meta_gradient(learner, batch)
        with torch.no_grad():
            for a in learner.inner_lr.values():
                a -= 0.01 * a.grad
        return metrics


class SumsOverTasks(MAML):
    """Declares task_parallel (inherited) but its meta-gradient is a sum over tasks, not a mean."""

    name: ClassVar[str] = "mutant-sums-over-tasks"

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        previous = [p.grad for p in learner.parameters()]
        for p in learner.parameters():
            p.grad = None
        metrics = super().meta_gradient(learner, batch)
        for p, old in zip(learner.parameters(), previous, strict=True):  # still accumulates, still only touches .grad
            g = p.grad * len(batch)
            p.grad = g if old is None else old + g
        return metrics


class AdaptMutatesTheta(MAML):
    """Leaves θ at the adapted weights."""

    name: ClassVar[str] = "mutant-adapt-mutates-theta"

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        out = super().adapt(learner, x, y, steps)
        with torch.no_grad():
            for k, v in out[-1].items():
                learner.params[k].copy_(v)
        return out


class AdaptLeavesGrad(MAML):
    """Backpropagates the support loss into θ's .grad (it would leak into the next meta-step)."""

    name: ClassVar[str] = "mutant-adapt-leaves-grad"

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        with torch.enable_grad():
            learner.loss(learner.forward(learner.params, x), y).backward()
        return super().adapt(learner, x, y, steps)


class AdaptFreezesNorms(MAML):
    """Stores normalisation statistics in the shared model module."""

    name: ClassVar[str] = "mutant-adapt-freezes-norms"

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        out = super().adapt(learner, x, y, steps)
        norm = learner.model.norms[0]  # type: ignore[index]
        norm.mean, norm.var = torch.zeros_like(norm.weight.detach()), torch.ones_like(norm.weight.detach())
        return out


class AdaptNoisy(MAML):
    """Not repeatable: unseeded noise on the adapted weights."""

    name: ClassVar[str] = "mutant-adapt-noisy"

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        return [{k: v + 1e-3 * torch.randn_like(v) for k, v in w.items()} for w in super().adapt(learner, x, y, steps)]


MUTANTS: list[tuple[type, str]] = [
    (AssignsGrad, "meta_gradient must accumulate into .grad"),
    (StepsTheta, "meta_gradient changed θ"),
    (StepsAlpha, "meta_gradient changed α"),
    (SumsOverTasks, "task_parallel: the meta-gradient over 2 task workers differs"),
    (AdaptMutatesTheta, "adapt is not pure: it changed θ"),
    (AdaptLeavesGrad, r"adapt is not pure: it changed \.grad of θ"),
    (AdaptFreezesNorms, "adapt is not pure: it changed model state norms.0.mean"),
    (AdaptNoisy, "adapt is not pure: a repeated call"),
]


@pytest.fixture
def mutants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mutant installed as a ``metactl.algorithms`` entry point of a real (temporary) distribution."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.syspath_prepend(str(register_plugin(tmp_path / "site", {cls.name: f"{__name__}:{cls.__name__}" for cls, _ in MUTANTS})))


@pytest.mark.parametrize(("mutant", "message"), MUTANTS, ids=[cls.name for cls, _ in MUTANTS])
def test_contract_suite_catches_a_broken_algorithm(mutant: type, message: str, mutants: None, tmp_path: Path) -> None:
    assert mutant.name in available_names()
    with pytest.raises(AssertionError, match=message):
        check_algorithm(mutant.name, tmp_path / "check")


def _broken_load_adapted(monkeypatch: pytest.MonkeyPatch, fault: Any) -> None:
    from metactl import export

    real = export.load_adapted

    def load(path: Path) -> tuple[dict[str, Any], torch.nn.Module]:
        meta, model = real(path)
        fault(meta, model)
        return meta, model

    monkeypatch.setattr(export, "load_adapted", load)


def test_contract_suite_catches_an_exporter_that_swaps_two_head_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Export's own parity check compares the file with the (equally wrong) module it exported: it passes; the suite's reference does not."""

    def swap(meta: dict[str, Any], model: torch.nn.Module) -> None:
        with torch.no_grad():
            for t in (model.head.weight, model.head.bias):  # type: ignore[union-attr]
                t[[0, 1]] = t[[1, 0]].clone()

    _broken_load_adapted(monkeypatch, swap)
    with pytest.raises(AssertionError, match="ONNX probabilities differ from the adapted torch model"):
        check_algorithm("maml", tmp_path)


def test_contract_suite_catches_an_exporter_that_writes_labels_out_of_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _broken_load_adapted(monkeypatch, lambda meta, model: meta.update(labels=meta["labels"][::-1]))
    with pytest.raises(AssertionError, match="the ONNX file's labels"):
        check_algorithm("maml", tmp_path)


# --- every declared member is required: a plugin lacking one fails with its name -------------------


class Complete:
    """Every member of the contract written out, no base class (MAML by composition)."""

    name: ClassVar[str] = "complete-by-hand"
    description: ClassVar[str] = "MAML with every hook written by hand"
    Config: ClassVar[type] = MAMLConfig
    meta_learns: ClassVar[bool] = True
    task_parallel: ClassVar[bool] = True
    skip: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MAMLConfig, train: Any) -> None:
        self._maml = MAML(config, train)
        if "config" not in self.skip:
            self.config = config
        if "inner_lr_shape" not in self.skip:
            self.inner_lr_shape = "layer"

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        return None

    def make_optimizer(self, groups: list[dict[str, Any]], train: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(groups, lr=train.meta_lr)

    def begin_step(self, step: int, total: int) -> None:
        self._maml.begin_step(step, total)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        return self._maml.meta_gradient(learner, batch)

    def adapt(self, learner: Learner, x: Any, y: Tensor, steps: int) -> list[Params]:
        return self._maml.adapt(learner, x, y, steps)


MEMBERS = (*CLASS_ATTRIBUTES, *HOOKS, *INSTANCE_ATTRIBUTES)


def _lacking(member: str) -> type:
    body = {k: v for k, v in vars(Complete).items() if k not in ("__dict__", "__weakref__", member)}
    body.update(skip=(member,) if member in INSTANCE_ATTRIBUTES else ())
    if member != "name":
        body["name"] = f"lacks-{member}"
    return type(f"Lacks_{member}", (), body)


for _member in MEMBERS:
    globals()[f"Lacks_{_member}"] = _lacking(_member)


@pytest.fixture
def by_hand(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    points = {Complete.name: f"{__name__}:Complete"} | {f"lacks-{m}": f"{__name__}:Lacks_{m}" for m in MEMBERS}
    monkeypatch.syspath_prepend(str(register_plugin(tmp_path / "site", points, distribution="metactl-hook-plugins")))


def test_an_algorithm_with_every_hook_written_by_hand_passes(by_hand: None, tmp_path: Path) -> None:
    check_algorithm(Complete.name, tmp_path / "check")


@pytest.mark.parametrize("member", MEMBERS)
def test_an_algorithm_lacking_a_declared_member_fails_naming_it(member: str, by_hand: None, tmp_path: Path) -> None:
    assert member in Algorithm.__annotations__ or member in vars(Algorithm), f"{member} is not declared on the Algorithm protocol"
    with pytest.raises((MetactlError, AssertionError), match=rf"breaks the plugin contract: .*'?{member}'?"):
        check_algorithm(f"lacks-{member}", tmp_path / "check")
