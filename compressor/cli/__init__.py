"""The ``compress`` command line: prune, export, bench, run (a recipe: all three) and info.

Exit codes: 0 ok; 1 a gate failed (verification, target, speedup); 2 bad input (one line); 3 a bug (an internal
error; ``--debug`` shows the traceback); 4 a requested provider or backend is not available here; 130/143
stopped by SIGINT/SIGTERM (training: after a checkpoint).
"""

from __future__ import annotations

import atexit
import errno
import gc
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from compressor.cli.options import click_options
from compressor.config import (
    TRUST_HELP,
    BenchFiles,
    BenchOptions,
    EvalOptions,
    ExportFiles,
    ExportOptions,
    InfoOptions,
    LaunchOptions,
    PruneOptions,
    QuantizeInputs,
    QuantizeOptions,
    defaults,
)
from compressor.errors import BadInput, GateFailed, Interrupted, Unavailable, WriteFailed, one_line, out_of_memory
from compressor.runtime.signals import interruptible

#: OSError numbers that mean an output could not be written (no space, quota, I/O error, read-only, too large).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


def _rank() -> int:
    """This process's rank, without importing torch (``compress --help`` stays fast): before the distributed
    module is loaded no process group can exist, so torchrun's RANK says it."""
    mod = sys.modules.get("compressor.runtime.distributed")
    if mod is not None:
        return mod.rank()
    return int(os.environ.get("RANK", 0)) if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) else 0


class _Failed(SystemExit):
    """The exit of a failed command, with its one-line error (what a rank leaves for the ``--nproc`` launcher)."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(code)
        self.line = line


def _fail(message: str, code: int) -> None:
    """One line on stderr and exit. Under torchrun rank 0 prints it (every rank meets the same bad input); under
    ``--nproc`` no rank does: the launcher prints the line its ranks left, since torchrun stops the other ranks
    as soon as one fails, possibly before rank 0's line is out."""
    from compressor.runtime.launch import reports_to_launcher

    line = one_line(message, 500)
    if _rank() == 0 and not reports_to_launcher():
        click.echo(f"error: {line}", err=True)
    raise _Failed(code, line)


def _fail_stopped(stop: BaseException) -> None:
    """Exit 128 + the signal for a SIGINT/SIGTERM stop (``Interrupted``; click's ``Abort`` and
    ``KeyboardInterrupt`` are SIGINT: 130)."""
    if isinstance(stop, Interrupted):
        _fail(str(stop), 128 + stop.signum)
    _fail("interrupted", 130)


