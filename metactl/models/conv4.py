"""The Conv-4 backbone of Finn et al. 2017 (MAML), after Vinyals et al. 2016.

Four blocks of [conv 3x3 (``width`` filters), BatchNorm, ReLU, max-pool 2] and a linear head
(computed as pool-then-ReLU, which is the same function).

Deliberate differences from the paper's code, none changing the function class:
- the convolutions have no bias: BatchNorm subtracts the per-channel mean right after, so a conv
  bias receives exactly zero gradient and its inner learning rate could never move;
- BatchNorm keeps no running statistics during meta-training; it normalises with per-task
  statistics. ``forward(x, ref=n)`` takes them from the first ``n`` rows only (the support set),
  so query predictions never depend on the other queries — the same computation the deployed
  model performs with statistics frozen at adapt time (``ref=None`` uses the whole batch, the
  transductive behaviour of the original MAML code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

from metactl.api import Params
from metactl.backbones import weights_sha256
from metactl.errors import MetactlError
from metactl.models import AdaptableModules, ModelBase

_LOW = (torch.bfloat16, torch.float16)


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics and affine parameters stay float32 under bf16/fp16 autocast (mixed-dtype batch_norm)."""
    return torch.float32 if x.dtype in _LOW else x.dtype


def _unit_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, dtype = x.shape[1], _stat_dtype(x)
    return torch.zeros(c, dtype=dtype, device=x.device), torch.ones(c, dtype=dtype, device=x.device)


# the folded affine map runs batch_norm with unit statistics and no epsilon of its own; some torch
# versions refuse eps = 0, and 1 + 1e-30 is exactly 1 in float32 (and rounds to it from float64)
_NO_EPS = 1e-30

CHANNELS_LAST = True  # switch for the A/B benchmark (examples/benchmarks/speed_options.py)


def _fast_layout(x: torch.Tensor) -> torch.memory_format | None:
    """channels-last activations for float32 training/adaptation on CPU, where oneDNN's NHWC
    convolution and max-pool kernels are faster (examples/benchmarks/speed_options.py measures it);
    NCHW elsewhere (bf16 autocast, where it measured no faster; inference; export; CUDA)."""
    if (
        CHANNELS_LAST
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
    ):
        return torch.channels_last
    return None


class TaskNorm2d(nn.Module):
    """BatchNorm over a reference slice of the batch (affine, no running statistics).

    When ``mean``/``var`` buffers are set (deployment), they are used instead, which makes the
    layer a fixed per-channel affine map.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.mean: torch.Tensor | None
        self.var: torch.Tensor | None
        self.register_buffer("mean", None)
        self.register_buffer("var", None)

    def forward(self, x: torch.Tensor, ref: int | None = None, tasks: int = 1) -> torch.Tensor:
        if self.mean is not None and self.var is not None:
            return F.batch_norm(x, self.mean, self.var, self.weight, self.bias, False, 0.0, self.eps)
        if tasks > 1:
            return self._per_task(x, ref, tasks)
        if ref is None:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        # Statistics of the reference rows only, folded into a per-channel affine map x * scale + shift.
        # The map runs through the native (fused) eval-mode batch_norm kernel with unit statistics,
        # whose backward and double backward give the gradients w.r.t. x, scale and shift.
        var, mean = torch.var_mean(x[:ref].to(_stat_dtype(x)), dim=(0, 2, 3), correction=0)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        zeros, ones = _unit_stats(x)
        return F.batch_norm(x, zeros, ones, scale, shift, False, 0.0, _NO_EPS)

    def _per_task(self, x: torch.Tensor, ref: int | None, tasks: int) -> torch.Tensor:
        """x holds ``tasks`` equal task-major blocks; each is normalised with its own first ``ref`` rows
        (all its rows when ref is None): the per-task computation, batched."""
        xv = x.view(tasks, -1, *x.shape[1:])
        r = xv if ref is None else xv[:, :ref]
        var, mean = torch.var_mean(r.to(_stat_dtype(x)), dim=(1, 3, 4), correction=0)  # (tasks, C)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return torch.addcmul(shift[:, None, :, None, None], xv, scale[:, None, :, None, None]).view_as(x)


class Pixels(nn.Module):
    """The exported graph: raw pixels 0-255 (float32, NCHW (batch, channels, size, size): grayscale
    (1) or RGB (3), resized) -> class probabilities; ink inversion (grayscale only) and scaling inside."""

    input_names = ["pixels"]  # noqa: RUF012
    output_names = ["probabilities"]  # noqa: RUF012

    def __init__(self, model: nn.Module, invert: bool, size: int, channels: int = 1) -> None:
        super().__init__()
        self.model = model
        self.invert = invert
        self.size = size
        self.channels = channels

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() * (1.0 / 255.0)
        if self.invert:
            x = 1.0 - x
        return torch.softmax(self.model(x), dim=-1)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(2, self.channels, self.size, self.size),)

    def client_inputs(self, examples: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed images (uint8, (n, size, size) grayscale with ink = 255, or (n, 3, size, size) RGB)
        -> pixels as the client's files hold them (not inverted), (n, channels, size, size)."""
        raw = (255 - examples if self.invert else examples).astype(np.float32)
        return {"pixels": raw[:, None] if raw.ndim == 3 else raw}


