"""The ``compress`` command line: prune, export, bench, run (a recipe: all three) and info.

Exit codes: 0 ok; 1 a gate failed (verification, target, speedup, provider); 2 bad input (one line).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from compressor.errors import BadInput, GateFailed, Interrupted, one_line


def _rank() -> int:
    """This process's rank, without importing torch (``compress --help`` stays fast): before the distributed
    module is loaded no process group can exist, so torchrun's RANK says it."""
    mod = sys.modules.get("compressor.runtime.distributed")
    if mod is not None:
        return mod.rank()
    return int(os.environ.get("RANK", 0)) if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) else 0


def _fail(message: str, code: int) -> None:
    """One line on stderr (rank 0 only under torchrun: every rank meets the same bad input) and exit."""
    if _rank() == 0:
        click.echo(f"error: {one_line(message, 500)}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Map our errors and click's usage errors to one line and the documented exit codes.

    ``--debug`` (anywhere on the command line) or ``COMPRESS_DEBUG=1`` prints the traceback as well.
    """

    def main(self, args: list[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        try:
            self._main(args, *rest, **kwargs)
        except SystemExit as done:
            from compressor.runtime.launch import record_exit

            record_exit(done.code if isinstance(done.code, int) else 1)  # for prune --nproc, under torchrun
            raise

    def _main(self, args: list[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args or os.environ.get("COMPRESS_DEBUG", "") not in ("", "0")
        args = [a for a in args if a != "--debug"]
        kwargs["standalone_mode"] = False
        kwargs.setdefault("obj", {"argv": args})  # the raw arguments, for prune --nproc to pass on
        try:
            rv = super().main(args, *rest, **kwargs)
        except (BadInput, GateFailed, Interrupted, click.ClickException, click.Abort, KeyboardInterrupt) as exc:
            if debug:
                traceback.print_exc()
            if isinstance(exc, Interrupted):
                _fail(str(exc), 128 + exc.signum)
            if isinstance(exc, (click.Abort, KeyboardInterrupt)):
                _fail("interrupted", 130)
            if isinstance(exc, click.ClickException):  # usage errors, bad option values, --config problems
                _fail(exc.format_message(), exc.exit_code)
            _fail(str(exc), 1 if isinstance(exc, GateFailed) else 2)
        except Exception as exc:  # a bug or an environment failure: one line unless --debug
            if debug:
                raise
            _fail(f"internal error: {one_line(exc, 400, typed=True)} (rerun with --debug for the traceback)", 3)
        finally:
            if (mod := sys.modules.get("compressor.runtime.distributed")) is not None:
                mod.teardown()
        sys.exit(rv if isinstance(rv, int) else 0)


def _read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"{path} does not exist", param_hint="--config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values")
    return data


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--config FILE``: YAML keys become option defaults, so the command line still wins."""
    if value:
        data = _read_yaml(value)
        data = data.get(ctx.info_name, data) if isinstance(data.get(ctx.info_name), dict) else data
        known = {p.name for p in ctx.command.params}
        norm = {str(k).replace("-", "_"): v for k, v in data.items()}
        # A YAML mapping for a repeated PATTERN=VALUE option (group_max_ratio) becomes its list form.
        norm = {k: [f"{a}={b}" for a, b in v.items()] if isinstance(v, dict) else v for k, v in norm.items()}
        unknown = sorted(set(norm) - known - {"prune", "export", "bench"})
        if unknown:
            raise click.BadParameter(f"unknown option(s) in {value}: {', '.join(unknown)}", param_hint="--config")
        ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in norm.items() if k in known}}
    return value


config_option = click.option(
    "--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True, expose_value=False,
    help="YAML recipe with option values (the command line wins).",
)  # fmt: skip


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="compress")
def main() -> None:
    """compress: prune CNN filters, export verified ONNX, measure real latency."""


