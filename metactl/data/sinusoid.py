"""``sinusoid``: the regression family of Finn et al. 2017 (MAML), Sec. 5.1.

A task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5], phase phi ~ U[0, pi], inputs x ~ U[-5, 5];
K support points and Q query points per task, loss = mean squared error.
"""

from __future__ import annotations

import numpy as np

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, np.pi)
X_RANGE = (-5.0, 5.0)


def sample_tasks(rng: np.random.Generator, tasks: int, shots: int, queries: int) -> tuple[np.ndarray, ...]:
    """Return xs (B, K, 1), ys (B, K, 1), xq (B, Q, 1), yq (B, Q, 1) as float32."""
    amp = rng.uniform(*AMPLITUDE, size=(tasks, 1, 1))
    phase = rng.uniform(*PHASE, size=(tasks, 1, 1))
    x = rng.uniform(*X_RANGE, size=(tasks, shots + queries, 1))
    y = amp * np.sin(x - phase)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]
