"""What the artifact jobs share about accuracy: a run's own data split, a file's preprocessing, the gates.

``export``, ``quantize`` and ``eval`` measure a file on the run's test split, rebuilt from the run's
``config.yaml`` (the same spec, subsets, seed and image size, so the same images), and gate the result
with ``--min-accuracy`` / ``--max-accuracy-drop`` against the dense model's test accuracy in ``report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from compressor.errors import BadInput, GateFailed, one_line
from compressor.runtime.atomic import write_json

#: The config.yaml keys that decide which images a run's splits hold.
DATA_KEYS = ("data", "data_dir", "train_subset", "val_subset", "test_subset", "seed", "image_size")


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``config.yaml``; BadInput when it is missing or unreadable."""
    path = Path(run_dir) / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist: is {run_dir} a compress run directory?") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:  # RecursionError: nested too deep
        raise BadInput(f"{path} cannot be read: {one_line(exc, typed=True)}") from None
    if not isinstance(cfg, dict) or "data" not in cfg:
        raise BadInput(f"{path} is not a compress run config (no data spec)")
    return cfg


def data_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The data options of a run config (or of a file's ``data_options`` metadata)."""
    return {k: cfg.get(k) for k in DATA_KEYS if cfg.get(k) is not None}


def load_split_data(options: dict[str, Any], *, batch_size: int, eval_batch_size: int | None = None,
                    augment: bool = False) -> Any:  # fmt: skip
    """The :class:`~compressor.data.DataBundle` of ``options`` (see :data:`DATA_KEYS`), never downloading."""
    from compressor.data import load_data

    o = dict(options)
    return load_data(o.pop("data"), batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size,
                     augment=augment, download=False, **o)  # fmt: skip


def source_run(path: Path, meta: dict[str, str]) -> Path | None:
    """The run directory a file came from: the one its metadata names, else its own folder, if it is a run."""
    for candidate in (meta.get("source_run"), path.parent):
        if candidate and (Path(candidate) / "config.yaml").is_file():
            return Path(candidate)
    return None


def resolve_data(run_dir: Path | None, meta: dict[str, str], data: str | None = None, *,
                 data_dir: str | None = None, test_subset: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The data options to measure a file on: ``data`` if given, else the run's, else the file's metadata."""
    if data:
        opts: dict[str, Any] = {"data": data}
    elif run_dir is not None:
        opts = data_options(run_config(run_dir))
    elif "data" in meta:
        try:
            opts = {"data": meta["data"], **json.loads(meta.get("data_options") or "{}")}
        except (ValueError, TypeError):
            opts = {"data": meta["data"]}
    else:
        raise BadInput("no data to measure on: the file names no run or data spec; give --data SPEC")
    opts.update({k: v for k, v in (("data_dir", data_dir), ("test_subset", test_subset)) if v is not None})
    return opts


def preprocessing(bundle: Any) -> dict[str, Any]:
    """What a deploying application must do to an image before the file sees it, and the classes it names."""
    c, h, w = bundle.input_shape
    classes = list(bundle.classes) or [str(i) for i in range(bundle.num_classes)]
    return {"layout": "NCHW", "channels": c, "height": h, "width": w,
            "channel_order": {1: "gray", 3: "RGB"}.get(c, f"{c} channels"), "pixel_scale": "1/255 (0..1)",
            "mean": list(bundle.mean), "std": list(bundle.std), "classes": classes}  # fmt: skip


def read_class_names(path: str, num_classes: int) -> list[str]:
    """``--class-names FILE``: one name per line (blank lines skipped), exactly one per class."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--class-names {path} cannot be read: {one_line(exc, typed=True)}") from None
    if len(names) != num_classes:
        raise BadInput(f"--class-names {path} has {len(names)} names; the model has {num_classes} classes")
    return names


def dense_accuracy(run_dir: Path) -> float | None:
    """The dense model's PyTorch test accuracy from the run's ``report.json`` (None without one)."""
    try:
        return float(json.loads((run_dir / "report.json").read_text())["dense"]["acc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gate_failures(what: str, acc: float | None, dense_acc: float | None, min_accuracy: float | None,
                  max_accuracy_drop: float | None) -> list[str]:  # fmt: skip
    """One line per failed accuracy gate of ``what`` (e.g. ``"the INT8 file"``); empty when all pass."""
    failed = []
    if min_accuracy is not None and (acc is None or acc < min_accuracy):
        failed.append(f"--min-accuracy {min_accuracy:g}: {what} has top-1 "
                      f"{'unknown' if acc is None else f'{acc:.4f}'}")  # fmt: skip
    if max_accuracy_drop is not None:
        if acc is None or dense_acc is None:
            failed.append(f"--max-accuracy-drop {max_accuracy_drop:g}: {what} has no "
                          f"{'accuracy' if acc is None else 'dense reference (report.json)'} to compare")  # fmt: skip
        elif 100 * (dense_acc - acc) > max_accuracy_drop:
            failed.append(f"--max-accuracy-drop {max_accuracy_drop:g}: {what} has top-1 {acc:.4f}, "
                          f"{100 * (dense_acc - acc):.2f} pt below the dense {dense_acc:.4f}")  # fmt: skip
    return failed


def raise_failed(failures: list[str]) -> None:
    """GateFailed (exit 1) naming every failed gate; called after every output is written."""
    if failures:
        raise GateFailed("accuracy gate failed: " + "; ".join(failures))


def gated_and_recorded(result: dict[str, Any], run_dir: Path | None, out: Path, what: str, gates: Any) -> dict:
    """An exported or quantized file's ``result`` with its accuracy gates judged (``accuracy_gates``, against the
    run's dense model) and the file noted in the run's report.json; ``gates`` has the two gate options."""
    result["dense_acc"] = dense_accuracy(run_dir) if run_dir is not None else None
    result["accuracy_gates"] = gate_failures(what, (result["accuracy"] or {}).get("acc"), result["dense_acc"],
                                             gates.min_accuracy, gates.max_accuracy_drop)  # fmt: skip
    if run_dir is not None:
        record_export(run_dir, out, result)
    return result


def record_export(run_dir: Path, out: Path, result: dict[str, Any]) -> None:
    """Note the file (precision, verification, accuracy) under ``exports`` in the run's report.json."""
    path = run_dir / "report.json"
    if not path.is_file():
        return
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    verification = result.get("verification") or {}
    report.setdefault("exports", {})[out.name] = {
        "path": str(out), "precision": result.get("precision"), "accuracy": result.get("accuracy"),
        "verified": verification.get("passed"), "max_abs_diff": verification.get("max_abs_diff"),
        "size_bytes": result.get("size_bytes"),
    }  # fmt: skip
    write_json(path, report)
