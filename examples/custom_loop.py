"""Your own model, your own loss, your own training loop: prune it with compress, save, reload, export.

    python examples/custom_loop.py --out runs/custom_loop            # PSAP, then ASTER
    python examples/custom_loop.py --out runs/custom_loop --methods aster --epochs 6

The model counts bright spots: a small conv net whose head predicts a density map (N, 1, H, W), trained with
a mean-squared error against blurred point maps. Nothing here is a classifier, so the Pruner is told which
layer produces the output (``outputs=[model.head]``). Each method prunes half the FLOPs while the loop trains;
the slim model is saved with ``compressor.save_pruned``, then a fresh Python process reloads it with
``compressor.load_pruned`` (weights_only: the file holds the spec, the pruning history and the weights),
exports it to ONNX and verifies the export against PyTorch. Exit code 0 only if every step held.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import compressor

SIZE = 32


class Counter(nn.Module):
    """Three conv-BN-ReLU blocks and a 1x1 conv head: a density map whose sum is the number of spots."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.body = nn.Sequential(block(1, 16), block(16, 32), block(32, 32))
        self.head = nn.Conv2d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build() -> nn.Module:
    """The factory ``load_pruned`` calls (through the spec ``examples/custom_loop.py:build``)."""
    return Counter()


def make_batches(n: int = 16, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Noisy images with 1-5 bright 3x3 spots; targets are the spot centres blurred by a 3x3 box."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = 0.1 * torch.randn(batch, 1, SIZE, SIZE, generator=g)
        points = torch.zeros(batch, 1, SIZE, SIZE)
        for i in range(batch):
            for _ in range(int(torch.randint(1, 6, (1,), generator=g))):
                r, c = (int(v) for v in torch.randint(2, SIZE - 2, (2,), generator=g))
                x[i, 0, r - 1 : r + 2, c - 1 : c + 2] += 1.0
                points[i, 0, r, c] += 1.0
        y = nn.functional.avg_pool2d(points, 3, stride=1, padding=1)
        out.append((x, y))
    return out


def prune_in_my_loop(method: str, out: Path, epochs: int) -> dict:
    """The user's loop, with the four Pruner calls; returns what the run did."""
    torch.manual_seed(0)
    model = build()
    batches = make_batches()
    pruner = compressor.Pruner(model, torch.zeros(1, 1, SIZE, SIZE), method=method, target_flops=0.5, epochs=epochs,
                               steps_per_epoch=len(batches), outputs=[model.head], round_to=1,
                               train_loader=batches)  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pruner.attach(optimizer)
    criterion = nn.MSELoss()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for x, y in batches:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            pruner.after_backward(loss, batch_size=len(x))
            optimizer.step()
            pruner.after_step()
            total += float(loss)
        pruner.epoch_end(epoch)
        print(f"[{method}] epoch {epoch + 1}/{epochs}: loss {total / len(batches):.4f}, FLOPs drop {pruner.drop():.3f}")
    slim = pruner.materialize()
    path = compressor.save_pruned(slim, out / f"{method}.pt", pruner, model_spec=f"{Path(__file__).resolve()}:build")
    probe = make_batches(n=1, batch=4, seed=1)[0][0]
    model.eval()
    slim.eval()
    with torch.no_grad():
        masked, small = model(probe), slim(probe)
    return {"method": method, "file": str(path), "flops_drop": pruner.drop(),
            "masked_vs_slim": float((masked - small).abs().max()), "probe_sum": float(small.sum())}  # fmt: skip


def reload_and_export(path: str) -> dict:
    """What a deploying process does: load the file (no training code), export it, verify the export."""
    slim, payload = compressor.load_pruned(path, trust_code=True)  # the spec names this file: it runs its code
    result = compressor.export_onnx(slim, tuple(payload["input_shape"]), Path(path).with_suffix(".onnx"))
    probe = make_batches(n=1, batch=4, seed=1)[0][0]
    with torch.no_grad():
        total = float(slim.eval()(probe).sum())
    return {"onnx": str(Path(path).with_suffix(".onnx")), "verified": bool(result["verification"]["passed"]),
            "max_abs_diff": result["verification"]["max_abs_diff"], "probe_sum": total}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/custom_loop"))
    ap.add_argument("--methods", default="psap,aster")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--reload", help=argparse.SUPPRESS)  # internal: the fresh process
    args = ap.parse_args()
    if args.reload:
        print(json.dumps(reload_and_export(args.reload)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    for method in args.methods.split(","):
        run = prune_in_my_loop(method, args.out, args.epochs)
        child = subprocess.run([sys.executable, __file__, "--reload", run["file"]], capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return 1
        loaded = json.loads(child.stdout.strip().splitlines()[-1])
        same = abs(loaded["probe_sum"] - run["probe_sum"]) <= 1e-4 * max(1.0, abs(run["probe_sum"]))
        good = 0.5 <= run["flops_drop"] <= 0.51 and run["masked_vs_slim"] < 1e-4 and same and loaded["verified"]
        ok &= good
        print(json.dumps({**run, "reloaded": loaded, "reload_matches": same, "ok": good}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