# PSAP (see docs/methods.md): the paper fixes sparsity-set ratios and gradient protection; the rest is our reading.
psap_options = [
    click.option("--psap-beta", type=float, default=0.05, show_default=True,
                 help="PSAP sparsity: a weight is sparse when |w| <= beta * mean|W_g| (our reading)."),
    click.option("--psap-sparsity", type=click.Choice(["weight", "filter"]), default="weight", show_default=True,
                 help="PSAP sparsity over weights, or over channel L2 norms (<= beta-filter * mean norm)."),
    click.option("--psap-variant", type=click.Choice(["v2", "v1"]), default="v2", show_default=True,
                 help="PSAP reading: v2 (BN gates, budget-neutral swaps, snapshot re-admission, early freeze, "
                 "group magnitude; docs/methods.md) or v1 (the first implementation, kept for comparison)."),
    click.option("--psap-mode", type=click.Choice(["gate", "filter"]), default=None,
                 help="PSAP v2: switch channels off through BN gamma/beta held at 0, filters intact (gate), or "
                 "by zeroing filters (filter). Default: gate; groups without BN always use filter."),
    click.option("--psap-protection", type=click.Choice(["swap", "extra"]), default=None,
                 help="PSAP v2: a protected channel swaps with its group's weakest kept one (swap, default) or is "
                 "kept on top of the budget, other groups pruning more (extra, v1)."),
    click.option("--psap-readmit", type=click.Choice(["snapshot", "norm"]), default=None,
                 help="PSAP v2: score switched-off channels on their snapshot and restore it when they come back "
                 "(snapshot, default), or on their held values (norm, v1)."),
    click.option("--psap-score", type=click.Choice(["magnitude", "l2", "taylor"]), default=None,
                 help="PSAP v2 channel selection: Torch-Pruning's group L1 magnitude (default), out-filter L2 (v1) "
                 "or the BN-gate Taylor score."),
    click.option("--psap-freeze-at", type=float, default=None,
                 help="PSAP v2: fraction of the epochs after which the mask is frozen (default 0.4; the ramp ends "
                 "there and the rest trains the final structure)."),
    click.option("--psap-steps-per-epoch", type=int, default=None,
                 help="PSAP v2: pruning steps per epoch until the freeze (default 2)."),
    click.option("--psap-protect-steps", type=int, default=None,
                 help="PSAP v2: a protected channel stays kept for this many steps (default 2; 1: the v1 churn, "
                 "where it could be pruned again at the very next step)."),
    click.option("--psap-sparsity-scope", type=click.Choice(["all", "kept"]), default=None,
                 help="PSAP sparsity over all of a group's filters (v1) or only its kept ones (v2 default: "
                 "held-zero filters otherwise make s_g echo the previous ratio)."),
    click.option("--psap-bn-batches", type=int, default=20, show_default=True,
                 help="PSAP: training batches used to re-estimate BN statistics after each step (0: off)."),
    click.option("--psap-beta-filter", type=float, default=0.5, show_default=True,
                 help="PSAP filter-level sparsity threshold (our choice; the spec leaves it open)."),
    click.option("--psap-pulse-iters", type=int, default=20, show_default=True,
                 help="PSAP protection: iterations after a step over which gradient pulses accumulate."),
    click.option("--psap-gamma", type=float, default=1.0, show_default=True,
                 help="PSAP protection: protect when pulse >= gamma * median pulse of kept channels."),
    click.option("--psap-pulse", type=click.Choice(["bn", "raw", "scaled"]), default="bn", show_default=True,
                 help="PSAP pulse: gradient norm x BN input std (fair behind BN, our reading), the spec's raw "
                 "gradient norm, or ||grad||*||w|| (for --psap-regrow)."),
    click.option("--psap-regrow/--no-psap-regrow", default=False, show_default=True,
                 help="PSAP: let pruned filters train freely between steps (SFP, the spec); default holds them "
                 "at zero so they come back only through protection (measured better, see docs/methods.md)."),
    click.option("--psap-adaptive/--no-psap-adaptive", default=True, show_default=True,
                 help="PSAP: sparsity-adaptive per-group ratios (off: uniform, as SFP)."),
    click.option("--psap-protect/--no-psap-protect", default=True, show_default=True,
                 help="PSAP: gradient-pulse protection of pruned channels."),
    click.option("--psap-restore/--no-psap-restore", default=True, show_default=True,
                 help="PSAP: restore protected channels' weights from their snapshot."),
    click.option("--psap-zero-bn/--no-psap-zero-bn", default=False, show_default=True,
                 help="PSAP: also zero BN gamma/beta of pruned channels (the spec; freezes them: no regrowth)."),
]  # fmt: skip


