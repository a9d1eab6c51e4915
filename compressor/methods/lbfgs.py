"""The L-BFGS two-loop recursion (Nocedal & Wright, Algorithm 7.4) over a flat parameter vector.

Pairs come from consecutive iterates the caller observes anyway (ASTER: BN gamma and its gradient at each
training step), so the inverse-Hessian estimate costs no extra forward/backward pass.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

CURVATURE_MIN = 1e-10  # pairs with s.y at or below this are skipped (no positive curvature)


class TwoLoop:
    """Keeps the last ``history`` curvature pairs ``(s, y)`` and applies the implicit inverse Hessian to a vector."""

    def __init__(self, history: int = 10) -> None:
        if history < 1:
            raise ValueError(f"L-BFGS history must be >= 1, got {history}")
        self.history = history
        self.pairs: deque[tuple[torch.Tensor, torch.Tensor, float]] = deque(maxlen=history)
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None
        self.skipped = 0

    def observe(self, x: torch.Tensor, g: torch.Tensor) -> bool:
        """Record iterate ``x`` with gradient ``g``; add the pair from the previous iterate. True if added."""
        x, g = x.detach().double().flatten().clone(), g.detach().double().flatten().clone()
        added = False
        if self.prev is not None:
            s, y = x - self.prev[0], g - self.prev[1]
            sy = float(s @ y)
            if sy > CURVATURE_MIN and torch.isfinite(s).all() and torch.isfinite(y).all():
                self.pairs.append((s, y, 1.0 / sy))
                added = True
            else:
                self.skipped += 1
        self.prev = (x, g)
        return added

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        """``H g`` with H the L-BFGS inverse-Hessian estimate (H0 = s.y / y.y of the newest pair, I without pairs)."""
        q = g.detach().double().flatten().clone()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * float(s @ q)
            q -= a * y
            alphas.append(a)
        if self.pairs:
            s, y, _ = self.pairs[-1]
            q *= float(s @ y) / float(y @ y)
        for (s, y, rho), a in zip(self.pairs, reversed(alphas), strict=True):
            b = rho * float(y @ q)
            q += (a - b) * s
        return q

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """The quasi-Newton descent direction ``-H g``."""
        return -self.apply(g)

    def reset(self) -> None:
        self.pairs.clear()
        self.prev = None

    def state_dict(self) -> dict[str, Any]:
        return {"pairs": [(s, y, rho) for s, y, rho in self.pairs], "prev": self.prev, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairs = deque(((s, y, float(r)) for s, y, r in state["pairs"]), maxlen=self.history)
        self.prev = None if state["prev"] is None else tuple(state["prev"])  # type: ignore[assignment]
        self.skipped = int(state["skipped"])
