"""Step-time arithmetic shared by the Monte Carlo kernels (docs/model.md 2, 3).

The driver precomputes the non-Attention stage time G(r) per r (with ``afd_jax.model.latency``);
the kernels only need the Attention coefficients to turn worker loads into tau. No imports from
afd_jax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AttnGrid(NamedTuple):
    """A non-affine Attention time sampled by the driver on the uniform load grid
    ``start + k / inv_width`` (k < n): scalars ``start``, ``inv_width`` and ``values`` [n], all
    of one float dtype (float32, or float64 when the driver asks); read back linearly between
    grid points (exact at the points)."""

    start: jax.Array
    inv_width: jax.Array
    values: jax.Array


class StepModel(NamedTuple):
    """alpha_attn, beta_attn: scalars. other: [r_max], the non-Attention stage time G(r) for
    r = 1..r_max (max(t_C, t_F) when pipelined, t_C + t_F when serial). t_ffn: [r_max], the
    FFN time t_F(r). Every array has the one float dtype of the run (float32 by default,
    float64 on request); the summaries take their dtype from ``other``. attn_grid: None for
    the affine Attention time ``alpha_attn T + beta_attn``, else an :class:`AttnGrid` (a
    measured table; the coefficients are then unused)."""

    alpha_attn: jax.Array
    beta_attn: jax.Array
    other: jax.Array
    t_ffn: jax.Array
    attn_grid: AttnGrid | None = None


def grid_times(grid: AttnGrid, x):
    """A stage time sampled on a uniform grid (:class:`AttnGrid`), read linearly at ``x`` (the
    grid's dtype; clamped to the grid, which the driver makes cover every possible x)."""
    n = grid.values.shape[0]
    u = (x - grid.start) * grid.inv_width
    k = jnp.clip(jnp.floor(u), 0, n - 2)
    frac = u - k
    k = k.astype(jnp.int32)
    lo, hi = grid.values[k], grid.values[k + 1]
    return lo + frac * (hi - lo)


def attn_times(model: StepModel, loads):
    """Attention time of worker loads (in the model's float dtype): affine, or the grid read
    linearly (:func:`grid_times`)."""
    grid = model.attn_grid
    if grid is None:
        return model.alpha_attn * loads + model.beta_attn
    return grid_times(grid, loads)


def step_times(max_attn_time, other, serial: bool):
    """tau from the barrier Attention time and the other stages (broadcasting):
    ``max(max_attn, G)`` (pipelined) or ``max_attn + G`` (serial), docs/model.md 2."""
    return max_attn_time + other if serial else jnp.maximum(max_attn_time, other)


def kahan_add(total, comp, x):
    """One step of a compensated (Kahan) sum: returns the new (total, compensation). A float32
    running sum in a loop carry drifts over 10^4+ steps; this one does not."""
    y = x - comp
    t = total + y
    return t, (t - total) - y


__all__ = ["AttnGrid", "StepModel", "attn_times", "grid_times", "kahan_add", "step_times"]
