"""Every extension point of metactl, declared once (the way simonw/llm keeps its hookspecs in one file).

Five entry-point groups take plugins; metactl's built-ins register in its own ``pyproject.toml`` exactly
as a third party's would. Each point is a ``typing.Protocol`` below: its required members, then its
OPTIONAL hooks, which a plugin may leave out. Callers never probe a plugin with ``hasattr``: they ask
:func:`hook` for an optional hook by its declared name and get it, or None when the plugin has none.

This module imports nothing heavy (no torch, numpy or onnxruntime): the types the hooks speak are
named in their annotations and documented where they live (``metactl.api.Learner``,
``metactl.api.TaskBatch``, ``metactl.data.examples.LabeledExamples``...). docs/plugins.md's reference
section is generated from this file by :func:`reference_markdown` (a test keeps the two equal).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

# names of types defined in heavier modules; Any here so that this module stays import-light
Learner = Any  # metactl.api.Learner
TaskBatch = Any  # metactl.api.TaskBatch
SetupInfo = Any  # metactl.api.SetupInfo
Inputs = Any  # metactl.api.Inputs: one tensor, or named tensors sharing their leading dimensions
Params = Any  # metactl.api.Params: dict[str, Tensor]
Tensor = Any  # torch.Tensor
Optimizer = Any  # torch.optim.Optimizer
Array = Any  # numpy.ndarray
EpisodeBatch = Any  # metactl.data.episodes.EpisodeBatch
TaskData = Any  # metactl.data.sources.TaskData
LabeledExamples = Any  # metactl.data.examples.LabeledExamples
ClassPool = Any  # metactl.data.episodes.ClassPool: labeled examples by class (num_classes, count, take)
HeadAdaptation = Any  # metactl.adapt_spec.HeadAdaptation: a head adaptation as data (export --adaptable)
AdaptableModules = Any  # metactl.models.AdaptableModules: what export --adaptable traces
InnerLrShape = Literal["layer", "element", "step"]


# --- metactl.algorithms -------------------------------------------------------------------------


class Algorithm(Protocol):
    """A meta-learning algorithm (``--algo NAME``). ``metactl.api.AlgorithmBase`` supplies defaults for
    ``setup``, ``make_optimizer``, ``begin_step``, ``meta_learns``, ``task_parallel`` and ``inner_lr_shape``."""

    name: ClassVar[str]
    """The ``--algo`` name (the entry point's name)."""
    description: ClassVar[str]
    """One line for ``metactl algorithms``."""
    Config: ClassVar[type]
    """A dataclass of the algorithm's own options (``algo_options`` in a config file); validate in ``__post_init__``."""
    meta_learns: ClassVar[bool]
    """False for a baseline with nothing to meta-learn (its ``adapt`` is the whole method): ``meta_gradient``
    then adds no gradient, and a run of it (``meta-train --steps 1``) is the pretrained initialization."""
    task_parallel: ClassVar[bool]
    """True when the meta-gradient and metrics are means over independent tasks: the trainer may then split
    the meta-batch over task threads (``--task-threads``) and sum the parts. False: one call per meta-batch."""

    config: Any
    """The Config instance, set by ``__init__(config, train)``; recorded in the run's ``metactl.json``."""
    inner_lr_shape: InnerLrShape
    """The shape of α: ``"layer"`` (one scalar per parameter tensor), ``"element"`` (one per weight, Meta-SGD)
    or ``"step"`` (one scalar per parameter tensor and inner step, MAML++ LSLR)."""

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        """Called once before training (not on resume's restored values): check the task, add ``learner.extra``."""
        ...

    def make_optimizer(self, groups: list[dict[str, Any]], train: Any) -> Optimizer:
        """The outer optimizer over the parameter groups (θ, α if learned, extra). Default: Adam at ``train.meta_lr``."""
        ...

    def begin_step(self, step: int, total: int) -> None:
        """Called before each meta-step with the 0-based step and the planned total (schedules read it)."""
        ...

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """Add the meta-gradient of one meta-batch into ``.grad`` of θ, α and extra; never step them.
        Returns at least ``loss`` and ``metric`` (means over the tasks)."""
        ...

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """The inner loop, pure: the weights after each of 0..steps steps (detached); θ and α untouched."""
        ...

    # optional
    def select_on_validation(self, learner: Learner, pool: ClassPool, shots: int, seed: int) -> dict[str, Any]:
        """OPTIONAL. Called once after training (rank 0) with θ and the run's validation classes (``pool``,
        never test classes), ``--shots`` and ``--seed``: choose a setting of ``config`` on them and set it
        (``adapt``, ``evaluate`` and ``export`` then use the recorded config). Returns what to record as the
        run's ``algorithm.selection`` ({}: nothing chosen)."""
        ...

    def adaptable_head(self, learner: Learner, steps: int) -> HeadAdaptation:
        """OPTIONAL. For ``export --adaptable``: the head adaptation ``adapt(learner, x, y, steps)`` performs, as data
        (``metactl.adapt_spec.HeadAdaptation``: prototype / θ's / zero / probe start, then per-step α), from which
        ``adapt.onnx`` is built. Only for an inner loop that adapts the head alone; raise
        ``metactl.adapt_spec.NotAdaptable`` (saying why) for a run whose adaptation changes the body."""
        ...


# --- metactl.models -----------------------------------------------------------------------------


class ExportModule(Protocol):
    """What ``export --onnx`` traces (a model's ``export_module(preprocessing)``): the client's raw inputs in,
    class probabilities out."""

    input_names: list[str]
    """The graph's input names (``pixels``; ``input_ids``, ``attention_mask``)."""
    output_names: list[str]
    """The graph's output names; ``probabilities`` among them."""

    def example_inputs(self) -> tuple[Tensor, ...]:
        """Inputs to trace with (their first dimension is the dynamic batch)."""
        ...

    def client_inputs(self, examples: Array) -> dict[str, Array]:
        """Preprocessed examples (as the support reader returns them) -> the graph's inputs, as a client sends them."""
        ...

    def __call__(self, *inputs: Tensor) -> Tensor: ...

    # optional
    dynamic_axes: dict[str, dict[int, str]]
    """OPTIONAL. The dynamic dimensions per input; default: dimension 0 is the batch, integer inputs are ``[batch, seq]``."""


class Model(Protocol):
    """A model a run's spec names (``"kind": NAME``), an ``nn.Module``. ``metactl.models.ModelBase``
    supplies defaults for every required member but ``from_spec`` and ``forward``."""

    head: Any
    """The classifier/regressor head (an ``nn.Linear``); its parameters are ``head.weight``, ``head.bias``."""

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Model:
        """Build the model from its recorded spec (``spec["kind"]`` is the entry point's name)."""
        ...

    def forward(self, x: Inputs, ref: int | None = None, tasks: int = 1, return_features: bool = False) -> Tensor:
        """Outputs (or the body's features). ``ref``: normalise with statistics of the first ``ref`` rows only;
        ``tasks`` > 1: the batch is that many task-major blocks, each normalised on its own."""
        ...

    def frozen_parameter_names(self) -> list[str]:
        """Parameters that are not meta-learned (a pretrained body): not in θ, α, the optimizer or the run dir."""
        ...

    def outer_only_parameter_names(self) -> list[str]:
        """Meta-learned parameters the inner loop leaves alone (their inner learning rate is fixed at 0)."""
        ...

    def features_fixed(self) -> bool:
        """True when the body's output never changes during meta-training (a frozen body under a head that
        alone adapts): the trainer then computes each example's features once (``forward`` takes
        ``{"features": ...}``)."""
        ...

    def adapts_head_only(self) -> bool:
        """True when the inner loop adapts the head alone and the body's output for an example does not
        depend on the rest of its batch: adaptation and evaluation then run the body once per example and
        take the inner steps on its features (a body trained by the outer loop is fixed by then)."""
        ...

    def deployment_buffers(self, params: Params, x: Inputs) -> dict[str, Tensor]:
        """Tensors to freeze into the adapted model so that one prediction never depends on the rest of a batch
        (the normalisation statistics of the support set ``x`` at the adapted ``params``)."""
        ...

    def prepare_deployment(self) -> None:
        """Make room for the tensors of ``deployment_buffers`` before the adapted weights are loaded."""
        ...

    def export_module(self, preprocessing: dict[str, Any]) -> ExportModule:
        """The module ``export --onnx`` traces, with all of ``preprocessing`` inside it."""
        ...

    # optional
    def export_assets(self, labels: list[str]) -> dict[str, bytes]:
        """OPTIONAL. Files written beside ``model.onnx`` (file name -> content), e.g. ``tokenizer.json``, ``config.json``."""
        ...

    def adapted_assets(self) -> dict[str, bytes]:
        """OPTIONAL. Extra files of the adapted folder (relative path -> content), e.g. the LoRA as a PEFT adapter."""
        ...

    def adaptable_modules(self, preprocessing: dict[str, Any]) -> AdaptableModules:
        """OPTIONAL. For ``export --adaptable``: the modules traced into ``embed.onnx`` (the model's inputs ->
        ``features`` [B, D], plus the normalisation statistics of that batch when the model has some) and, when
        the model normalises with support statistics, into the body of ``classify.onnx`` (the model's inputs and
        those statistics -> ``features``). ``metactl.models.AdaptableModules``."""
        ...


# --- metactl.data -------------------------------------------------------------------------------


class Sampler(Protocol):
    """Episodes of one split, drawn reproducibly from a seeded generator (what a task source's ``open``
    and ``held_out`` return)."""

    def sample(self, rng: Any, tasks: int) -> EpisodeBatch:
        """``tasks`` episodes drawn with the numpy Generator ``rng``."""
        ...

    # optional
    ways: int
    """OPTIONAL. Classes per episode when it differs from the run's (``evaluate`` then starts a zero head)."""
    what: str
    """OPTIONAL. What the examples are, for progress messages (``"training texts"``)."""
    pool: Any
    """OPTIONAL. The class pool episodes are drawn from (``num_classes`` is passed to ``Algorithm.setup``)."""
    query_chunk: int
    """OPTIONAL. With ``draw``: how many query examples to predict at once."""

    def precompute(self, fn: Callable[[Any], Any], batch_size: int = 256, progress: Any = None) -> None:
        """OPTIONAL. Replace every example by ``fn(example inputs)`` once (a frozen body's features)."""
        ...

    def precompute_hidden(self, fn: Callable[[Any], Any], tag: int, batch_size: int = 128, progress: Any = None) -> None:
        """OPTIONAL. Keep every text's hidden states from ``fn`` (a body's frozen lower layers, ``--train-layers``), tagged ``tag``."""
        ...

    def precompute_centroids(self, fn: Callable[[Any], Any], batch_size: int = 256, progress: Any = None) -> None:
        """OPTIONAL. A training sampler that chooses each episode's classes (``--episode-classes``); with ``nearest`` it is
        called once before training with ``fn``, the starting body's features of its examples, for its class centroids."""
        ...

    def draw(self, seed: int, d: int) -> EpisodeBatch:
        """OPTIONAL. Draw ``d`` of a whole-label-set evaluation (every class at once), a function of ``seed`` and ``d`` only."""
        ...

    def episodes(self, start: int, count: int) -> EpisodeBatch:
        """OPTIONAL. A fixed set of episodes (``len(sampler)`` of them) that evaluation takes in order instead of sampling."""
        ...


class TaskSource(Protocol):
    """A ``--data`` kind (``--data NAME`` or ``--data NAME:ARG``). ``arg`` is what follows ``NAME:``."""

    name: ClassVar[str]
    """The entry point's name."""
    takes_argument: ClassVar[bool]
    """False: the bare name (``glyphs``); True: ``NAME:ARG``."""

    def open(self, cfg: Any, arg: str | None, progress: Callable[[int, int], None] | None) -> TaskData:
        """Training and validation samplers for meta-training with ``cfg`` (a TrainConfig)."""
        ...

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> Sampler:
        """Evaluation episodes for the run described by ``meta``, from classes it never trained on."""
        ...

    # optional
    def all_classes(self, meta: dict[str, Any], arg: str | None, shots: int, protocol: str | None, split: str = "test") -> Sampler:
        """OPTIONAL. ``evaluate --all-classes``: every held-out class in each draw (a sampler with ``draw``)."""
        ...

    def by_domain(self, meta: dict[str, Any], arg: str | None, shots: int, queries: int, protocol: str | None, split: str = "test") -> Sampler:
        """OPTIONAL. ``evaluate --by-domain``: episodes of one whole domain each."""
        ...


# --- metactl.loggers ----------------------------------------------------------------------------


class MetricLogger(Protocol):
    """Where a run's params and per-step metrics also go (``--log-to NAME``). The entry point names a
    class (or any callable) built as ``factory(run_dir, start_step=N)``."""

    def log_params(self, params: dict[str, Any]) -> None:
        """The run's resolved settings (flat: ``algo_options.x`` for nested keys), once at the start."""
        ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One meta-step's scalars (``metactl.loggers.scalars`` of the line just appended to ``metrics.jsonl``)."""
        ...

    def finish(self, run_dir: Path, status: str) -> None:
        """The run ended (``status``: complete | stopped-non-finite | interrupted | failed); ``run_dir`` holds its final files."""
        ...

    # optional
    @classmethod
    def check(cls) -> None:
        """OPTIONAL. Called on the factory before training starts: raise ``MetactlError`` when a package it needs is missing."""
        ...


# --- metactl.modalities -------------------------------------------------------------------------


class PredictInputs(Protocol):
    """A modality's inputs for ``metactl predict``, ready for the graph."""

    labels: list[str]
    """The model's labels (index = output column)."""
    records: list[dict[str, str]]
    """Per input, what names it in the result (``{"file": ...}``; ``{"text": ..., "source": ...}``)."""

    def feed(self, start: int, stop: int) -> dict[str, Array]:
        """The graph's inputs for inputs ``start..stop-1``."""
        ...


class Modality(Protocol):
    """What kind of example a model takes (``image``, ``text``), chosen from a run's ``preprocessing["kind"]``
    (absent: ``image``). Adapt, export, predict and the model card ask it instead of branching."""

    name: ClassVar[str]
    """The ``preprocessing["kind"]`` it serves (the entry point's name)."""
    unit: ClassVar[str]
    """What one example is called in reports (``images``, ``texts``)."""
    quantization: ClassVar[str]
    """``export --quantize int8``'s mode: ``static`` (QDQ, calibrated on the support set) or ``dynamic``."""
    normalization: ClassVar[str]
    """What the adapted folder records about batch statistics."""
    example_input: ClassVar[str]
    """The model card's ``metactl predict`` argument (``image.png``, a quoted text)."""
    setting: ClassVar[str]
    """The model card's words for inputs like the support set's (``the same kind of text``)."""

    def read_support(self, path: Path, preprocessing: dict[str, Any], what: str) -> LabeledExamples:
        """Read a labeled support (or query) folder or file as ``preprocessing`` says; errors name the file."""
        ...

    def support_preprocessing(self, recorded: dict[str, Any]) -> dict[str, Any]:
        """The preprocessing ``adapt`` reads the user's support set with, from the run's recorded one."""
        ...

    def served_preprocessing(self, preprocessing: dict[str, Any]) -> dict[str, Any]:
        """The preprocessing an export records (paths replaced by the files beside ``model.onnx``)."""
        ...

    def describe_input(self, preprocessing: dict[str, Any]) -> str:
        """One line on the graph's input for ``model.onnx``'s metadata."""
        ...

    def io_contract(self, module: ExportModule, preprocessing: dict[str, Any], labels: list[str]) -> dict[str, Any]:
        """The export's ``metactl.json`` entries that describe inputs, outputs and the files a client needs."""
        ...

    def export_assets(self, model: Model, labels: list[str], preprocessing: dict[str, Any]) -> dict[str, bytes]:
        """Files written beside ``model.onnx`` (file name -> content)."""
        ...

    def fallback_inputs(self, module: ExportModule, preprocessing: dict[str, Any]) -> tuple[dict[str, Array], str]:
        """Graph inputs to check the export on when the support set moved since adapt, and what they are."""
        ...

    def batch_independence(self, run: Callable[[dict[str, Array]], Array], inputs: dict[str, Array], batched: Array) -> float | None:
        """The largest change of a probability with the batch's other inputs or its padding (``run``: the graph),
        or None where the export check already covers it."""
        ...

    def predict_inputs(self, model: Path, session: Any, items: Sequence[str]) -> PredictInputs:
        """``metactl predict``'s arguments (files, folders, texts) as inputs of the model file ``model`` (torch-free)."""
        ...


# --- the declarations, and the one way to look an optional hook up ----------------------------


@dataclass(frozen=True)
class ExtensionPoint:
    group: str  # the entry-point group
    what: str  # what a plugin of it is
    protocol: type
    selected_by: str  # how a user picks one


POINTS: tuple[ExtensionPoint, ...] = (
    ExtensionPoint("metactl.algorithms", "a meta-learning algorithm", Algorithm, "`--algo NAME`"),
    ExtensionPoint("metactl.models", "a model", Model, 'a run\'s model spec, `"kind": NAME`'),
    ExtensionPoint("metactl.data", "a task source", TaskSource, "`--data NAME` or `--data NAME:ARG`"),
    ExtensionPoint("metactl.loggers", "a metrics logger", MetricLogger, "`--log-to NAME`"),
    ExtensionPoint("metactl.modalities", "a kind of input", Modality, 'a run\'s `preprocessing["kind"]`'),
)
HELPERS: tuple[type, ...] = (ExportModule, Sampler, PredictInputs)  # protocols the points' members return

OPTIONAL: dict[type, tuple[str, ...]] = {
    Algorithm: ("select_on_validation", "adaptable_head"),
    ExportModule: ("dynamic_axes",),
    Model: ("export_assets", "adapted_assets", "adaptable_modules"),
    Sampler: ("ways", "what", "pool", "query_chunk", "precompute", "precompute_hidden", "precompute_centroids", "draw", "episodes"),
    TaskSource: ("all_classes", "by_domain"),
    MetricLogger: ("check",),
}


def members(protocol: type) -> tuple[str, ...]:
    """The protocol's members in declaration order (attributes and methods), optional ones included."""
    names = [*getattr(protocol, "__annotations__", {})]
    names += [n for n, v in vars(protocol).items() if callable(v) or isinstance(v, classmethod)]
    return tuple(n for n in dict.fromkeys(names) if not n.startswith("_") or n == "__call__")


def required(protocol: type) -> tuple[str, ...]:
    """The members a plugin of ``protocol`` must have."""
    return tuple(n for n in members(protocol) if n not in OPTIONAL.get(protocol, ()))


def missing(obj: Any, protocol: type, names: Sequence[str] | None = None) -> list[str]:
    """The required members of ``protocol`` (or just ``names`` of them) that ``obj`` lacks."""
    wanted = required(protocol) if names is None else names
    absent = object()
    return [n for n in wanted if getattr(obj, n, absent) is absent]


def hook(obj: Any, name: str) -> Any:
    """``obj``'s optional hook ``name`` (a bound method or attribute value), or None when ``obj`` has none.
    ``name`` must be declared optional in this module: asking for anything else is a programming error."""
    declared = {n for names in OPTIONAL.values() for n in names}
    if name not in declared:
        raise ValueError(f"{name!r} is not an optional hook declared in metactl.contract (declared: {', '.join(sorted(declared))}).")
    return getattr(obj, name, None)


# --- docs/plugins.md's reference section ---------------------------------------------------------


def _signature(node: ast.FunctionDef) -> str:
    args = ast.unparse(node.args).replace("self, ", "").replace("cls, ", "").removeprefix("self").removeprefix("cls")
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{node.name}({args}){returns}"


def _documented(cls: ast.ClassDef) -> dict[str, tuple[str, str]]:
    """member name -> (how it is written, its doc's first paragraph), from this module's source."""
    out: dict[str, tuple[str, str]] = {}
    body = cls.body
    for i, stmt in enumerate(body):
        nxt = body[i + 1] if i + 1 < len(body) else None
        after = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else ""
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            out[stmt.target.id] = (f"{stmt.target.id}: {ast.unparse(stmt.annotation)}", str(after))
        elif isinstance(stmt, ast.FunctionDef):
            out[stmt.name] = (_signature(stmt), ast.get_docstring(stmt) or "")
    return out


def _member_line(written: str, doc: str) -> str:
    text = " ".join(doc.split("\n\n")[0].split()).removeprefix("OPTIONAL. ").replace("``", "`")
    return f"- `{written}`" + (f": {text}" if text else "")


def reference_markdown() -> str:
    """The reference section of docs/plugins.md: every extension point, its required members and its optional hooks."""
    tree = ast.parse(Path(inspect.getfile(reference_markdown)).read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    lines = ["| group | what | chosen by | contract |", "|---|---|---|---|"]
    lines += [f"| `{p.group}` | {p.what} | {p.selected_by} | `metactl.contract.{p.protocol.__name__}` |" for p in POINTS]
    for protocol in (*(p.protocol for p in POINTS), *HELPERS):
        doc = _documented(classes[protocol.__name__])
        lines += ["", f"### `{protocol.__name__}`", "", " ".join((inspect.getdoc(protocol) or "").split()).replace("``", "`"), "", "Required:", ""]
        lines += [_member_line(*doc[n]) for n in required(protocol)]
        optional = OPTIONAL.get(protocol, ())
        if optional:
            lines += ["", "Optional (looked up with `metactl.contract.hook(obj, name)`, never `hasattr`):", ""]
            lines += [_member_line(*doc[n]) for n in optional]
    return "\n".join(lines) + "\n"


DOC_BEGIN = "<!-- generated by metactl.contract.reference_markdown(): do not edit by hand -->"
DOC_END = "<!-- end of generated section -->"


def update_doc(path: Path) -> bool:
    """Rewrite the generated section of ``path`` (between DOC_BEGIN and DOC_END); True when it changed."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    new = f"{head}{DOC_BEGIN}\n{reference_markdown()}{DOC_END}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


__all__ = [
    "OPTIONAL", "POINTS", "Algorithm", "ExportModule", "ExtensionPoint", "MetricLogger", "Modality", "Model",
    "PredictInputs", "Sampler", "TaskSource", "hook", "members", "missing", "reference_markdown", "required", "update_doc",
]  # fmt: skip