# ASTER (see docs/methods.md): a global BN-|gamma| threshold adapted from the loss sensitivity.
aster_options = [
    click.option("--aster-sensitivity", type=click.Choice(["lbfgs", "gradient"]), default="lbfgs",
                 show_default=True, help="ASTER: direction d = -H g with H the L-BFGS inverse Hessian over BN "
                 "gamma (no extra pass), or H = I."),
    click.option("--aster-tau0", type=float, default=1e-4, show_default=True, help="ASTER: initial threshold."),
    click.option("--aster-x", type=float, default=0.01, show_default=True,
                 help="ASTER: loss change rate x in tau += lr0 * x * L / (B * S)."),
    click.option("--aster-variant", type=click.Choice(["v2", "v1"]), default="v2", show_default=True,
                 help="ASTER reading: v2 (prune exactly score < tau while searching, 4 times an epoch, BN "
                 "re-estimation, rounding at the freeze, eta0 0.1; docs/methods.md) or v1 (the first implementation)."),
    click.option("--aster-search", type=click.Choice(["exact", "rounded"]), default=None,
                 help="ASTER: while searching prune exactly score < tau (exact, v2) or round kept counts up to "
                 "--round-to (rounded, v1)."),
    click.option("--aster-eta", type=click.Choice(["fixed", "lr"]), default=None,
                 help="ASTER: eta0 in the tau update is --aster-eta0 (fixed, v2) or the phase's LR (lr, v1)."),
    click.option("--aster-eta0", type=float, default=0.1, show_default=True,
                 help="ASTER: eta0 with --aster-eta fixed (the authors' value)."),
    click.option("--aster-prunes-per-epoch", type=int, default=None,
                 help="ASTER: prune score < tau this many times an epoch while searching (v2 4, v1 1)."),
    click.option("--aster-normalize/--no-aster-normalize", default=False, show_default=True,
                 help="ASTER: score each BN's |gamma| relative to that BN's mean (per-BN allocation)."),
    click.option("--aster-curvature", type=click.Choice(["consecutive", "same-batch"]), default=None,
                 help="ASTER L-BFGS pairs: consecutive training iterates (no extra pass) or one fixed batch's "
                 "gradient every --aster-curvature-every steps (one extra pass each)."),
    click.option("--aster-curvature-every", type=int, default=20, show_default=True,
                 help="ASTER: steps between same-batch curvature pairs."),
    click.option("--aster-reduce", type=click.Choice(["max", "mean", "min"]), default="max", show_default=True,
                 help="ASTER: a channel's score over its coupled BNs (max: pruned only when every BN agrees; min: "
                 "when any does)."),
    click.option("--aster-history", type=int, default=10, show_default=True, help="ASTER: L-BFGS pairs kept."),
    click.option("--aster-update-every", type=int, default=1, show_default=True,
                 help="ASTER: adapt tau in every Nth epoch."),
    click.option("--aster-search-epochs", type=int, default=None,
                 help="ASTER: epochs to reach the target by adaptation before the fallback sets tau "
                 "(default: half the epochs)."),
    click.option("--aster-loss", type=click.Choice(["sum", "mean"]), default="sum", show_default=True,
                 help="ASTER: L in the tau update is the batch's summed loss (our reading) or its mean."),
    click.option("--aster-eps", type=float, default=1e-12, show_default=True,
                 help="ASTER: tau moves only when the sensitivity S exceeds this."),
    click.option("--max-prune-fraction", type=float, default=0.8, show_default=True,
                 help="ASTER: tau never prunes more than this fraction of all scored channels."),
    click.option("--bn-init", type=float, default=None,
                 help="Initialise every BN gamma to this value (from-scratch runs; the ASTER authors use 0.5)."),
]  # fmt: skip


graph_rule_options = [
    click.option("--ignore", multiple=True,
                 help="Never prune these layers (and what is coupled to them): a name, a glob like 'layer4.*', or "
                      "type:ClassName. Repeatable or comma list. The classifier is always left alone."),
    click.option("--ignore-stem", is_flag=True, help="Also leave the first conv (the stem) alone."),
    click.option("--group-max-ratio", multiple=True, metavar="PATTERN=RATIO",
                 help="Cap the pruned fraction of groups whose layers match PATTERN (0 = leave alone). Repeatable; "
                      "in a recipe, a mapping."),
]  # fmt: skip