class _AdaptablePixels(nn.Module):
    """The Conv-4 body of ``export --adaptable`` with ``Pixels``' preprocessing inside (raw 0-255 in)."""

    def __init__(self, model: Conv4, invert: bool, size: int, channels: int) -> None:
        super().__init__()
        self.model, self.invert, self.size, self.channels = model, invert, size, channels
        self.state = tuple(f"{s}{i}" for i in range(len(model.norms)) for s in ("mean", "var"))

    def scaled(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() * (1.0 / 255.0)
        return 1.0 - x if self.invert else x

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.rand(4, self.channels, self.size, self.size) * 255,)

    def client_inputs(self, examples: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed images (ink = 255) -> ``pixels`` as the client's files hold them (``Pixels.client_inputs``)."""
        return Pixels.client_inputs(self, examples)  # type: ignore[arg-type]


class PixelsEmbed(_AdaptablePixels):
    """``embed.onnx``: pixels -> features, every layer normalised with the statistics of this batch (the support
    set, given whole), and those statistics (what ``classify.onnx`` then normalises with)."""

    input_names = ["pixels"]  # noqa: RUF012

    @property
    def output_names(self) -> list[str]:
        return ["features", *self.state]

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, stats = self.scaled(pixels), []
        for conv, norm in zip(self.model.convs, self.model.norms, strict=True):
            y = conv(x)
            var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
            stats += [mean, var]
            scale = (torch.rsqrt(var + norm.eps) * norm.weight)[None, :, None, None]
            y = (y - mean[None, :, None, None]) * scale + norm.bias[None, :, None, None]
            x = F.relu(F.max_pool2d(y, 2))
        return (x.flatten(1), *stats)


class PixelsBody(_AdaptablePixels):
    """The body of ``classify.onnx``: pixels and the support's statistics (``embed.onnx``'s) -> features."""

    output_names = ["features"]  # noqa: RUF012

    @property
    def input_names(self) -> list[str]:
        return ["pixels", *self.state]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"pixels": {0: "batch"}, **{name: {} for name in self.state}}  # the statistics are per channel, not per example

    def forward(  # one named argument per statistic: torch.export names the graph's inputs after them
        self, pixels: torch.Tensor, mean0: torch.Tensor, var0: torch.Tensor, mean1: torch.Tensor, var1: torch.Tensor,
        mean2: torch.Tensor, var2: torch.Tensor, mean3: torch.Tensor, var3: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        stats = (mean0, var0, mean1, var1, mean2, var2, mean3, var3)
        x = self.scaled(pixels)
        for i, (conv, norm) in enumerate(zip(self.model.convs, self.model.norms, strict=True)):
            y = F.batch_norm(conv(x), stats[2 * i], stats[2 * i + 1], norm.weight, norm.bias, False, 0.0, norm.eps)
            x = F.relu(F.max_pool2d(y, 2))
        return x.flatten(1)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        width = [n.weight.shape[0] for n in self.model.norms]
        stats = [t for w in width for t in (torch.zeros(w), torch.ones(w))]
        return (*super().example_inputs(), *stats)


class Conv4(ModelBase):
    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28, width: int = 64) -> None:
        super().__init__()
        size = image_size
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = in_channels
        for _ in range(4):
            self.convs.append(nn.Conv2d(channels, width, 3, padding=1, bias=False))
            self.norms.append(TaskNorm2d(width))
            channels = width
            size //= 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for four 2x poolings")
        self.head = nn.Linear(width * size * size, num_classes)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Conv4:
        """The spec may name a pretrained body: ``init_from = {"run": DIR, "theta_sha256": ...}`` (a metactl
        run whose θ, all but the head, initialises the body) with ``adapt`` = ``head`` (body frozen unless
        ``train_body``) or ``all``."""
        model = cls(
            num_classes=int(spec["num_classes"]),
            in_channels=int(spec.get("in_channels", 1)),
            image_size=int(spec.get("image_size", 28)),
            width=int(spec.get("width", 64)),
        )
        model.spec = dict(spec)
        if spec.get("init_from"):
            model._load_body(spec["init_from"])
        return model

    spec: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance by from_spec

    def _load_body(self, source: dict[str, Any]) -> None:
        path = Path(source["run"]) / "theta.safetensors"
        if not path.is_file():
            raise MetactlError(f"The pretrained body {path.parent} is missing (this run was trained on top of it).", "Put that run back at its path.")
        if source.get("theta_sha256") and weights_sha256(path) != source["theta_sha256"]:  # hashed once per process (resolve_backbone's)
            raise MetactlError(f"{path} changed since this run was trained on top of it.", "Use the exact run the body came from.")
        theta = load_safetensors(path.read_bytes())  # safetensors: never a pickle
        body = {k: v for k, v in theta.items() if not k.startswith(("head.", "inner_lr."))}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("head.") and k in dict(self.named_parameters())}
        if set(body) != set(own) or any(body[k].shape != own[k].shape for k in own):
            raise MetactlError(
                f"--backbone {path.parent}: its body does not fit this model (other width, channels or image size).",
                "Use a run trained on data of the same shape.",
            )
        with torch.no_grad():
            for k, v in self.named_parameters():
                if k in body:
                    v.copy_(body[k])

    def _body_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if not n.startswith("head.")]

    def frozen_parameter_names(self) -> list[str]:
        if self.spec.get("adapt") == "head" and not self.spec.get("train_body"):
            return self._body_names()
        return []

    def outer_only_parameter_names(self) -> list[str]:
        return self._body_names() if self.spec.get("adapt") == "head" and self.spec.get("train_body") else []

    def deployment_buffers(self, params: Params, x: Any) -> dict[str, torch.Tensor]:
        """Per-channel mean and (biased) variance each normalisation layer sees for ``x`` at ``params``."""
        stats: dict[str, torch.Tensor] = {}
        hooks = []
        for name, module in self.named_modules():
            if isinstance(module, TaskNorm2d):

                def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                    h = args[0].detach()
                    stats[f"{name}.mean"] = h.mean(dim=(0, 2, 3))
                    stats[f"{name}.var"] = h.var(dim=(0, 2, 3), unbiased=False)

                hooks.append(module.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                torch.func.functional_call(self, params, (x,))
        finally:
            for h in hooks:
                h.remove()
        return stats

    def prepare_deployment(self) -> None:
        for module in self.modules():
            if isinstance(module, TaskNorm2d):
                module.mean = torch.zeros_like(module.weight.detach())
                module.var = torch.ones_like(module.weight.detach())

    def export_module(self, preprocessing: dict[str, Any]) -> Pixels:
        return Pixels(self, bool(preprocessing.get("invert", False)), int(preprocessing["size"]), self.convs[0].in_channels)

    def adaptable_modules(self, preprocessing: dict[str, Any]) -> AdaptableModules:
        args = (bool(preprocessing.get("invert", False)), int(preprocessing["size"]), self.convs[0].in_channels)
        embed = PixelsEmbed(self, *args).eval()
        return AdaptableModules(embed, PixelsBody(self, *args).eval(), embed.state)

    def features(self, x: torch.Tensor, ref: int | None = None, tasks: int = 1) -> torch.Tensor:
        layout = _fast_layout(x)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            y = conv(x)
            if i == 0 and layout is not None:
                y = y.contiguous(memory_format=layout)  # the later layers follow their input's layout
            # pool, then ReLU: the same values and gradients as ReLU-then-pool (ReLU is monotone and
            # max picks the same element), with the ReLU on a 4x smaller tensor
            x = F.relu(F.max_pool2d(norm(y, ref, tasks), 2))
        return x.flatten(1)

    def forward(self, x: torch.Tensor, ref: int | None = None, tasks: int = 1, return_features: bool = False) -> torch.Tensor:
        """``tasks`` > 1: x is that many task-major blocks, each normalised on its own (ANIL's batched body).
        ``return_features``: the body's output, without the head."""
        f = self.features(x, ref, tasks)
        return f if return_features else self.head(f)
