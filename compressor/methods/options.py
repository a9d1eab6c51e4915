"""Method options: one dataclass per method, each field an option (``compressor.config.opt``).

The CLI shows them as ``--psap-<name>`` / ``--aster-<name>``, recipes and ``config.yaml`` as ``psap_<name>``,
the library as keyword arguments of ``Pruner(..., method="psap", name=value)``; the defaults are these fields'.
``None`` means "from the variant" (``VARIANTS`` in the method's module). Torch-free, like ``compressor.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from compressor.config import choice_problem, opt, option_kind, optional


class MethodOptions:
    """Shared checks: an unknown option or a value outside a field's choices is a ValueError (BadInput above)."""

    method = ""

    @classmethod
    def of(cls, options: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"{cls.method} has no option {unknown[0]!r}; its options: {', '.join(sorted(names))}")
        return cls(**options)

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value, name = getattr(self, f.name), f"{self.method} {f.name.replace('_', ' ')}"
            if value is None and not optional(f):
                raise ValueError(f"{name} must be given, not null")
            if problem := choice_problem(f, value):
                raise ValueError(f"{name} {problem}")
            if option_kind(f) == "bool" and value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")


# PSAP (docs/methods.md): the paper fixes sparsity-set ratios and gradient protection; the rest is our reading.
@dataclass
class PSAPOptions(MethodOptions):
    """PSAP's options (``--psap-*``)."""

    method = "psap"

    beta: float = opt(0.05, "PSAP sparsity: a weight is sparse when |w| <= beta * mean|W_g| (our reading).")
    sparsity: str = opt(
        "weight",
        "PSAP sparsity over weights, or over channel L2 norms (<= beta-filter * mean norm).",
        choices=("weight", "filter"),
    )
    beta_filter: float = opt(0.5, "PSAP filter-level sparsity threshold (our choice; the spec leaves it open).")
    pulse_iters: int = opt(20, "PSAP protection: iterations after a step over which gradient pulses accumulate.")
    gamma: float | None = opt(
        None,
        "PSAP protection: protect when pulse >= gamma * median pulse of kept channels (default from the variant: "
        "v2 4, chosen on validation; v1 1).",
    )
    pulse: str = opt(
        "bn",
        "PSAP pulse: gradient norm x BN input std (fair behind BN, our reading), the spec's raw gradient norm, or "
        "||grad||*||w|| (for --psap-regrow).",
        choices=("bn", "raw", "scaled"),
    )
    adaptive: bool = opt(True, "PSAP: sparsity-adaptive per-group ratios (off: uniform, as SFP).")
    protect: bool = opt(True, "PSAP: gradient-pulse protection of pruned channels.")
    restore: bool = opt(True, "PSAP: restore protected channels' weights from their snapshot.")
    zero_bn: bool = opt(
        False, "PSAP: also zero BN gamma/beta of pruned channels (the spec; freezes them: no regrowth)."
    )
    regrow: bool = opt(
        False,
        "PSAP: let pruned filters train freely between steps (SFP, the spec); default holds them at zero so they come "
        "back only through protection (measured better, see docs/methods.md).",
    )
    sparsity_scope: str | None = opt(
        None,
        "PSAP sparsity over all of a group's filters (v1) or only its kept ones (v2 default: held-zero filters "
        "otherwise make s_g echo the previous ratio).",
        choices=("all", "kept"),
    )
    variant: str = opt(
        "v2",
        "PSAP reading: v2 (BN gates, budget-neutral swaps, snapshot re-admission, early freeze, group magnitude; "
        "docs/methods.md) or v1 (the first implementation, kept for comparison).",
        choices=("v2", "v1"),
    )
    mode: str | None = opt(
        None,
        "PSAP v2: switch channels off through BN gamma/beta held at 0, filters intact (gate), or by zeroing filters "
        "(filter). Default: gate; groups without BN always use filter.",
        choices=("gate", "filter"),
    )
    protection: str | None = opt(
        None,
        "PSAP v2: a protected channel swaps with its group's weakest kept one (swap, default) or is kept on top of "
        "the budget, other groups pruning more (extra, v1).",
        choices=("swap", "extra"),
    )
    readmit: str | None = opt(
        None,
        "PSAP v2: score switched-off channels on their snapshot and restore it when they come back (snapshot, "
        "default), or on their held values (norm, v1).",
        choices=("snapshot", "norm"),
    )
    score: str | None = opt(
        None,
        "PSAP v2 channel selection: Torch-Pruning's group L1 magnitude (default), out-filter L2 (v1) or the BN-gate "
        "Taylor score.",
        choices=("magnitude", "l2", "taylor"),
    )
    freeze_at: float | None = opt(
        None,
        "PSAP v2: fraction of the epochs after which the mask is frozen (default 0.4; the ramp ends there and the "
        "rest trains the final structure).",
    )
    steps_per_epoch: int | None = opt(None, "PSAP v2: pruning steps per epoch until the freeze (default 2).")
    protect_steps: int | None = opt(
        None,
        "PSAP v2: a protected channel stays kept for this many steps (default 2; 1: the v1 churn, where it could be "
        "pruned again at the very next step).",
    )
    bn_batches: int = opt(20, "PSAP: training batches used to re-estimate BN statistics after each step (0: off).")