def prune_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--model",
            required=True,
            help="torchvision:NAME, cifar:resnet20|32|56|110, cifar:vgg16, "
            "timm:NAME, path/file.py:factory or a pickled whole module FILE.pt (both need --trust-code).",
        ),
        click.option("--weights", default=None, help="state_dict checkpoint to start from (weights_only load)."),
        click.option(
            "--data",
            default="fashion-mnist",
            show_default=True,
            help="fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic:CxHxW:classes.",
        ),
        click.option("--data-dir", default=None, help="Where the dataset lives (default: its standard place)."),
        click.option("--download", is_flag=True, help="Download the dataset if missing (needs a network)."),
        click.option(
            "--method", default="psap", show_default=True, help="psap | aster | l1 | l2 | bn-scale | taylor | random."
        ),  # fmt: skip
        click.option(
            "--from-scratch", is_flag=True, help="Random init, prune during the whole training (SFP style)."
        ),  # fmt: skip
        click.option("--target-flops", type=float, default=None, help="FLOPs (MACs) drop to reach, e.g. 0.5."),
        click.option("--target-params", type=float, default=None, help="Parameter drop to reach."),
        click.option(
            "--target-latency",
            default=None,
            metavar="TIME",
            help="ONNX Runtime p50 latency to reach, e.g. 4ms, 0.004s, 500us (a bare number: ms). Finds "
            'the FLOPs drop by timing real exported models (see docs/cli.md "Latency-targeted pruning").',
        ),
        click.option(
            "--latency-provider",
            default="cpu",
            show_default=True,
            help="--target-latency: ONNX Runtime provider to time on (cpu, cuda, tensorrt).",
        ),
        click.option("--latency-batch", type=int, default=1, show_default=True, help="--target-latency: batch size."),
        click.option(
            "--latency-threads", type=int, default=None, help="--target-latency: ORT intra-op threads (default: ORT's)."
        ),
        click.option(
            "--latency-tolerance",
            type=float,
            default=0.1,
            show_default=True,
            help="--target-latency: met when at most target x (1 + tolerance).",
        ),
        click.option(
            "--latency-duration",
            type=float,
            default=1.0,
            show_default=True,
            help="--target-latency: seconds of timing per candidate model (at least 20 runs).",
        ),
        click.option(
            "--allocation",
            type=click.Choice(["uniform", "latency"]),
            default="uniform",
            show_default=True,
            help="Baselines: the same pruned ratio in every group, or ratios weighted by the measured ms saved per "
            "MAC removed in each group (times one-group probes on --latency-provider/--latency-batch).",
        ),
        click.option(
            "--allocation-power",
            type=float,
            default=2.0,
            show_default=True,
            help="--allocation latency: weights are (ms saved per MAC, relative) ** POWER.",
        ),
        click.option(
            "--epochs",
            type=int,
            default=0,
            show_default=True,
            help="Epochs of pruning/fine-tuning (0 = one-shot prune of the given weights).",
        ),
        click.option(
            "--pretrain-epochs",
            type=int,
            default=0,
            show_default=True,
            help="Train the dense model from scratch for N epochs first.",
        ),
        click.option("--steps", type=int, default=1, show_default=True, help="Pruning steps (baselines, iterative)."),
        click.option("--prune-every", type=int, default=1, show_default=True, help="PSAP: a step every N epochs."),
        click.option("--prune-at", type=int, default=0, show_default=True,
                     help="One-shot baselines: prune after this many epochs instead of before the first."),
        click.option("--allocation-from", default=None, metavar="RUN",
                     help="One-shot baselines: keep the per-group channel counts of another finished run (its "
                     "report.json): the baseline then chooses only which channels."),
        click.option(
            "--prune-schedule",
            type=click.Choice(["cubic", "constant"]),
            default=None,
            help="PSAP step targets: cubic ramp over the first half (default from weights) or the full "
            "target at every step (default with --from-scratch).",
        ),  # fmt: skip
        click.option("--materialize-early/--no-materialize-early", default=False, show_default=True,
                     help="Once the method's mask is final (one-shot baselines: at once; PSAP v2/ASTER: at the "
                     "freeze), train the remaining --epochs on the physically pruned model under the same LR "
                     "schedule (faster; the optimizer momentum restarts there)."),
        click.option(
            "--finetune-epochs",
            type=int,
            default=0,
            show_default=True,
            help="Train the physically pruned model N more epochs.",
        ),  # fmt: skip
        click.option("--finetune-lr", type=float, default=None, help="Fine-tuning LR (default: --lr)."),
        click.option(
            "--round-to",
            type=int,
            default=8,
            show_default=True,
            help="Kept channel counts are multiples of this (faster kernels).",
        ),
        click.option(
            "--max-layer-ratio",
            type=float,
            default=0.8,
            show_default=True,
            help="Never remove more than this fraction of any group.",
        ),
        *graph_rule_options,
        click.option("--lr", type=float, default=0.05, show_default=True, help="Fine-tuning learning rate."),
        click.option("--pretrain-lr", type=float, default=0.1, show_default=True),
        click.option("--momentum", type=float, default=0.9, show_default=True),
        click.option("--weight-decay", type=float, default=5e-4, show_default=True),
        click.option("--schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True),
        click.option(
            "--distill/--no-distill",
            default=False,
            show_default=True,
            help="Pruning and fine-tuning learn from the dense model too (knowledge distillation): the teacher "
            "is the dense model given by --weights or trained by --pretrain-epochs.",
        ),
        click.option(
            "--distill-temperature",
            type=float,
            default=4.0,
            show_default=True,
            help="--distill: softmax temperature T of the teacher and student logits.",
        ),
        click.option(
            "--distill-alpha",
            type=float,
            default=0.5,
            show_default=True,
            help="--distill: loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student).",
        ),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option("--train-subset", type=int, default=None, help="Use N training images (quick runs)."),
        click.option("--val-subset", type=int, default=None),
        click.option("--test-subset", type=int, default=None),
        click.option("--image-size", type=int, default=None, help="Resize inputs to SIZE x SIZE."),
        click.option("--num-classes", type=int, default=None, help="Default: the dataset's."),
        click.option("--in-channels", type=int, default=None, help="Default: the dataset's."),
        click.option(
            "--trust-code",
            is_flag=True,
            help="Allow a user model file (path.py:factory) or a pickled whole module: loading either runs "
            "arbitrary Python code, so it is off unless you trust the file. Our own files never need it.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N."),
        click.option("--out", required=True, help="Run directory to write."),
        click.option(
            "--resume",
            is_flag=True,
            help="Continue a killed or interrupted run from its newest sound checkpoint (the previous one if "
            "the newest is corrupt); a finished run is left as it is.",
        ),
        click.option(
            "--checkpoint-every",
            type=int,
            default=0,
            show_default=True,
            help="Also checkpoint every N training steps (0: at epoch ends only; SIGINT/SIGTERM always save one).",
        ),
        click.option(
            "--nproc",
            type=int,
            default=None,
            help="Train with N processes: launches torchrun --standalone --nproc-per-node N (DDP; NCCL on "
            "CUDA, gloo on the CPU). --batch-size stays the global batch.",
        ),
        click.option("--overwrite", is_flag=True, help="Replace a non-empty run directory."),
        click.option("--quiet", is_flag=True, help="No progress output."),
        *psap_options,
        *aster_options,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.command()
@config_option
@prune_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def prune(as_json: bool, nproc: int | None, **options: Any) -> None:
    """Prune a model to a FLOPs, params or measured-latency target; write runs/NAME/{pruned.pt, report.json, ...}.

    \b
    Exit codes: 0 ok; 1 a gate failed (target, latency); 2 bad input; 3 internal error (--debug shows it);
    130/143 stopped by SIGINT/SIGTERM after saving a checkpoint (continue with --resume).
    """
    from compressor.jobs.prune import PruneConfig
    from compressor.jobs.prune import prune as run_prune

    if nproc is not None:
        from compressor.runtime.launch import launch_torchrun

        sys.exit(launch_torchrun(nproc, click.get_current_context().obj["argv"]))
    from compressor.train import STOP

    with STOP.installed():  # SIGINT/SIGTERM: save a checkpoint, exit 130/143 (resume with --resume)
        report = run_prune(PruneConfig(**options))
    if _rank() != 0:  # under torchrun rank 0 speaks for all
        return
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        click.echo(
            f"pruned {report['model']['spec']} with {report['method']['name']}: FLOPs drop "
            f"{report['flops_drop']:.4f}, params drop {report['params_drop']:.4f}, acc "
            f"{report['dense']['acc']:.4f} -> {report['pruned']['acc']:.4f}"
            + (f", latency {lat['dense_ms']:.3f} -> {lat['final_ms']:.3f} ms (target {lat['target_ms']:.3f})"
               if (lat := report.get("latency")) else "")
            + f"; wrote {options['out']}"
        )  # fmt: skip


#: --trust-code of export, bench and info (prune's says the same for its --model).
TRUST_HELP = (
    "Allow a model built from a user file (path.py:factory) or a pickled whole module (model.pt): "
    "loading either runs arbitrary Python code, so it is off unless you trust the file. Our own files "
    "(pruned.pt, weights) never need it."
)


def export_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset, pinned and checked."),
        click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True,
                     help="torch.export-based (dynamo, opset >= 18) or TorchScript (legacy) exporter; auto tries "
                     "dynamo and falls back to legacy, recording why."),
        click.option("--dynamic-batch/--static-batch", default=True, show_default=True),
        click.option("--simplify/--no-simplify", default=True, show_default=True, help="Run onnxslim."),
        click.option("--fp16", is_flag=True, help="Convert to float16 (float32 inputs/outputs) for GPU runtimes; "
                     "verified against the fp32 PyTorch model with the fp16 tolerance. Needs --opset >= 9."),
        click.option("--rtol", type=float, default=None,
                     help="Verification rtol: max|diff| <= atol + rtol * max|ref|. Default: 1e-3, with --fp16 2e-2 "
                     "(measured, see docs/export.md)."),
        click.option("--atol", type=float, default=None, help="Verification atol. Default: 1e-4, with --fp16 5e-2."),
        click.option("--external-data/--no-external-data", default=None,
                     help="Weights in FILE.onnx.data next to the model. Default: only when the model reaches "
                     "~1.9 GB (protobuf's 2 GB limit)."),
    ]):  # fmt: skip
        f = opt(f)
    return f


