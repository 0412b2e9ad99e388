"""Pure-JAX samplers of requests and of the stationary slot state.

A sampler is a pytree (NamedTuple) of arrays describing a workload law. Two functions work on
every sampler kind:

* ``sample_requests(key, sampler, shape) -> (prompt, decode)``: fresh i.i.d. requests (int32).
* ``sample_stationary(key, sampler, shape) -> (prompt, decode, age)``: the stationary slot state
  (MODEL.md 4): a request drawn with probability proportional to D (length bias), and a uniform
  age in 0..D-1. The slot load is ``prompt + age``.

Dispatch is on the Python type of the sampler (static under ``jit``). No imports from afd_jax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr


class TableSampler(NamedTuple):
    """A finite table of request atoms (P_k, D_k) with weights.

    prompt, decode: int32[n]; cdf_request, cdf_length_biased: float32[n], the cumulative
    normalised weights w_k and w_k D_k (last entry 1). Rows with D = 0 have zero length-biased
    weight and must have zero request weight too (they never hold a slot).
    """

    prompt: jax.Array
    decode: jax.Array
    cdf_request: jax.Array
    cdf_length_biased: jax.Array


def table_sampler(prompt, decode, weight=None) -> TableSampler:
    """Build a :class:`TableSampler` (host-side, NumPy in float64, stored float32).

    Rows with decode == 0 get zero weight. ``weight`` defaults to uniform over rows.
    """
    import numpy as np

    prompt = np.asarray(prompt, dtype=np.int64)
    decode = np.asarray(decode, dtype=np.int64)
    w = np.ones(prompt.shape, np.float64) if weight is None else np.asarray(weight, np.float64)
    w = np.where(decode > 0, w, 0.0)
    keep = w > 0
    prompt, decode, w = prompt[keep], decode[keep], w[keep]
    cdf_req = np.cumsum(w) / w.sum()
    wl = w * decode
    cdf_lb = np.cumsum(wl) / wl.sum()
    cdf_req[-1] = cdf_lb[-1] = 1.0
    return TableSampler(
        jnp.asarray(prompt, jnp.int32),
        jnp.asarray(decode, jnp.int32),
        jnp.asarray(cdf_req, jnp.float32),
        jnp.asarray(cdf_lb, jnp.float32),
    )


def _pick(cdf, u):
    """Index k with cdf[k-1] <= u < cdf[k] (inverse-CDF lookup), clipped to the table."""
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(idx, cdf.shape[0] - 1)


def _uniform_age(key, decode):
    """Uniform integer in 0..decode-1 (decode >= 1), int32."""
    u = jr.uniform(key, decode.shape, dtype=jnp.float32)
    age = jnp.floor(u * decode.astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(age, 0, decode - 1)


_REQUESTS = {}
_STATIONARY_REQUESTS = {}


def register_sampler(cls, requests, length_biased_requests):
    """Register a sampler kind: ``requests(key, s, shape)`` draws fresh (P, D);
    ``length_biased_requests(key, s, shape)`` draws (P, D) with probability proportional to D."""
    _REQUESTS[cls] = requests
    _STATIONARY_REQUESTS[cls] = length_biased_requests


def _table_requests(key, s: TableSampler, shape):
    idx = _pick(s.cdf_request, jr.uniform(key, shape, dtype=jnp.float32))
    return s.prompt[idx], s.decode[idx]


def _table_lb_requests(key, s: TableSampler, shape):
    idx = _pick(s.cdf_length_biased, jr.uniform(key, shape, dtype=jnp.float32))
    return s.prompt[idx], s.decode[idx]


register_sampler(TableSampler, _table_requests, _table_lb_requests)


def sample_requests(key, sampler, shape):
    """Fresh i.i.d. requests: returns (prompt, decode), int32 arrays of ``shape``."""
    return _REQUESTS[type(sampler)](key, sampler, tuple(shape))


def sample_stationary(key, sampler, shape):
    """Stationary slot state: (prompt, decode, age) int32, age uniform in 0..decode-1 of a
    length-biased request. The load ``prompt + age`` has law pi (MODEL.md 4)."""
    k_req, k_age = jr.split(key)
    prompt, decode = _STATIONARY_REQUESTS[type(sampler)](k_req, sampler, tuple(shape))
    return prompt, decode, _uniform_age(k_age, decode)


def sample_slot_load(key, sampler, shape):
    """Draw stationary slot loads (int32) from pi."""
    prompt, _, age = sample_stationary(key, sampler, shape)
    return prompt + age
