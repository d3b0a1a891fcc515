"""Second-order optimizers on the allreduced objective: Newton (IRLS) and L-BFGS.

Both are full batch: each evaluation is one pass over every worker's shard plus one allreduce,
and every worker runs the same arithmetic on the same totals, so all workers hold the same
parameters for any worker count. A step is accepted by backtracking (Armijo) on the allreduced
loss; the evaluation that accepts a step is reused as the next iteration's starting point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ray_pipeline.train.objective import Evaluation, Objective

ARMIJO = 1e-4
MAX_HALVINGS = 30


@dataclass
class Memory:
    """L-BFGS curvature pairs (s, y), oldest first; saved in checkpoints so a resumed run continues
    exactly where it stopped."""

    size: int
    s: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)

    def push(self, s: np.ndarray, y: np.ndarray) -> None:
        """Keep the pair if it has positive curvature (else the inverse-Hessian estimate breaks)."""
        if float(s @ y) > 1e-12 * float(s @ s):
            self.s.append(s)
            self.y.append(y)
            del self.s[: -self.size], self.y[: -self.size]

    def direction(self, grad: np.ndarray) -> np.ndarray:
        """-H^-1 grad by the two-loop recursion."""
        q = grad.copy()
        alphas = []
        for s, y in zip(reversed(self.s), reversed(self.y)):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q -= a * y
        if self.s:
            q *= float(self.s[-1] @ self.y[-1]) / float(self.y[-1] @ self.y[-1])
        for (s, y), a in zip(zip(self.s, self.y), reversed(alphas)):
            q += (a - float(y @ q) / float(y @ s)) * s
        return -q


def line_search(f: Objective, at: Evaluation, direction: np.ndarray, hessian: bool, first_step: float = 1.0) -> Evaluation | None:
    """Backtrack from `first_step` until the loss drops enough; None when no step along
    `direction` lowers it (converged to the precision the arithmetic allows)."""
    slope = float(at.grad @ direction)
    if slope >= 0:
        return None
    t = first_step
    for _ in range(MAX_HALVINGS):
        candidate = f(at.params + t * direction, hessian)
        if candidate.loss <= at.loss + ARMIJO * t * slope:
            return candidate
        t *= 0.5
    return None


def newton_step(f: Objective, at: Evaluation) -> Evaluation | None:
    """One damped Newton (IRLS) step: the least-squares solution of H d = -g, then backtrack."""
    # Softmax is unchanged when the same constant is added to every class's bias (or weight of an
    # input), so the multiclass Hessian is singular along those directions: a least-squares
    # solution, not a solve. Rounding can still move along them; logreg centres the result.
    direction = -np.linalg.lstsq(at.hess, at.grad, rcond=None)[0]
    return line_search(f, at, direction, hessian=True)


def lbfgs_step(f: Objective, at: Evaluation, memory: Memory) -> Evaluation | None:
    """One L-BFGS step from `at`, updating `memory` with the accepted pair."""
    direction = memory.direction(at.grad)
    # With no curvature pairs yet, scale the first step to unit length, as scipy does.
    first = 1.0 if memory.s else 1.0 / max(float(np.linalg.norm(at.grad)), 1e-12)
    nxt = line_search(f, at, direction, hessian=False, first_step=min(first, 1.0))
    if nxt is not None:
        memory.push(nxt.params - at.params, nxt.grad - at.grad)
    return nxt


def converged(at: Evaluation, previous: Evaluation | None, gtol: float) -> bool:
    """Gradient small enough, or the last step no longer changed the loss (float precision)."""
    if float(np.max(np.abs(at.grad))) <= gtol:
        return True
    return previous is not None and previous.loss - at.loss <= 1e-14 * max(1.0, abs(at.loss))
