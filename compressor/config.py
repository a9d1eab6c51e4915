"""The option definitions (name, type, default, help, choices, resume policy): the single source of truth.

The CLI generates its click options from these dataclasses (``compressor.cli.options``), recipes and
``config.yaml`` are their fields, ``--resume`` checks the fields marked ``resume="fixed"``, and the library
API takes the same names. Method options are dataclasses beside the methods (``compressor.methods.options``);
the prune job's config joins both (``compressor.jobs.config.PruneConfig``). Torch-free: it sits at the bottom
of the layers, so ``compress --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from compressor.errors import BadInput

#: ``--trust-code`` of every command that loads a model.
TRUST_HELP = (
    "Allow a model built from a user file (path.py:factory) or a pickled whole module (model.pt): loading either "
    "runs arbitrary Python code, so it is off unless you trust the file. Our own files (pruned.pt, weights) never "
    "need it."
)
REQUIRED: Any = dataclasses.MISSING  # opt(REQUIRED, ...): an option without a default
FLAGS = ("plain", "switch")  # bool options: --x alone, or --x/--no-x (the default for bools)
RESUME = ("fixed", "free")  # fixed: changes what a checkpoint means, so --resume refuses a new value
WEIGHTS_HEADS = ("strict", "reinit")  # --weights-head: refuse another classifier head, or re-initialize it


def pretrained_spec(model: str) -> tuple[str, str] | None:
    """``torchvision:NAME:WEIGHTS`` -> ``(NAME, WEIGHTS)``; ``None`` for any other model spec."""
    m = re.fullmatch(r"\s*torchvision:(\w+):([\w-]+)\s*", str(model))
    return (m.group(1), m.group(2)) if m else None


def opt(default: Any, help: str = "", *, choices: tuple[str, ...] | None = None, flag: str | None = None,
        metavar: str | None = None, resume: str = "fixed", show_default: bool = True,
        off: str | None = None, cli: str | None = None) -> Any:  # fmt: skip
    """A dataclass field that defines one option; ``default`` ``list``/``dict`` gives an empty one per instance.

    ``flag``: a bool's CLI form (``plain``: ``--x``; default ``--x/--no-x``, or ``--x/OFF`` with ``off``);
    ``resume``: ``free`` where ``--resume`` may change the value; ``cli``: the option's name on the command line
    where it is not the field's (``--csv`` for ``csv_out``)."""
    assert flag in (None, *FLAGS) and resume in RESUME, (flag, resume)
    assert not (flag == "plain" and default is True), "a plain flag is off unless given: default False"
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "resume": resume,
            "show_default": show_default, "off": off, "cli": cli}  # fmt: skip
    if default is REQUIRED:
        return field(metadata=meta)
    if default in (list, dict):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def optional(f: dataclasses.Field) -> bool:
    """Whether ``None`` is a value of the field (its type says ``| None``)."""
    return str(f.type).endswith("| None")


def option_kind(f: dataclasses.Field) -> str:
    """``int``, ``float``, ``str``, ``bool``, ``list`` or ``dict``: a field's type without ``| None``."""
    kind = str(f.type).replace(" | None", "")
    return kind.split("[")[0]


def choice_problem(f: dataclasses.Field, value: Any) -> str | None:
    """``must be one of ..., got X`` when ``value`` is outside the field's choices (None: it is fine)."""
    choices = f.metadata.get("choices")
    if choices and value is not None and value not in choices:
        return f"must be one of {', '.join(choices)}, got {value!r}"
    return None


def defaults(cls: type) -> dict[str, Any]:
    """Every option of ``cls`` with a default, and that default (``list``/``dict`` options: empty)."""
    out = {}
    for f in fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1", "on"):
        return True
    if str(value).lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    return int(float(value))


ROUND_AUTO = "auto"  # --round-to auto


def int_or_auto(value: Any) -> int | str:
    """An ``int | str`` option (``--round-to``): an integer, or the word ``auto``."""
    if str(value).strip().lower() == ROUND_AUTO:
        return ROUND_AUTO
    return _to_int(value)


_COERCE: dict[str, Any] = {"int": _to_int, "float": float, "str": str, "bool": _to_bool, "int | str": int_or_auto}