@main.command()
@config_option
@click.argument("run_dir")
@click.option("--out", default=None, help="ONNX file to write (default RUN_DIR/pruned.onnx).")
@click.option("--dense", is_flag=True, help="Export the run's dense model instead (RUN_DIR/dense.onnx).")
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@export_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def export(run_dir: str, as_json: bool, **options: Any) -> None:
    """Export a run to ONNX, check it, simplify it and verify it against PyTorch (exit 1 if it differs)."""
    from compressor.jobs.prune import export as run_export
    from compressor.runtime.atomic import check_output_file

    if Path(run_dir).is_dir():  # a missing run directory is reported as such by run_export
        default = Path(run_dir) / ("dense.onnx" if options["dense"] else "pruned.onnx")
        check_output_file(options["out"] or default, "--out" if options["out"] else "output")
    result = run_export(run_dir, **options)
    _print_export(result, as_json)
    if not result["verification"]["passed"]:
        raise GateFailed(f"ONNX output differs from PyTorch: {_diff_text(result['verification'])}")


def _print_export(result: dict[str, Any], as_json: bool) -> None:
    v = result["verification"]
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    fallback = f"; dynamo fell back: {result['fallback_reason']};" if result.get("fallback_reason") else ","
    extra = "".join(f" + {Path(p).name}" for p in result.get("files", [])[1:])
    click.echo(
        f"exported {result['path']}{extra} ({result['exporter']} exporter{fallback} opset {result['opset']}, "
        f"{result.get('precision', 'fp32')}, {result['nodes']} nodes); verified on batches {v['batch_sizes']}: "
        f"{_diff_text(v)} (rtol {v['rtol']:g}, atol {v['atol']:g}), {'passed' if v['passed'] else 'FAILED'}"
    )