# ASTER (docs/methods.md): a global BN-|gamma| threshold adapted from the loss sensitivity.
@dataclass
class ASTEROptions(MethodOptions):
    """ASTER's options (``--aster-*``)."""

    method = "aster"

    sensitivity: str = opt(
        "lbfgs",
        "ASTER: direction d = -H g with H the L-BFGS inverse Hessian over BN gamma (no extra pass), or H = I.",
        choices=("lbfgs", "gradient"),
    )
    tau0: float = opt(0.0001, "ASTER: initial threshold.")
    x: float = opt(0.01, "ASTER: loss change rate x in tau += lr0 * x * L / (B * S).")
    reduce: str = opt(
        "max",
        "ASTER: a channel's score over its coupled BNs (max: pruned only when every BN agrees; min: when any does).",
        choices=("max", "mean", "min"),
    )
    history: int = opt(10, "ASTER: L-BFGS pairs kept.")
    update_every: int = opt(1, "ASTER: adapt tau in every Nth epoch.")
    search_epochs: int | None = opt(
        None, "ASTER: epochs to reach the target by adaptation before the fallback sets tau (default: half the epochs)."
    )
    loss: str = opt(
        "sum",
        "ASTER: L in the tau update is the batch's summed loss (our reading) or its mean.",
        choices=("sum", "mean"),
    )
    eps: float = opt(1e-12, "ASTER: tau moves only when the sensitivity S exceeds this.")
    variant: str = opt(
        "v2",
        "ASTER reading: v2 (prune exactly score < tau while searching, once an epoch, BN re-estimation, rounding "
        "at the freeze, eta0 0.1; docs/methods.md) or v1 (the first implementation).",
        choices=("v2", "v1"),
    )
    search: str | None = opt(
        None,
        "ASTER: while searching prune exactly score < tau (exact, v2) or round kept counts up to --round-to (rounded, "
        "v1).",
        choices=("exact", "rounded"),
    )
    eta: str | None = opt(
        None,
        "ASTER: eta0 in the tau update is --aster-eta0 (fixed, v2) or the phase's LR (lr, v1).",
        choices=("fixed", "lr"),
    )
    eta0: float = opt(0.1, "ASTER: eta0 with --aster-eta fixed (the authors' value).")
    prunes_per_epoch: int | None = opt(
        None,
        "ASTER: prune score < tau this many times an epoch while searching (v2 and v1: 1; 4 was measured, "
        "docs/methods.md).",
    )
    normalize: bool = opt(False, "ASTER: score each BN's |gamma| relative to that BN's mean (per-BN allocation).")
    curvature: str | None = opt(
        None,
        "ASTER L-BFGS pairs: consecutive training iterates (no extra pass) or one fixed batch's gradient every "
        "--aster-curvature-every steps (one extra pass each).",
        choices=("consecutive", "same-batch"),
    )
    curvature_every: int = opt(20, "ASTER: steps between same-batch curvature pairs.")


#: method name -> its options dataclass; their fields join the prune config as ``<method>_<field>``.
METHOD_OPTIONS: dict[str, type[MethodOptions]] = {"psap": PSAPOptions, "aster": ASTEROptions}