def _stopped_by_signal(exc: BaseException) -> Interrupted | KeyboardInterrupt | None:
    """The SIGINT/SIGTERM stop behind ``exc``, if any: a signal that lands while a C extension initializes (ONNX
    Runtime's, imported on first use) surfaces as that import's ``ImportError`` with the stop as its cause."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (Interrupted, KeyboardInterrupt)):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return None


class _Group(click.Group):
    """Map our errors and click's usage errors to one line and the documented exit codes.

    ``--debug`` (anywhere on the command line) or ``COMPRESS_DEBUG=1`` prints the traceback as well.
    """

    def main(self, args: list[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        try:
            self._main(args, *rest, **kwargs)
        except SystemExit as done:
            from compressor.runtime.launch import record_exit

            code = done.code if isinstance(done.code, int) else 1
            record_exit(code, done.line if isinstance(done, _Failed) else None)  # for prune --nproc's launcher
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
            if isinstance(exc, (Interrupted, click.Abort, KeyboardInterrupt)):
                _fail_stopped(exc)
            if isinstance(exc, click.ClickException):  # usage errors, bad option values, --config problems
                _fail(exc.format_message(), exc.exit_code)
            _fail(str(exc), 4 if isinstance(exc, Unavailable) else 1 if isinstance(exc, GateFailed) else 2)
        except Exception as exc:  # a bug or an environment failure: one line unless --debug
            if debug:
                raise
            if (stop := _stopped_by_signal(exc)) is not None:  # a C extension's import wrapped it
                _fail_stopped(stop)
            if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:  # a write the write layer did not wrap
                _fail(str(WriteFailed.of(exc, exc.filename or "an output file")), 2)
            if out_of_memory(exc):  # a request beyond the machine that no estimate caught up front
                _fail(f"out of memory: {one_line(exc, 200)}; use a smaller batch size, input or model", 2)
            _fail(f"internal error: {one_line(exc, 400, typed=True)} (rerun with --debug for the traceback)", 3)
        finally:
            if (mod := sys.modules.get("compressor.runtime.distributed")) is not None:
                mod.teardown()
        sys.exit(rv if isinstance(rv, int) else 0)


def _read_yaml(path: str) -> dict[str, Any]:
    """The mapping a recipe or ``--config`` file holds; BadParameter (one line) for anything else: not a file,
    unreadable, not UTF-8 text (a BOM is accepted), not YAML, not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"{path} does not exist", param_hint="--config")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise click.BadParameter(f"{path} cannot be read: {one_line(exc)}") from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1]
        raise click.BadParameter(f"{path} is not UTF-8 text (byte {exc.start} is {bad!r}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:  # a mapping nested thousands deep: no recipe looks like that
        raise click.BadParameter(f"{path} is nested too deeply to be a recipe") from None
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


def entry_point() -> None:
    """The ``compress`` executable and ``python -m compressor``: :func:`main` as the process's entry point.

    At exit, after the other exit handlers, every object still alive is frozen: the interpreter's final garbage
    collections then skip them instead of walking the millions torch and ONNX allocated at import (~0.7 s of
    every command's exit). What that skips is ``__del__`` of objects left in reference cycles at exit (a user
    model's, say); our files, locks and temp directories are closed by then and never rely on it, and the
    operating system takes back the memory.
    """
    from compressor.runtime.orphans import follow_launcher

    atexit.register(gc.freeze)  # before torch and ONNX are imported: runs after their exit handlers
    follow_launcher()  # a rank under torchrun stops when its launcher dies
    main()


#: The prune options ``compress info`` shares (what is prunable and how counts round).
PRUNE_GRAPH_RULES = ("ignore", "ignore_stem", "group_max_ratio")


def prune_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every ``compress prune`` option, generated from ``compressor.jobs.config.PruneConfig``, plus ``--nproc``."""
    from compressor.jobs.config import PruneConfig

    return click_options(PruneConfig)(click_options(LaunchOptions)(f))


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
    from compressor.jobs.config import PruneConfig
    from compressor.jobs.prune import prune as run_prune

    if nproc is not None:
        from compressor.runtime.launch import launch_torchrun

        code, error = launch_torchrun(nproc, click.get_current_context().obj["argv"])
        if error is not None:
            _fail(error, code)
        sys.exit(code)
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


@main.command()
@config_option
@click.argument("run_dir")
@click_options(ExportFiles)
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click_options(ExportOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def export(run_dir: str, as_json: bool, **options: Any) -> None:
    """Export a run to ONNX, check it, simplify it and verify it against PyTorch (exit 1 if it differs).

    \b
    Exit codes: 0 ok; 1 verification or an accuracy gate failed; 2 bad input; 130/143 stopped by
    SIGINT/SIGTERM (nothing written).
    """
    from compressor.jobs.export import export as run_export
    from compressor.runtime.atomic import check_output_file

    if Path(run_dir).is_dir():  # a missing run directory is reported as such by run_export
        default = Path(run_dir) / ("dense.onnx" if options["dense"] else "pruned.onnx")
        check_output_file(options["out"] or default, "--out" if options["out"] else "output")
    with interruptible("export"):  # SIGINT/SIGTERM: exit 130/143, the temp files removed, nothing written
        result = run_export(run_dir, **options)
    _print_export(result, as_json)
    if not result["verification"]["passed"]:
        raise GateFailed(f"ONNX output differs from PyTorch: {_diff_text(result['verification'])}")
    _accuracy_gates(result)


def _accuracy_gates(result: dict[str, Any]) -> None:
    from compressor.jobs.accuracy import raise_failed

    raise_failed(result.get("accuracy_gates") or [])


def _accuracy_text(acc: dict[str, Any] | None) -> str:
    if not acc:
        return ""
    return f"; test top-1 {100 * acc['acc']:.2f}%, top-5 {100 * acc['top5']:.2f}% on {acc['n']} images"


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
        f"{_accuracy_text(result.get('accuracy'))}"
    )


def _diff_text(v: dict[str, Any]) -> str:
    if v.get("max_abs_diff") is None:
        return "no comparable output (" + "; ".join(v.get("errors") or ["unknown error"]) + ")"
    return f"max abs diff {v['max_abs_diff']:.2e}"


@main.command()
@config_option
@click.argument("source")
@click_options(QuantizeInputs)
@click_options(QuantizeOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def quantize(source: str, as_json: bool, **options: Any) -> None:
    """Quantize an exported model to INT8 (ONNX Runtime static, QDQ, per-channel), calibrated on the run's data.

    SOURCE is a run directory (its pruned.onnx) or an fp32 ONNX file. The INT8 file's accuracy is measured on
    the run's test split and recorded in its metadata and the run's report.json.

    \b
    Exit codes: 0 ok; 1 an accuracy gate failed (the file is written); 2 bad input; 130/143 stopped by
    SIGINT/SIGTERM (nothing written).
    """
    from compressor.jobs.quantize import quantize as run_quantize

    with interruptible("quantize"):  # SIGINT/SIGTERM: exit 130/143, the temp files removed, nothing written
        result = run_quantize(source, **options)
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        kept = f", kept in fp32: {', '.join(result['fp32_nodes'])}" if result["fp32_nodes"] else ""
        click.echo(f"quantized {result['source']} -> {result['path']} (int8 QDQ, {result['calib_method']} "
                   f"calibration on {result['calib_images']} images{kept}; {result['size_bytes'] / 1e6:.2f} MB, "
                   f"was {result['source_bytes'] / 1e6:.2f} MB){_accuracy_text(result['accuracy'])}")  # fmt: skip
    _accuracy_gates(result)


@main.command(name="eval")
@click.argument("model")
@click_options(EvalOptions)
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def eval_(model: str, as_json: bool, **options: Any) -> None:
    """Top-1/top-5 accuracy and loss of MODEL on a test split: an ONNX file (ONNX Runtime), a pruned-model .pt
    (PyTorch) or a run directory (its pruned.onnx, else pruned.pt). The data defaults to the run's own.

    \b
    Exit codes: 0 ok; 1 --min-accuracy failed; 2 bad input; 4 the provider is not available here; 130/143
    stopped by SIGINT/SIGTERM.
    """
    from compressor.jobs.evaluate import evaluate_model

    with interruptible("eval"):  # SIGINT/SIGTERM: exit 130/143
        result = evaluate_model(model, **options)
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        click.echo(f"{result['model']} ({result['precision']}, {result['runtime']}) on {result['data']} "
                   f"{result['split']} ({result['n']} images): top-1 {100 * result['acc']:.2f}%, top-5 "
                   f"{100 * result['top5']:.2f}%, loss {result['loss']:.4f}")  # fmt: skip
    _accuracy_gates(result)


@main.command(epilog="Exit codes: 0 ok; 1 a gate failed; 2 bad input; 4 a requested provider is not available "
              "here (not in this build, no GPU, or it fell back to another); 130/143 stopped by SIGINT/SIGTERM "
              "(no file written).")  # fmt: skip
@config_option
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click_options(BenchFiles, only=("baseline", "labels"))
@click_options(BenchOptions)
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (instead of the table).")
@click_options(BenchFiles, skip=("baseline", "labels"))
def bench(models: tuple[str, ...], baseline: str | None, labels: tuple[str, ...], as_json: bool,
          json_out: str | None, csv_out: str | None, md_out: str | None, plot_out: str | None,
          **options: Any) -> None:  # fmt: skip
    """Measure the latency of each MODEL (and --baseline), interleaved in one run, and each one's speedup.

    MODEL is an ONNX file, a pruned-model .pt (PyTorch backends) or a run directory; several are timed
    together, each against the baseline (labelled 'baseline'), and the gates judge every one.
    """
    from compressor.jobs.bench import BASELINE_LABEL, bench_gate, bench_models, model_labels
    from compressor.runtime.atomic import check_output_file
    from compressor.runtime.lock import output_files

    named = model_labels(models, labels, baseline)
    outputs = [(option, path) for option, path in (("--json-out", json_out), ("--csv", csv_out), ("--md", md_out),
                                                   ("--plot", plot_out)) if path]  # fmt: skip
    for option, path in outputs:
        check_output_file(path, option)
    # one process writes a file at a time (FILE.lock beside each); SIGINT/SIGTERM: exit 130/143, no file written
    with output_files(outputs), interruptible("bench") as guard:
        result = bench_models(named, BASELINE_LABEL if baseline else None, **options)
        guard.during, guard.note = "bench's output", "each requested file is whole or absent"
        _emit_bench(result, as_json, json_out=json_out, csv_out=csv_out, md_out=md_out, plot_out=plot_out)
    bench_gate(result)


def _emit_bench(result: dict[str, Any], as_json: bool, *, json_out: str | None = None, csv_out: str | None = None,
                md_out: str | None = None, plot_out: str | None = None) -> None:  # fmt: skip
    """The table (or with ``as_json`` the JSON) on stdout, notes on stderr, then the requested files."""
    from benchmarks.bench_output import plot_distributions, render_csv, render_markdown
    from compressor.runtime.atomic import write_json, write_text
    from compressor.runtime.ci import append_step_summary

    table = render_markdown(result)
    click.echo(json.dumps(result, default=str) if as_json else table)
    for line in (result.get("warnings", []) if as_json else []) + result.get("gates", {}).get("notes", []):
        click.echo(f"note: {line}", err=True)  # warnings are in the table already; --compare notes are not
    if json_out:
        write_json(json_out, result)
    if csv_out:
        write_text(csv_out, render_csv(result))
    if md_out:
        write_text(md_out, table)
    if plot_out:
        plot_distributions(result, plot_out)
    append_step_summary(table)  # GitHub Actions: the table in the job summary, before a gate fails


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", default=None, help="Run directory (overrides the recipe's prune.out).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def run(recipe: str, out: str | None, as_json: bool) -> None:
    """Run a YAML recipe: prune -> export (pruned + dense) -> verify -> bench, then print one summary.

    SIGINT/SIGTERM exits 130/143: while pruning after saving a checkpoint, in a later stage at once (the
    finished stages' files stay, nothing is half-written).
    """
    from compressor.jobs.run import run_recipe
    from compressor.train import STOP

    if not Path(recipe).is_file():
        raise BadInput(f"recipe {recipe} does not exist")
    # SIGINT/SIGTERM while pruning: save a checkpoint, exit 130/143; in a later stage (export, quantize, bench)
    # exit 130/143 at once, nothing half-written (run_recipe)
    with STOP.installed():
        summary = run_recipe(_read_yaml_or_bad(recipe), out=out, quiet_json=as_json)
    if as_json:
        click.echo(json.dumps(summary, default=str))


def _read_yaml_or_bad(path: str) -> dict[str, Any]:
    try:
        return _read_yaml(path)
    except click.BadParameter as exc:
        raise BadInput(exc.message) from None


@main.command()
@click.argument("model", required=False)
@click.option(
    "--list-models",
    "list_models",
    flag_value="*",
    default=None,
    is_flag=False,
    help="List the model specs matching a glob (e.g. 'torchvision:resnet*'; '*' or no value: all) and exit.",
)
@click.option("--list-methods", is_flag=True, help="List every pruning method with its options and exit.")
@click_options(InfoOptions)
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click.option("--json", "as_json", is_flag=True)
@click_options(PruneOptions, only=("weights_head", "round_to", "max_layer_ratio", *PRUNE_GRAPH_RULES))
def info(model: str | None, list_models: str | None, list_methods: bool, data: str, input_shape: str | None,
         num_classes: int, round_to: int, max_layer_ratio: float, target_flops: float | None, trust_code: bool,
         as_json: bool, ignore: tuple[str, ...], ignore_stem: bool, group_max_ratio: tuple[str, ...],
         weights_head: str) -> None:  # fmt: skip
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

        default = defaults(PruneOptions)["method"]
        for name, options in all_methods().items():
            click.echo(f"{name}: {', '.join(options) or '(no options)'}{'  (the default)' if name == default else ''}")
        return
    if not model:
        raise BadInput("give a MODEL spec (or --list-models)")
    from compressor.jobs.info import model_info, render_info

    result = model_info(model, data=data, input_shape=input_shape, num_classes=num_classes, round_to=round_to,
                        max_ratio=max_layer_ratio, target_flops=target_flops, trust_code=trust_code,
                        ignore=ignore, ignore_stem=ignore_stem, group_max_ratio=group_max_ratio,
                        weights_head=weights_head)  # fmt: skip
    click.echo(json.dumps(result, default=str) if as_json else render_info(result))


if __name__ == "__main__":
    main()