def _diff_text(v: dict[str, Any]) -> str:
    if v.get("max_abs_diff") is None:
        return "no comparable output (" + "; ".join(v.get("errors") or ["unknown error"]) + ")"
    return f"max abs diff {v['max_abs_diff']:.2e}"


def bench_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--provider", default="cpu", show_default=True,
                     help="Backends, comma list: cpu, cuda, tensorrt (ONNX Runtime); torch, torch-compile, "
                     "torch-cuda, torch-compile-cuda (PyTorch, needs the .pt)."),
        click.option("--batch", default="1", show_default=True, help="Batch sizes, comma list (a sweep)."),
        click.option("--threads", type=int, default=None, help="Intra-op threads (default: the runtime's)."),
        click.option("--inter-threads", type=int, default=None,
                     help="Inter-op threads (ORT then runs its graph in parallel mode)."),
        click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs, reported apart."),
        click.option("--iters", type=int, default=100, show_default=True, help="Measured rounds."),
        click.option("--duration", type=float, default=None, help="Measure for SECONDS instead of --iters..."),
        click.option("--min-iters", type=int, default=10, show_default=True, help="...and at least this many rounds."),
        click.option("--io", default="device,host", show_default=True,
                     help="GPU backends: inputs/outputs resident on the device, and/or host copies included "
                     "(each reported as its own row)."),
        click.option("--trt-fp16", is_flag=True, help="TensorRT: build fp16 engines."),
        click.option("--trt-cache", default="auto", show_default=True,
                     help="TensorRT engine cache directory ('auto': ~/.cache/compress/tensorrt, 'off': none)."),
        click.option("--fail-below-speedup", type=float, default=None,
                     help="Gate: exit 1 when the p50 speedup over --baseline is below X (any setting)."),
        click.option("--fail-above-p50", type=float, default=None, metavar="MS",
                     help="Gate: exit 1 when the model's p50 exceeds MS milliseconds (any setting)."),
        click.option("--compare", default=None, metavar="PREVIOUS.json",
                     help="Gate: compare with a previous --json result (same provider, io, batch, model)."),
        click.option("--max-regression", type=float, default=10.0, show_default=True, metavar="PCT",
                     help="With --compare: exit 1 when a p50 is more than PCT percent slower."),
    ]):  # fmt: skip
        f = opt(f)
    return f


