"""JAX sampler of parametric workloads: a mixture of Gaussian-copula components.

Each component k has integer marginals for P and D and a latent normal correlation ``rho_k``.
A fresh request, from three Threefry blocks (two for a single component; :func:`copula_blocks`):

    k   ~ Categorical(w)                                   (mixture weight; mixtures only)
    D   ~ pmf_D (Walker alias table of the atoms' indices)
    U_D ~ Uniform[F_D(D-), F_D(D))                         (the latent uniform given D)
    Z_1 = ndtri(U_D);      Z_2 = rho_k Z_1 + sqrt(1 - rho_k^2) eps,   eps ~ N(0, 1)
    P   = F_P^-1(Phi(Z_2))                                 (inverse-CDF binary search)

which is the copula's law (U_D uniform on [0, 1) and D = F_D^-1(U_D), drawn in the other
order). A length-biased request (probability proportional to D, docs/model.md 4) is the same
with k ~ w_k E_k[D] and D ~ d pmf(d) / E_k[D] (a second alias table).

Tables (built on the host by ``afd_jax.montecarlo.samplers.make_sampler``): alias tables from
the float64 pmfs (acceptance rounded to 2^-24); CDFs float32 with the last real entry exactly
1 and padding 2.0 (never selected); values int32 padded with the row's last value. Float32
CDFs drop atoms of mass below ~6e-8 near the top of the CDF (error of that order in any
probability). Uniforms are on the 2^-24 grid; the latent uniform is clipped to [2^-25,
1 - 2^-24] before ``ndtri``, and eps is ``ndtri`` of a grid uniform plus 2^-25 clipped the
same way (|eps| <= 5.5: a normal tail of about 1e-7 left out). Nothing here imports afd_jax.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from .alias import pick_component, unit24, value_alias_pick

__all__ = ["CopulaSampler", "copula_blocks", "copula_from_words"]


class CopulaSampler(NamedTuple):
    """Mixture of K Gaussian-copula components (a pytree; every field is traced).

    comp_cdf, comp_cdf_lb: float32[K] cumulative mixture weights w_k and w_k E_k[D];
    rho: float32[K] latent normal correlation; prompt_values: int32[K, NP], prompt_cdf:
    float32[K, NP]; decode_values: int32[K, ND], decode_cdf, decode_cdf_lb: float32[K, ND]
    (F_D and the length-biased CDF sum_{d' <= d} d' pmf(d') / E[D]); decode_alias,
    decode_lb_alias: int32[K, NA, 4], alias tables of the atoms' indices 0..ND-1 under pmf_D
    and under d pmf_D(d) / E[D] (``kernels.alias.value_alias_rows``), or NA = 0 (more decode
    atoms than the builder tabulates: D is then found by a binary search of the CDFs with a
    24-bit uniform).
    """

    comp_cdf: jax.Array
    comp_cdf_lb: jax.Array
    rho: jax.Array
    prompt_values: jax.Array
    prompt_cdf: jax.Array
    decode_values: jax.Array
    decode_cdf: jax.Array
    decode_cdf_lb: jax.Array
    decode_alias: jax.Array
    decode_lb_alias: jax.Array


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


def copula_blocks(s: CopulaSampler) -> int:
    """Threefry blocks per request: D's alias pair, (latent uniform, eps), and a word for the
    component when there are several (static)."""
    return 2 if s.comp_cdf.shape[0] == 1 else 3


def copula_from_words(s: CopulaSampler, words, length_biased: bool = False):
    """(prompt, decode) int32 from :func:`copula_blocks` pairs of uint32 words per request
    (``words[j] = (w0, w1)``), as the module docstring says. ``length_biased`` (static)."""
    (a0, a1), (b0, b1) = words[0], words[1]
    word = words[2][0] if len(words) > 2 else None
    comp = pick_component(s.comp_cdf_lb if length_biased else s.comp_cdf, word, a0.shape)
    if s.decode_alias.shape[1]:
        j = value_alias_pick(s.decode_lb_alias if length_biased else s.decode_alias, a0, a1, comp)
    else:  # no alias tables: the inverse CDF
        j = _row_search(s.decode_cdf_lb if length_biased else s.decode_cdf, comp, unit24(a0))
    decode = s.decode_values[comp, j]
    hi = s.decode_cdf[comp, j]
    lo = jnp.where(j > 0, s.decode_cdf[comp, jnp.maximum(j - 1, 0)], jnp.float32(0.0))
    z1 = ndtri(jnp.clip(lo + (hi - lo) * unit24(b0), 2.0**-25, 1.0 - 2.0**-24))
    # the grid's midpoints, clipped as the latent is: u + 2^-25 rounds to 1.0 at the top word
    eps = ndtri(jnp.clip(unit24(b1) + jnp.float32(2.0**-25), 2.0**-25, 1.0 - 2.0**-24))
    rho = s.rho[comp]
    z2 = rho * z1 + jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) * eps
    j_p = _row_search(s.prompt_cdf, comp, ndtr(z2))
    return s.prompt_values[comp, j_p], decode