def coerce_fields(obj: Any, prefix: str = "--") -> None:
    """Recipes give raw YAML values: coerce each field to its type and check its choices, or BadInput."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = option_kind(f)
        name = f"{prefix}{f.name.replace('_', '-')}"
        if value is None and not optional(f) and f.default is not None:
            raise BadInput(f"{name}: expected {kind}, got null")
        if value is None or kind not in _COERCE:
            continue
        try:
            value = _COERCE[kind](value)
        except (TypeError, ValueError):
            raise BadInput(f"{name}: expected {kind}, got {value!r}") from None
        if problem := choice_problem(f, value):
            raise BadInput(f"{name} {problem}")
        setattr(obj, f.name, value)


def parse_patterns(value: Any) -> list[str]:
    """``--ignore`` values: repeated options, comma lists or a YAML list -> a flat list of patterns."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def parse_ratios(value: Any) -> dict[str, float]:
    """``--group-max-ratio PATTERN=RATIO`` (repeated or comma list) or a YAML mapping -> {pattern: ratio}."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        pairs = []
        for entry in parse_patterns(value):
            pat, sep, ratio = entry.rpartition("=")
            if not sep or not pat:
                raise BadInput(f"--group-max-ratio expects PATTERN=RATIO, got {entry!r}")
            pairs.append((pat.strip(), ratio.strip()))
    out: dict[str, float] = {}
    for pat, ratio in pairs:
        try:
            out[pat] = float(ratio)
        except (TypeError, ValueError):
            raise BadInput(f"--group-max-ratio {pat}={ratio!r}: the ratio must be a number in [0, 1)") from None
    return out


# --------------------------------------------------------------------------------------------- latency targets
#: ONNX Runtime providers by our name (benchmarks.backends maps them to ORT's; a test holds the two agree).
PROVIDERS = ("cpu", "cuda", "tensorrt")
_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
_LATENCY = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(us|µs|ms|s)?\s*", re.IGNORECASE)


def parse_latency(value: Any) -> float:
    """``4ms``, ``4`` (ms), ``0.004s``, ``500us`` -> milliseconds; BadInput for anything else."""
    m = _LATENCY.fullmatch(str(value)) if value is not None and not isinstance(value, bool) else None
    ms = float(m.group(1)) * _UNITS[(m.group(2) or "ms").lower()] if m else math.nan
    if not (math.isfinite(ms) and ms > 0):
        raise BadInput(f"--target-latency must be a positive time like 4ms, 0.004s or 500us, got {value!r}")
    return ms


@dataclass
class LatencySpec:
    """What to measure: the target and how ``compress bench`` times a candidate."""

    target_ms: float
    provider: str = "cpu"
    batch: int = 1
    threads: int | None = None
    tolerance: float = 0.1
    duration: float = 1.0  # seconds of timing per candidate (at least MIN_ITERS runs)

    @classmethod
    def of(cls, cfg: Any) -> LatencySpec:
        """The spec of a prune config's ``latency_*`` options, validated (BadInput)."""
        spec = cls(parse_latency(cfg.target_latency), str(cfg.latency_provider).strip().lower(),
                   cfg.latency_batch, cfg.latency_threads, cfg.latency_tolerance, cfg.latency_duration)  # fmt: skip
        if spec.provider not in PROVIDERS:
            raise BadInput(f"--latency-provider {cfg.latency_provider!r}: choose from {', '.join(PROVIDERS)}")
        if spec.batch < 1:
            raise BadInput(f"--latency-batch must be >= 1, got {spec.batch}")
        if spec.threads is not None and spec.threads < 1:
            raise BadInput(f"--latency-threads must be >= 1, got {spec.threads}")
        if not 0 < spec.tolerance < 1:
            raise BadInput(f"--latency-tolerance must be strictly between 0 and 1, got {spec.tolerance}")
        if not 0 < spec.duration <= 60:
            raise BadInput(f"--latency-duration must be in (0, 60] seconds, got {spec.duration}")
        return spec

    def met(self, ms: float) -> bool:
        """At or below the target, or within the tolerance of it."""
        return ms <= self.target_ms * (1 + self.tolerance)