@main.command(epilog="Exit codes: 0 ok; 1 a gate failed or a requested provider is not the one running; "
              "2 bad input.")  # fmt: skip
@config_option
@click.argument("model")
@click.option("--baseline", default=None, help="Dense model to compare against, measured in the same run.")
@bench_options
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click.option("--json", "json_out", default=None, help="Write the result JSON here ('-': stdout, no table).")
@click.option("--csv", "csv_out", default=None, help="Write one CSV row per setting and model here.")
@click.option("--md", "md_out", default=None, help="Write the Markdown table here.")
@click.option("--plot", "plot_out", default=None, help="Write a PNG of the latency distributions here.")
def bench(model: str, baseline: str | None, json_out: str | None, csv_out: str | None, md_out: str | None,
          plot_out: str | None, **options: Any) -> None:  # fmt: skip
    """Measure the latency of MODEL (and --baseline, interleaved) and the speedup.

    MODEL is an ONNX file, a pruned-model .pt (PyTorch backends) or a run directory.
    """
    from compressor.jobs.prune import bench_gate, bench_models
    from compressor.runtime.atomic import check_output_file

    for option, path in (("--json", json_out), ("--csv", csv_out), ("--md", md_out), ("--plot", plot_out)):
        if path and not (option == "--json" and path == "-"):
            check_output_file(path, option)
    result = bench_models({"model": model, **({"baseline": baseline} if baseline else {})},
                          "baseline" if baseline else None, label="model", **options)  # fmt: skip
    _emit_bench(result, json_out, csv_out=csv_out, md_out=md_out, plot_out=plot_out)
    bench_gate(result)


