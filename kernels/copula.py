"""JAX sampler of parametric workloads: a mixture of Gaussian-copula components.

Each component k has integer marginals for P and D stored as padded inverse-CDF tables and a
latent normal correlation ``rho_k``. A fresh request:

    k   ~ Categorical(w)                                   (mixture weight)
    U_D ~ Uniform[0, 1);   D = F_D^-1(U_D)                 (inverse-CDF lookup)
    Z_1 = ndtri(U_D);      Z_2 = rho_k Z_1 + sqrt(1 - rho_k^2) eps,   eps ~ N(0, 1)
    P   = F_P^-1(Phi(Z_2))

A length-biased request (probability proportional to D, docs/model.md 4), drawn exactly:

    k ~ w_k E_k[D];   D = d with probability d pmf(d) / E_k[D];
    U_D ~ Uniform[F_D(d-), F_D(d))   (the latent uniform given D = d)
    then Z_1, Z_2, P as above.

Tables (built on the host by ``afd_jax.montecarlo.samplers.make_sampler``): CDFs float32 with the
last real
entry exactly 1 and padding 2.0 (never selected); values int32 padded with the row's last value.
Float32 CDFs drop atoms of mass below ~6e-8 near the top of the CDF (error of that order in any
probability). Uniforms are clipped to [2^-25, 1 - 2^-24] before ``ndtri`` (finite latents).
Nothing here imports afd_jax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import ndtr, ndtri

__all__ = ["CopulaSampler", "copula_length_biased_requests", "copula_requests"]


class CopulaSampler(NamedTuple):
    """Mixture of K Gaussian-copula components (a pytree; every field is traced).

    comp_cdf, comp_cdf_lb: float32[K] cumulative mixture weights w_k and w_k E_k[D];
    rho: float32[K] latent normal correlation; prompt_values: int32[K, NP], prompt_cdf:
    float32[K, NP]; decode_values: int32[K, ND], decode_cdf, decode_cdf_lb: float32[K, ND]
    (F_D and the length-biased CDF sum_{d' <= d} d' pmf(d') / E[D]).
    """

    comp_cdf: jax.Array
    comp_cdf_lb: jax.Array
    rho: jax.Array
    prompt_values: jax.Array
    prompt_cdf: jax.Array
    decode_values: jax.Array
    decode_cdf: jax.Array
    decode_cdf_lb: jax.Array


def _row_search(table, row, u):
    """Number of entries of ``table[row]`` that are <= u (binary search with gathers, so each
    sample may use its own row), clipped to the last column. table: float32[K, N];
    row: int32[...]; u: float32[...] -> int32[...]."""
    n = table.shape[1]
    flat = table.reshape(-1)
    base = row.astype(jnp.int32) * jnp.int32(n)

    def body(_, carry):
        lo, hi = carry
        active = lo < hi
        mid = (lo + hi) // 2
        le = flat[base + jnp.minimum(mid, n - 1)] <= u
        return jnp.where(active & le, mid + 1, lo), jnp.where(active & ~le, mid, hi)

    lo = jnp.zeros(u.shape, jnp.int32)
    hi = jnp.full(u.shape, n, jnp.int32)
    lo, _ = jax.lax.fori_loop(0, max(1, int(n).bit_length()), body, (lo, hi))
    return jnp.minimum(lo, n - 1)


def _pick_component(cdf, u):
    idx = jnp.searchsorted(cdf, u, side="right").astype(jnp.int32)
    return jnp.minimum(idx, cdf.shape[0] - 1)


def _prompt_given_latent(key, s: CopulaSampler, comp, z1):
    rho = s.rho[comp]
    eps = jr.normal(key, z1.shape, dtype=jnp.float32)
    z2 = rho * z1 + jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) * eps
    j = _row_search(s.prompt_cdf, comp, ndtr(z2))
    return s.prompt_values[comp, j]


def _latent(u):
    return ndtri(jnp.clip(u, 2.0**-25, 1.0 - 2.0**-24))


def copula_requests(key, s: CopulaSampler, shape):
    """Fresh i.i.d. requests (prompt, decode), int32 arrays of ``shape``."""
    k_c, k_d, k_p = jr.split(key, 3)
    comp = _pick_component(s.comp_cdf, jr.uniform(k_c, shape, dtype=jnp.float32))
    u_d = jr.uniform(k_d, shape, dtype=jnp.float32)
    decode = s.decode_values[comp, _row_search(s.decode_cdf, comp, u_d)]
    prompt = _prompt_given_latent(k_p, s, comp, _latent(u_d))
    return prompt, decode


def copula_length_biased_requests(key, s: CopulaSampler, shape):
    """Requests drawn with probability proportional to D (exact, see the module docstring):
    (prompt, decode) int32 arrays of ``shape``."""
    k_c, k_d, k_u, k_p = jr.split(key, 4)
    comp = _pick_component(s.comp_cdf_lb, jr.uniform(k_c, shape, dtype=jnp.float32))
    j = _row_search(s.decode_cdf_lb, comp, jr.uniform(k_d, shape, dtype=jnp.float32))
    decode = s.decode_values[comp, j]
    hi = s.decode_cdf[comp, j]
    lo = jnp.where(j > 0, s.decode_cdf[comp, jnp.maximum(j - 1, 0)], jnp.float32(0.0))
    u_d = lo + (hi - lo) * jr.uniform(k_u, shape, dtype=jnp.float32)
    prompt = _prompt_given_latent(k_p, s, comp, _latent(u_d))
    return prompt, decode