ALLOCATIONS = ("uniform", "latency")
BASELINES = ("l1", "l2", "bn-scale", "taylor", "random")


#: The shared method options: the keyword a method's constructor takes -> the prune option that sets it.
SHARED_METHOD_OPTIONS = {"steps": "steps", "seed": "seed", "prune_every": "prune_every", "prune_at": "prune_at",
                         "allocation_from": "allocation_from", "from_scratch": "from_scratch",
                         "schedule": "prune_schedule", "max_prune_fraction": "max_prune_fraction"}  # fmt: skip


def check_allocation(allocation: str, method: str) -> None:
    """BadInput for an unknown allocation, or ``latency`` with a method that sets its own per-group ratios."""
    if allocation not in ALLOCATIONS:
        raise BadInput(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if allocation == "latency" and method not in BASELINES:
        raise BadInput(f"--allocation latency applies to {', '.join(BASELINES)}; {method} sets its own group ratios")


# --------------------------------------------------------------------------------------------- accuracy gates
def min_accuracy_opt(measured: str) -> Any:
    """``--min-accuracy``: one definition for every command that gates on accuracy."""
    return opt(None, f"Gate: exit 1 (after every output is written) when the {measured} top-1 test accuracy is "
               "below this fraction, e.g. 0.9.", metavar="FRACTION", resume="free")  # fmt: skip


def max_drop_opt(measured: str) -> Any:
    """``--max-accuracy-drop``: one definition for every command that gates on the drop from the dense model."""
    return opt(None, f"Gate: exit 1 (after every output is written) when the {measured} top-1 test accuracy is "
               "more than PT percentage points below the dense model's (report.json), e.g. 1.0.", metavar="PT",
               resume="free")  # fmt: skip


def check_gates(obj: Any) -> None:
    """BadInput for an out-of-range ``min_accuracy`` (a fraction) or ``max_accuracy_drop`` (points)."""
    low, drop = getattr(obj, "min_accuracy", None), getattr(obj, "max_accuracy_drop", None)
    if low is not None and not 0 <= low <= 1:
        hint = f": use {low / 100:g} for {low:g}%" if 1 < low <= 100 else ""
        raise BadInput(f"--min-accuracy must be a fraction in [0, 1], got {low:g}{hint}")
    if drop is not None and not (math.isfinite(drop) and 0 <= drop <= 100):
        raise BadInput(f"--max-accuracy-drop must be percentage points in [0, 100], got {drop}")


# --------------------------------------------------------------------------------------------- compress prune
@dataclass
class PruneOptions:
    """The options of ``compress prune`` every method shares; the method options join them in
    ``compressor.jobs.config.PruneConfig``."""

    model: str = opt(
        REQUIRED,
        "torchvision:NAME, torchvision:NAME:WEIGHTS (pretrained, e.g. IMAGENET1K_V1 or DEFAULT, read from the "
        "TORCH_HOME cache, never downloaded), cifar:resnet20|32|56|110, cifar:vgg16, timm:NAME, path/file.py:factory "
        "or a pickled whole module FILE.pt (both need --trust-code).",
    )
    out: str = opt(REQUIRED, "Run directory to write.", resume="free")
    data: str = opt("fashion-mnist", "fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic:CxHxW:classes.")
    method: str = opt(
        "aster",
        "aster | psap | l1 | l2 | bn-scale | taylor | random. ASTER is the default: chosen over PSAP on validation "
        "at the methods study's confirm tier (docs/methods.md); it needs BatchNorm, use psap or l1 on a model without.",
    )
    weights: str | None = opt(None, "state_dict checkpoint to start from (weights_only load).")
    weights_head: str = opt(
        WEIGHTS_HEADS[0],
        "A classifier of another class count in --weights or the pretrained weights of torchvision:NAME:WEIGHTS: "
        "refuse it (strict) or keep the model's fresh classifier (reinit, named on stderr). An RGB stem is adapted "
        "to --in-channels either way.",
        choices=WEIGHTS_HEADS,
    )
    from_scratch: bool = opt(False, "Random init, prune during the whole training (SFP style).", flag="plain")
    target_flops: float | None = opt(None, "FLOPs (MACs) drop to reach, e.g. 0.5.")
    target_params: float | None = opt(None, "Parameter drop to reach.")
    target_latency: str | None = opt(
        None,
        "ONNX Runtime p50 latency to reach, e.g. 4ms, 0.004s, 500us (a bare number: ms). Finds the FLOPs drop by "
        'timing real exported models (see docs/cli.md "Latency-targeted pruning").',
        metavar="TIME",
    )
    latency_provider: str = opt("cpu", "--target-latency: ONNX Runtime provider to time on (cpu, cuda, tensorrt).")
    latency_batch: int = opt(1, "--target-latency: batch size.")
    latency_threads: int | None = opt(None, "--target-latency: ORT intra-op threads (default: ORT's).")
    latency_tolerance: float = opt(0.1, "--target-latency: met when at most target x (1 + tolerance).")
    latency_duration: float = opt(
        1.0,
        "--target-latency: seconds of timing per candidate model (at least 20 runs).",
        resume="free",
    )
    allocation: str = opt(
        ALLOCATIONS[0],
        "Baselines: the same pruned ratio in every group, or ratios weighted by the measured ms saved per MAC removed "
        "in each group (times one-group probes on --latency-provider/--latency-batch).",
        choices=ALLOCATIONS,
    )
    allocation_power: float = opt(2.0, "--allocation latency: weights are (ms saved per MAC, relative) ** POWER.")
    epochs: int = opt(0, "Epochs of pruning/fine-tuning (0 = one-shot prune of the given weights).")
    pretrain_epochs: int = opt(0, "Train the dense model from scratch for N epochs first.")
    steps: int = opt(1, "Pruning steps (baselines, iterative).")
    prune_every: int = opt(1, "PSAP: a step every N epochs.")
    prune_schedule: str | None = opt(
        None,
        "PSAP step targets: cubic ramp over the first half (default from weights) or the full target at every step "
        "(default with --from-scratch).",
        choices=("cubic", "constant"),
    )
    prune_at: int = opt(0, "One-shot baselines: prune after this many epochs instead of before the first.")
    allocation_from: str | None = opt(
        None,
        "One-shot baselines: keep the per-group channel counts of another finished run (its report.json): the "
        "baseline then chooses only which channels.",
        metavar="RUN",
    )
    finetune_epochs: int = opt(0, "Train the physically pruned model N more epochs.")
    finetune_lr: float | None = opt(None, "Fine-tuning LR (default: --lr).")
    materialize_early: bool = opt(
        False,
        "Once the method's mask is final (one-shot baselines: at once; PSAP v2/ASTER: at the freeze), train the "
        "remaining --epochs on the physically pruned model under the same LR schedule (faster; the optimizer momentum "
        "restarts there).",
    )
    round_to: int | str = opt(
        8,
        "Kept channel counts are multiples of this (faster kernels; 1: no rounding). 'auto': what the target runtime "
        "runs fastest (16 on an AVX2 or AVX-512 CPU, else 8; the --latency-provider with --target-latency, else "
        "this CPU).",
        metavar="N|auto",
    )
    max_layer_ratio: float = opt(0.8, "Never remove more than this fraction of any group (strictly between 0 and 1).")
    lr: float = opt(0.05, "Fine-tuning learning rate.")
    pretrain_lr: float = opt(0.1, "Learning rate of --pretrain-epochs.")
    momentum: float = opt(0.9, "SGD momentum.")
    weight_decay: float = opt(0.0005, "SGD weight decay.")
    schedule: str = opt("cosine", "", choices=("cosine", "step"))
    distill: bool = opt(
        False,
        "Pruning and fine-tuning learn from the dense model too (knowledge distillation): the teacher is the dense "
        "model given by --weights or trained by --pretrain-epochs.",
    )
    distill_temperature: float = opt(4.0, "--distill: softmax temperature T of the teacher and student logits.")
    distill_alpha: float = opt(0.5, "--distill: loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student).")
    batch_size: int = opt(128, "Training batch size (the global batch under --nproc).")
    data_dir: str | None = opt(None, "Where the dataset lives (default: its standard place).", resume="free")
    download: bool = opt(False, "Download the dataset if missing (needs a network).", flag="plain", resume="free")
    train_subset: int | None = opt(None, "Use N training images (quick runs).")
    val_subset: int | None = opt(None, "Use N validation images (quick runs).")
    test_subset: int | None = opt(None, "Use N test images (quick runs).")
    image_size: int | None = opt(None, "Resize inputs to SIZE x SIZE.")
    num_classes: int | None = opt(None, "Default: the dataset's.")
    in_channels: int | None = opt(None, "Default: the dataset's.")
    trust_code: bool = opt(False, TRUST_HELP, flag="plain", resume="free")
    seed: int = opt(0, "Seed of the data order, init and every random choice (deterministic on the CPU).")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N.", resume="free")
    resume: bool = opt(
        False,
        "Continue a killed or interrupted run from its newest sound checkpoint (the previous one if the newest is "
        "corrupt); a finished run is left as it is.",
        flag="plain",
        resume="free",
    )
    checkpoint_every: int = opt(
        0,
        "Also checkpoint every N training steps (0: at epoch ends only; SIGINT/SIGTERM always save one).",
        resume="free",
    )
    overwrite: bool = opt(False, "Replace a non-empty run directory.", flag="plain", resume="free")
    quiet: bool = opt(False, "No progress output.", flag="plain", resume="free")
    min_accuracy: float | None = min_accuracy_opt("pruned model's (PyTorch)")
    max_accuracy_drop: float | None = max_drop_opt("pruned model's (PyTorch)")
    max_prune_fraction: float = opt(0.8, "ASTER: tau never prunes more than this fraction of all scored channels.")
    bn_init: float | None = opt(
        None, "Initialise every BN gamma to this value (from-scratch runs; the ASTER authors use 0.5)."
    )
    ignore: list[str] = opt(
        list,
        "Never prune these layers (and what is coupled to them): a name, a glob like 'layer4.*', or type:ClassName. "
        "Repeatable or comma list. The classifier is always left alone.",
    )
    ignore_stem: bool = opt(False, "Also leave the first conv (the stem) alone.", flag="plain")
    group_max_ratio: dict[str, float] = opt(
        dict,
        "Cap the pruned fraction of groups whose layers match PATTERN (0 = leave alone). Repeatable; in a recipe, a "
        "mapping.",
        metavar="PATTERN=RATIO",
    )

    def __post_init__(self) -> None:
        self.ignore = parse_patterns(self.ignore)
        self.group_max_ratio = parse_ratios(self.group_max_ratio)
        coerce_fields(self)

    def target(self) -> tuple[str, float]:
        """(metric, value): a FLOPs/params drop fraction, or ("latency", milliseconds) for --target-latency."""
        given = [(m, v) for m, v in (("flops", self.target_flops), ("params", self.target_params),
                                     ("latency", self.target_latency)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise BadInput("give exactly one of --target-flops, --target-params and --target-latency")
        metric, value = given[0]
        if metric == "latency":
            return metric, LatencySpec.of(self).target_ms
        if not 0.0 < float(value) < 1.0:
            raise BadInput(f"--target-{metric} must be a drop fraction strictly between 0 and 1, got {value}")
        return metric, float(value)

    def check(self) -> None:
        """Options that contradict each other are BadInput before any work."""
        check_allocation(self.allocation, self.method)
        check_gates(self)
        pre = pretrained_spec(self.model)
        trained = "--weights" if self.weights else f"the :{pre[1]} of --model {self.model}" if pre else ""
        if self.weights and pre:
            raise BadInput(f"--model {self.model} loads pretrained weights: drop --weights (or use "
                           f"--model torchvision:{pre[0]} with --weights)")  # fmt: skip
        if self.from_scratch and trained:
            raise BadInput(f"--from-scratch starts from random weights: drop {trained}")
        if self.from_scratch and self.pretrain_epochs:
            raise BadInput("--from-scratch prunes during training from random init: drop --pretrain-epochs")
        if self.from_scratch and self.epochs < 1:
            raise BadInput("--from-scratch needs --epochs >= 1")
        for name in ("epochs", "pretrain_epochs", "finetune_epochs", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 0")
        if self.prune_every < 1 or self.steps < 1:
            raise BadInput("--prune-every and --steps must be >= 1")
        if (self.prune_at or self.allocation_from) and self.method not in BASELINES:
            raise BadInput(f"--prune-at and --allocation-from are for the one-shot baselines, not {self.method}")
        if not 0 <= self.prune_at < max(self.epochs, 1):
            raise BadInput(f"--prune-at must be in [0, --epochs), got {self.prune_at} with --epochs {self.epochs}")
        if self.bn_init is not None and trained:
            raise BadInput(f"--bn-init initialises BN gamma of a randomly initialised model: drop {trained}")
        for name in ("lr", "pretrain_lr", "finetune_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise BadInput(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise BadInput(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise BadInput(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.round_to != ROUND_AUTO and self.round_to < 1:
            raise BadInput(f"--round-to must be >= 1 (1: no rounding) or auto, got {self.round_to}")
        if not 0 < self.max_layer_ratio < 1:
            raise BadInput(f"--max-layer-ratio must be strictly between 0 and 1, got {self.max_layer_ratio}")
        if not 0 <= self.seed < 2**32:
            raise BadInput(f"--seed must be in 0..{2**32 - 1}, got {self.seed}")
        if self.distill and not (trained or self.pretrain_epochs > 0):
            raise BadInput("--distill learns from the trained dense model: give --weights, torchvision:NAME:WEIGHTS "
                           "or --pretrain-epochs"
                           + (" (not --from-scratch)" if self.from_scratch else ""))  # fmt: skip
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise BadInput(f"--distill-temperature must be a finite number > 0, got {self.distill_temperature}")
        if not 0 <= self.distill_alpha <= 1:
            raise BadInput(f"--distill-alpha must be in [0, 1], got {self.distill_alpha}")
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def method_options(self) -> dict[str, Any]:
        """Every method option (a shared namespace: ``methods.registry.options_for`` takes a method's part)."""
        own = f"{self.method}_"  # psap_* options go to PSAP, aster_* to ASTER (both have e.g. a variant)
        prefixed = {k[len(own) :]: getattr(self, k) for k in vars(self) if k.startswith(own)}
        return {key: getattr(self, name) for key, name in SHARED_METHOD_OPTIONS.items()} | prefixed


# --------------------------------------------------------------------------------------------- compress export
@dataclass
class ExportOptions:
    """How ``compress export`` (and a recipe's ``export:`` section) writes and verifies the ONNX file."""

    opset: int = opt(17, "ONNX opset, pinned and checked.")
    exporter: str = opt(
        "auto",
        "torch.export-based (dynamo, opset >= 18) or TorchScript (legacy) exporter; auto tries dynamo and falls back "
        "to legacy, recording why.",
        choices=("auto", "dynamo", "legacy"),
    )
    dynamic_batch: bool = opt(True, "A dynamic batch dimension (--static-batch: fixed at 1).", off="--static-batch")
    simplify: bool = opt(True, "Run onnxslim.")
    fp16: bool = opt(
        False,
        "Convert to float16 (float32 inputs/outputs) for GPU runtimes; verified against the fp32 PyTorch model with "
        "the fp16 tolerance. Needs --opset >= 9.",
        flag="plain",
    )
    rtol: float | None = opt(
        None,
        "Verification rtol: max|diff| <= atol + rtol * max|ref|. Default: 1e-3, with --fp16 2e-2 (measured, see "
        "docs/export.md).",
    )
    atol: float | None = opt(None, "Verification atol. Default: 1e-4, with --fp16 5e-2.")
    external_data: bool | None = opt(
        None,
        "Weights in FILE.onnx.data next to the model. Default: only when the model reaches ~1.9 GB (protobuf's 2 GB "
        "limit).",
    )
    accuracy: bool = opt(
        True,
        "Measure the ONNX file's top-1/top-5 on the run's test split (ONNX Runtime CPU) and record it in "
        "report.json and the file's metadata.",
    )
    class_names: str | None = opt(
        None, "Class names for the file's metadata, one per line (default: the dataset's).", metavar="FILE"
    )
    min_accuracy: float | None = min_accuracy_opt("ONNX file's (ONNX Runtime)")
    max_accuracy_drop: float | None = max_drop_opt("ONNX file's (ONNX Runtime)")

    def __post_init__(self) -> None:
        coerce_fields(self)  # recipes give raw YAML values
        check_gates(self)


# --------------------------------------------------------------------------------------------- compress quantize
CALIB_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")


@dataclass
class QuantizeOptions:
    """How ``compress quantize`` (and a recipe's ``quantize:`` section) makes an INT8 file (ORT static, QDQ)."""

    calib_batches: int = opt(8, "Calibration batches from the run's training split (not augmented).")
    calib_batch_size: int = opt(32, "Images per calibration batch.")
    calib_method: str = opt("minmax", "How activation ranges are chosen from the calibration data.",
                            choices=CALIB_METHODS)  # fmt: skip
    per_channel: bool = opt(True, "Per-channel weight scales (--per-tensor: one scale per tensor).", off="--per-tensor")
    activations: str = opt(
        "uint8",
        "Activation type: uint8 (U8S8: the u8 x s8 kernels x86 CPUs run natively; 1.8x "
        "faster than int8 on AVX2, docs/deploy.md) or int8 (S8S8).",
        choices=ACTIVATION_TYPES,
    )
    reduce_range: bool = opt(
        True,
        "7-bit weights (--full-range: 8-bit): u8 x s8 products saturate on x86 CPUs without VNNI (a tiny "
        "model lost 20 pt at full range on AVX2; docs/deploy.md).",
        off="--full-range",
    )
    preprocess: bool = opt(True, "Run ONNX Runtime's quant_pre_process (shape inference, graph optimization) first.")
    keep_stem: bool = opt(False, "Keep the first conv in float32.", flag="plain")
    keep_head: bool = opt(False, "Keep the classifier (the last Gemm/MatMul/Conv) in float32.", flag="plain")
    keep_fp32: list[str] = opt(
        list, "Keep these nodes in float32: node names or globs (e.g. '/layer1/*'). Repeatable or comma list."
    )
    accuracy: bool = opt(True, "Measure the INT8 file's top-1/top-5 on the run's test split (ONNX Runtime CPU).")
    min_accuracy: float | None = min_accuracy_opt("INT8 file's (ONNX Runtime)")
    max_accuracy_drop: float | None = max_drop_opt("INT8 file's (ONNX Runtime)")

    def __post_init__(self) -> None:
        self.keep_fp32 = parse_patterns(self.keep_fp32)
        coerce_fields(self)
        check_gates(self)
        if self.calib_batches < 1 or self.calib_batch_size < 1:
            raise BadInput("--calib-batches and --calib-batch-size must be >= 1")


# --------------------------------------------------------------------------------------------- compress eval
@dataclass
class EvalOptions:
    """What ``compress eval`` measures a model on: a data spec's test split (default: the run's own)."""

    data: str | None = opt(None, "Data spec (default: the run's, from its config.yaml or the file's metadata).")
    data_dir: str | None = opt(None, "Where the dataset lives (default: the run's, else its standard place).")
    test_subset: int | None = opt(None, "Use N test images (default: the run's).")
    batch_size: int = opt(256, "Images per evaluation batch.")
    provider: str = opt("cpu", "ONNX Runtime provider for .onnx files.", choices=("cpu", "cuda"))
    threads: int | None = opt(None, "Intra-op threads (default: the runtime's).")
    min_accuracy: float | None = min_accuracy_opt("model's")

    def __post_init__(self) -> None:
        check_gates(self)
        if self.batch_size < 1:
            raise BadInput(f"--batch-size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------------------------- compress bench
@dataclass
class BenchOptions:
    """How ``compress bench`` (and a recipe's ``bench:`` section) times models, and its gates."""

    provider: str = opt(
        "cpu",
        "Backends, comma list: cpu, cuda, tensorrt (ONNX Runtime); torch, torch-compile, torch-cuda, "
        "torch-compile-cuda (PyTorch, needs the .pt).",
    )
    batch: str = opt("1", "Batch sizes, comma list (a sweep).")
    threads: int | None = opt(None, "Intra-op threads (default: the runtime's).")
    inter_threads: int | None = opt(None, "Inter-op threads (ORT then runs its graph in parallel mode).")
    warmup: int = opt(10, "Untimed runs, reported apart.")
    iters: int = opt(100, "Measured rounds.")
    duration: float | None = opt(None, "Measure for SECONDS instead of --iters...")
    min_iters: int = opt(10, "...and at least this many rounds.")
    io: str = opt(
        "device,host",
        "GPU backends: inputs/outputs resident on the device, and/or host copies included (each reported as its own "
        "row).",
    )
    trt_fp16: bool = opt(False, "TensorRT: build fp16 engines.", flag="plain")
    trt_cache: str = opt("auto", "TensorRT engine cache directory ('auto': ~/.cache/compress/tensorrt, 'off': none).")
    fail_below_speedup: float | None = opt(
        None, "Gate: exit 1 when a model's p50 speedup over --baseline is below X (every model, any setting)."
    )
    fail_above_p50: float | None = opt(
        None,
        "Gate: exit 1 when a model's p50 exceeds MS milliseconds (every model but the baseline, any setting).",
        metavar="MS",
    )
    compare: str | None = opt(
        None,
        "Gate: compare with a previous result (--json-out, bench.json; same provider, io, batch, model label).",
        metavar="PREVIOUS.json",
    )
    max_regression: float = opt(
        10.0,
        "With --compare: exit 1 when a p50 is more than PCT percent slower.",
        metavar="PCT",
    )


# --------------------------------------------------------------------------------------------- command-line only
# The files and inputs a command is pointed at: options of the command line (and --config), not recipe keys.
@dataclass
class LaunchOptions:
    """How ``compress prune`` starts: in this process, or under torchrun."""

    nproc: int | None = opt(None, "Train with N processes: launches torchrun --standalone --nproc-per-node N (DDP; "
                                  "NCCL on CUDA, gloo on the CPU). --batch-size stays the global batch.")  # fmt: skip


@dataclass
class ExportFiles:
    """What ``compress export`` writes."""

    out: str | None = opt(None, "ONNX file to write (default RUN_DIR/pruned.onnx).")
    dense: bool = opt(False, "Export the run's dense model instead (RUN_DIR/dense.onnx).", flag="plain")


@dataclass
class QuantizeInputs:
    """What ``compress quantize`` writes and calibrates on."""

    out: str | None = opt(None, "INT8 file to write (default: SOURCE's name with .int8.onnx).")
    data: str | None = opt(None, "Data spec for calibration and accuracy (default: the run's).")
    data_dir: str | None = opt(None, "Where the dataset lives (default: the run's).")


@dataclass
class BenchFiles:
    """The baseline ``compress bench`` compares with, the models' labels and the files it writes."""

    baseline: str | None = opt(None, "Dense model to compare against, measured in the same run.")
    labels: list[str] = opt(list, "Label of each MODEL, in order (repeat it once per MODEL). Default: the file stem "
                                  "(a run directory: its name; clashes take the parent directory); one MODEL alone: "
                                  "'model'.", cli="--label", metavar="NAME")  # fmt: skip
    json_out: str | None = opt(None, "Write the result JSON here.")
    csv_out: str | None = opt(None, "Write one CSV row per setting and model here.", cli="--csv")
    md_out: str | None = opt(None, "Write the Markdown table here.", cli="--md")
    plot_out: str | None = opt(None, "Write a PNG of the latency distributions here.", cli="--plot")


@dataclass
class InfoOptions:
    """What ``compress info`` shows a model with (its other options are the prune options it shares)."""

    data: str = opt(PruneOptions.__dataclass_fields__["data"].default, "Sets input shape and classes.")
    input_shape: str | None = opt(None, "CxHxW instead of --data, e.g. 3x224x224.")
    num_classes: int = opt(10, "With --input-shape.")
    target_flops: float | None = opt(None, "Dry run: can this FLOPs drop be reached?")


#: The defaults as objects, for library signatures (``round_to: int = DEFAULT_PRUNE.round_to``): the API, the
#: exporter and the harness take their defaults from the same fields as the CLI and recipes.
DEFAULT_PRUNE = PruneOptions(model="", out="")
DEFAULT_EXPORT = ExportOptions()
DEFAULT_QUANTIZE = QuantizeOptions()
DEFAULT_EVAL = EvalOptions()
DEFAULT_BENCH = BenchOptions()
DEFAULT_INFO = InfoOptions()