def _emit_bench(result: dict[str, Any], json_out: str | None, *, csv_out: str | None = None,
                md_out: str | None = None, plot_out: str | None = None) -> None:  # fmt: skip
    from benchmarks.bench_output import plot_distributions, render_csv, render_markdown
    from compressor.runtime.atomic import write_json, write_text

    table = render_markdown(result)
    if json_out == "-":
        click.echo(json.dumps(result, default=str))
    else:
        click.echo(table)
    for line in (result.get("warnings", []) if json_out == "-" else []) + result.get("gates", {}).get("notes", []):
        click.echo(f"note: {line}", err=True)  # warnings are in the table already; --compare notes are not
    if json_out and json_out != "-":
        write_json(json_out, result)
    if csv_out:
        write_text(csv_out, render_csv(result))
    if md_out:
        write_text(md_out, table)
    if plot_out:
        plot_distributions(result, plot_out)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", default=None, help="Run directory (overrides the recipe's prune.out).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def run(recipe: str, out: str | None, as_json: bool) -> None:
    """Run a YAML recipe: prune -> export (pruned + dense) -> verify -> bench, then print one summary."""
    from compressor.jobs.run import run_recipe
    from compressor.train import STOP

    if not Path(recipe).is_file():
        raise BadInput(f"recipe {recipe} does not exist")
    with STOP.installed():  # SIGINT/SIGTERM while pruning: save a checkpoint, exit 130/143
        summary = run_recipe(_read_yaml_or_bad(recipe), out=out, quiet_json=as_json)
    if as_json:
        click.echo(json.dumps(summary, default=str))


def _read_yaml_or_bad(path: str) -> dict[str, Any]:
    try:
        return _read_yaml(path)
    except click.BadParameter as exc:
        raise BadInput(exc.message) from None


def _graph_rules(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(graph_rule_options):
        f = opt(f)
    return f


@main.command()
@click.argument("model", required=False)
@click.option("--list-models", "list_models", flag_value="*", default=None, is_flag=False,
              help="List the model specs matching a glob (e.g. 'torchvision:resnet*'; '*' or no value: all) and exit.")
@click.option("--list-methods", is_flag=True, help="List every pruning method with its options and exit.")
@click.option("--data", default="fashion-mnist", show_default=True, help="Sets input shape and classes.")
@click.option("--input-shape", default=None, help="CxHxW instead of --data, e.g. 3x224x224.")
@click.option("--num-classes", type=int, default=10, show_default=True, help="With --input-shape.")
@click.option(
    "--round-to",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Kept channel counts are multiples of this (1: no rounding).",
)
@click.option(
    "--max-layer-ratio",
    type=float,
    default=0.8,
    show_default=True,
    help="Never remove more than this fraction of any group (strictly between 0 and 1).",
)
@click.option("--target-flops", type=float, default=None, help="Dry run: can this FLOPs drop be reached?")
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True)
@_graph_rules
def info(model: str | None, list_models: str | None, list_methods: bool, data: str, input_shape: str | None,
         num_classes: int, round_to: int, max_layer_ratio: float, target_flops: float | None, trust_code: bool,
         as_json: bool, ignore: tuple[str, ...], ignore_stem: bool,
         group_max_ratio: tuple[str, ...]) -> None:  # fmt: skip
    """Show a model's prunable groups, FLOPs, params, every layer left alone (and why) and the reachable drop."""
    if list_models is not None:
        from compressor.models import list_models as all_models

        found = all_models(list_models)
        if not found:
            raise BadInput(f"no model spec matches {list_models!r} (try compress info --list-models)")
        click.echo("\n".join(found))
        return
    if list_methods:
        from compressor.api import list_methods as all_methods

        for name, options in all_methods().items():
            click.echo(f"{name}: {', '.join(options) or '(no options)'}")
        return
    if not model:
        raise BadInput("give a MODEL spec (or --list-models)")
    from compressor.jobs.info import model_info, render_info

    result = model_info(model, data=data, input_shape=input_shape, num_classes=num_classes, round_to=round_to,
                        max_ratio=max_layer_ratio, target_flops=target_flops, trust_code=trust_code,
                        ignore=ignore, ignore_stem=ignore_stem, group_max_ratio=group_max_ratio)  # fmt: skip
    click.echo(json.dumps(result, default=str) if as_json else render_info(result))


if __name__ == "__main__":
    main()
