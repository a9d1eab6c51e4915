"""The GPU half, checked in one run: CUDA training, ORT CUDA (+ IO binding), torch CUDA, accuracy on CUDA.

    python -m benchmarks.suites.gpu_check                      # on a GPU machine: writes benchmarks/results/gpu.*
    python -m benchmarks.suites.gpu_check --out /tmp/gpu --allow-no-gpu   # a CPU rehearsal (CUDA rows: not run)

Without a CUDA device it refuses in one line with exit 4 (the code for "not available here") and writes
nothing, unless ``--allow-no-gpu`` asks for the rehearsal: the CPU rows run, every CUDA row says why it did not.

Each check runs the public CLI (``python -m compressor ...``) in its own process with a time limit, so one
failure does not hide the others, and becomes a row: ``pass``, ``fail`` (exit code and the last stderr line)
or ``not run`` (why: no CUDA device, a provider missing from this ONNX Runtime build). TensorRT is tried like
the others and is ``not run`` where its libraries are absent. Timing rows are side by side in one bench run.
The whole check is sized for a few minutes (a CIFAR ResNet-20 and a torchvision ResNet-18, synthetic data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
DATA = "synthetic:3x32x32:10:512:128"
STEP_TIMEOUT = 240  # seconds per check


def _cli(*args: str, timeout: int = STEP_TIMEOUT) -> tuple[int, str, str, float]:
    """Run ``python -m compressor ARGS``: (exit code, stdout, stderr, seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "compressor", *args], capture_output=True, text=True,
                              timeout=timeout, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout} s", time.perf_counter() - t0
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0


def _row(name: str, rc: int, out: str, err: str, seconds: float, **extra: Any) -> dict[str, Any]:
    last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), "")
    status = "pass" if rc == 0 else "not run" if rc == 4 else "fail"
    return {"check": name, "status": status, "exit": rc, "seconds": round(seconds, 1),
            **({"reason": last[:300]} if rc else {}), **extra}  # fmt: skip


def _env() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda_available": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "torch_cuda": torch.version.cuda, "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers()}  # fmt: skip


def run_checks(work: Path, env: dict[str, Any]) -> list[dict[str, Any]]:
    """Every check, in order; later checks use the run the first one trained."""
    rows: list[dict[str, Any]] = []
    run = work / "run"
    if not env["cuda_available"]:
        rows.append({"check": "torch CUDA training (prune --device cuda)", "status": "not run",
                     "reason": "torch sees no CUDA device"})  # fmt: skip
        device = "cpu"
    else:
        device = "cuda"
    rc, out, err, s = _cli("prune", "--model", "cifar:resnet20", "--data", DATA, "--method", "psap",
                           "--pretrain-epochs", "1", "--epochs", "2", "--target-flops", "0.5", "--device", device,
                           "--quiet", "--json", "--out", str(run))  # fmt: skip
    report = json.loads(out) if rc == 0 else {}
    rows.append(
        _row(
            f"prune on {device} (psap, AMP on CUDA)",
            rc,
            out,
            err,
            s,
            **({"pruned_acc": report["pruned"]["acc"], "flops_drop": report["flops_drop"]} if report else {}),
        )
    )
    if rc != 0:
        return rows
    for extra, name in (([], "export fp32"), (["--fp16", "--out", str(run / "pruned.fp16.onnx")], "export fp16")):
        rc, out, err, s = _cli("export", str(run), "--json", *extra)
        res = json.loads(out) if rc == 0 else {}
        rows.append(_row(name, rc, out, err, s, **({"acc_ort_cpu": res["accuracy"]["acc"]} if res else {})))
    for model in ("pruned.onnx", "pruned.fp16.onnx"):
        rc, out, err, s = _cli("eval", str(run / model), "--provider", "cuda", "--json")
        res = json.loads(out) if rc == 0 else {}
        rows.append(_row(f"eval {model} on ORT CUDA", rc, out, err, s, **({"acc": res["acc"]} if res else {})))
    rc, out, err, s = _cli("quantize", str(run), "--json")
    rows.append(_row("quantize int8 (calibration on the CPU)", rc, out, err, s))
    rc, out, err, s = _cli("export", str(run), "--dense", "--no-accuracy")
    rows.append(_row("export dense", rc, out, err, s))
    for provider in ("cuda", "torch-cuda", "torch-compile-cuda", "tensorrt"):
        models = [str(run / "pruned.onnx")] if not provider.startswith("torch") else [str(run / "pruned.pt")]
        base = str(run / ("dense.onnx" if not provider.startswith("torch") else "dense.pt"))
        rc, out, err, s = _cli("bench", *models, "--baseline", base, "--provider", provider, "--batch", "1,32",
                               "--iters", "50", "--warmup", "10", "--json", timeout=STEP_TIMEOUT * 2)  # fmt: skip
        rows.append(_row(f"bench {provider} (io device+host, batch 1 and 32)", rc, out, err, s,
                         **({"results": _bench_rows(json.loads(out))} if rc == 0 else {})))  # fmt: skip
    return rows


def _bench_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"provider": r["provider"], "io": r["io"], "batch": r["batch"],
             **{f"{k}_p50_ms": v["p50_ms"] for k, v in r["models"].items()},
             "speedup": {k: v["p50"] for k, v in r["speedup"].items()}} for r in result["results"]]  # fmt: skip


def render(doc: dict[str, Any]) -> str:
    env = doc["env"]
    lines = ["# GPU check", "", f"`{doc['command']}`", "",
             f"GPU: {env['gpu'] or 'none (torch sees no CUDA device)'}; torch {env['torch']} "
             f"(CUDA {env['torch_cuda']}); "
             f"ONNX Runtime {env['onnxruntime']} with {', '.join(env['ort_providers'])}.", "",
             "| check | status | s | detail |", "|---|---|---:|---|"]  # fmt: skip
    for r in doc["rows"]:
        detail = r.get("reason") or ", ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)
                                              and k != "seconds")  # fmt: skip
        lines.append(f"| {r['check']} | {r['status']} | {r.get('seconds', '')} | {detail} |")
        for b in r.get("results", []):
            ms = ", ".join(f"{k[:-7]} {v:.3f} ms" for k, v in b.items() if k.endswith("_p50_ms"))
            sp = ", ".join(f"{k} {v:.2f}×" for k, v in b["speedup"].items())
            lines.append(f"| ↳ {b['provider']} {b['io']} batch {b['batch']} | | | {ms}; speedup {sp} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "gpu"), help="Output path without suffix.")
    ap.add_argument("--allow-no-gpu", action="store_true", help="Without CUDA: run the CPU rows (a rehearsal).")
    args = ap.parse_args(argv)
    from compressor.runtime.atomic import write_json, write_text

    env = _env()
    if not env["cuda_available"] and not args.allow_no_gpu:
        print("error: the GPU check needs a CUDA device and torch sees none (--allow-no-gpu rehearses the CPU rows "
              "and marks the CUDA ones not run)", file=sys.stderr)  # fmt: skip
        raise SystemExit(4)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        rows = run_checks(Path(tmp), env)
    doc = {"command": "python -m benchmarks.suites.gpu_check " + " ".join(argv or sys.argv[1:]), "env": env,
           "rows": rows}  # fmt: skip
    write_json(Path(args.out).with_suffix(".json"), doc)
    write_text(Path(args.out).with_suffix(".md"), render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
