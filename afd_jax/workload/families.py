"""Parametric workload families with exact moments (docs/model.md 4).

Marginals (laws of P or D on non-negative integers) are
:class:`~afd_jax.workload.containers.Marginal`
objects: sorted unique int64 ``values`` and a float64 ``pmf``. Infinite supports are truncated
at the first point where the remaining tail mass is below ``TAIL = 1e-15`` and renormalised (the
change of theta is then ~1e-15 * support^2 / E[D]: 2e-10 for the paper-v1 geometric).

Marginal constructors::

    deterministic(n)                       P(X = n) = 1
    geometric(mean, min=1)                 P(X = k) = p (1-p)^(k-min), k >= min, p = 1/(mean-min+1)
    uniform(lo, hi)                        uniform on {lo, ..., hi}
    lognormal(sigma, median=|mean=, lo=0, hi=None, step=1)
                                           X = step * round(Y / step), Y ~ LogNormal(mu, sigma),
                                           conditioned on lo <= X <= hi (truncation)
    zipf(exponent, hi, lo=1)               P(X = k) proportional to k^-exponent on {lo, ..., hi}

Workload constructors return :class:`~afd_jax.workload.containers.ParametricWorkload`::

    independent(prompt, decode)            P and D independent
    copula(prompt, decode, rank_corr)      Gaussian copula, rank_corr = Spearman rho_s of the
                                           latent copula, rho_gauss = 2 sin(pi rho_s / 6)
    mixture([(weight, workload_or_component), ...])

:func:`parametric_stats` gives theta, v and friends exactly: closed form products of marginal
moments for independent components; for a copula component the conditional law of P given D = d
is integrated exactly over the latent interval of D (see :func:`copula_conditional_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

from afd_jax.errors import InputError
from afd_jax.workload.containers import CopulaComponent, Marginal, ParametricWorkload, WorkloadStats
from afd_jax.workload.numbers import TOKEN_LIMIT

TAIL = 1e-15  # truncation threshold for infinite supports (tail mass left out, < 1e-12)
_ZERO_Z = 9.0  # ndtr(z) == 1.0 exactly in float64 from z ~ 8.3 on
MAX_SUPPORT = 1 << 24  # refuse marginals with more atoms than this (memory)
MAX_VALUE = TOKEN_LIMIT - 1  # largest token count a parameter may name (int64 sums stay exact)
Z_MAX = 8.5  # latent normal range used by the copula quadrature (mass outside: 2e-17)

__all__ = [
    "copula",
    "conditional_factors",
    "copula_conditional_rows",
    "deterministic",
    "gaussian_corr",
    "geometric",
    "independent",
    "lognormal",
    "mixture",
    "parametric_stats",
    "raw_moments",
    "uniform",
    "zipf",
]


# ----------------------------------------------------------------------------- marginals
def _marginal(values, pmf) -> Marginal:
    values = np.asarray(values, dtype=np.int64)
    pmf = np.asarray(pmf, dtype=np.float64)
    keep = pmf > 0
    values, pmf = values[keep], pmf[keep]
    if values.size == 0:
        raise InputError("marginal has no mass")
    _check_support(values.size)
    order = np.argsort(values, kind="stable")
    return Marginal(values[order], pmf[order] / pmf.sum())


def _check_support(points: float, field: str | None = None, why: str = "") -> None:
    """InputError when a marginal would have more than MAX_SUPPORT atoms: called with the
    size predicted from the parameters BEFORE any array is built."""
    if points > MAX_SUPPORT:
        shown = f"{points:.4g}" if isinstance(points, float) else str(points)
        raise InputError(
            f"marginal support too large ({shown} points > {MAX_SUPPORT}){why}", field=field
        )


def _check_count(name, value, lo=0):
    """An integer token count in [lo, MAX_VALUE] (a point, a bound, a lattice step)."""
    _check(name, value, lo=lo, hi=MAX_VALUE, integer=True)


def _check(name, value, lo=None, hi=None, integer=False):
    exact = isinstance(value, int | np.integer)  # any size: math.isfinite would overflow
    if not (exact or isinstance(value, float | np.floating)) or not (exact or math.isfinite(value)):
        raise InputError(f"must be a finite number, got {value!r}", field=name)
    if lo is not None and value < lo:
        raise InputError(f"must be >= {lo}, got {value!r}", field=name)
    if hi is not None and value > hi:
        raise InputError(f"must be <= {hi}, got {value!r}", field=name)
    if integer and not exact and float(value) != int(value):
        raise InputError(f"must be an integer, got {value!r}", field=name)


def deterministic(n: int) -> Marginal:
    """Point mass at the integer ``n >= 0``."""
    _check_count("value", n)
    return Marginal(np.array([int(n)], np.int64), np.array([1.0]))


def geometric(mean: float, min: int = 1) -> Marginal:  # noqa: A002 - the natural name
    """Geometric law on {min, min+1, ...} with the given mean.

    ``P(X = k) = p (1-p)^(k-min)``, ``p = 1 / (mean - min + 1)``. ``min = 1`` is the decode law
    (number of trials), ``min = 0`` the prompt law (failures before a success). Truncated at
    tail mass < 1e-15 and renormalised; a mean within 1e-12 of ``min`` gives a point mass (the
    rest of the law weighs less than that; closer, p rounds to 1 in float64).
    """
    _check_count("min", min)
    _check("mean", mean, lo=min, hi=MAX_VALUE)
    if mean - min < 1e-12:
        return deterministic(min)
    p = 1.0 / (mean - min + 1.0)
    # tail beyond k: (1-p)^(k-min+1) < TAIL
    n_f = math.ceil(math.log(TAIL) / math.log1p(-p))
    _check_support(n_f, "mean", f" for mean {mean:g} (tail mass {TAIL:g})")
    n = int(n_f)
    k = np.arange(n, dtype=np.int64)
    pmf = p * np.exp(k * math.log1p(-p))
    return _marginal(k + int(min), pmf)


def uniform(lo: int, hi: int) -> Marginal:
    """Uniform law on the integers {lo, ..., hi} (0 <= lo <= hi)."""
    _check_count("lo", lo)
    _check_count("hi", hi, lo=lo)
    _check_support(int(hi) - int(lo) + 1, "hi")
    k = np.arange(int(lo), int(hi) + 1, dtype=np.int64)
    return _marginal(k, np.ones(k.shape))


def lognormal(
    sigma: float,
    median: float | None = None,
    mean: float | None = None,
    lo: int = 0,
    hi: int | None = None,
    step: int = 1,
) -> Marginal:
    """Discretised, optionally truncated log-normal law.

    Y ~ LogNormal(mu, sigma) with ``mu = log(median)`` or ``mu = log(mean) - sigma^2/2`` (mean of
    the continuous Y); X = step * round(Y / step), i.e.
    ``P(X = k) = Phi((log(k + step/2) - mu)/sigma) - Phi((log(k - step/2) - mu)/sigma)`` on the
    lattice k = 0, step, 2 step, ...; then conditioned on ``lo <= X <= hi`` (truncation,
    renormalised). ``hi = None`` cuts where the upper tail mass is below 1e-15. ``step > 1``
    puts the law on a coarser lattice (for prompts of 10^5 tokens: fewer atoms, faster exact
    statistics; the law of P is then supported on multiples of ``step``).
    """
    _check("sigma", sigma, lo=1e-6)
    _check_count("step", step, lo=1)
    _check_count("lo", lo)
    if (median is None) == (mean is None):
        raise InputError("give exactly one of median and mean", field="median")
    if median is not None:
        _check("median", median, lo=1e-9)
        mu = math.log(median)
    else:
        _check("mean", mean, lo=1e-9)
        mu = math.log(mean) - 0.5 * sigma * sigma
        if not math.isfinite(mu):
            raise InputError(f"sigma {sigma:g} too large for a given mean", field="sigma")
    step = int(step)
    if hi is None:
        # log of the upper (1 - TAIL)-quantile, compared in log space (exp would overflow)
        log_hi = mu + sigma * float(ndtri(1.0 - TAIL))
        if log_hi > math.log(MAX_SUPPORT * step):
            raise InputError(
                f"untruncated support too large (upper quantile ~ e^{log_hi:.4g} > "
                f"{MAX_SUPPORT} * step): give an upper bound (hi / *_max)",
                field="hi",
            )
        hi = int(math.exp(log_hi) + step)
    elif mu + _ZERO_Z * sigma < math.log(max(hi, 1)):
        # beyond e^(mu + 9 sigma) both CDF values are exactly 1.0 in float64: zero mass there,
        # dropped by _marginal anyway; a cap far out (prompt_max=20000000) costs nothing
        hi = max(int(lo), int(math.exp(mu + _ZERO_Z * sigma)) + step)
    _check_count("hi", hi, lo=lo)
    first = -(-int(lo) // step) * step
    _check_support((int(hi) - first) // step + 1, "hi")
    k = np.arange(first, int(hi) + 1, step, dtype=np.int64)
    if k.size == 0:
        raise InputError(f"no lattice point of step {step} in [{lo}, {hi}]", field="hi")
    kf = k.astype(np.float64)
    with np.errstate(divide="ignore"):
        upper = ndtr((np.log(kf + 0.5 * step) - mu) / sigma)
        lower = ndtr((np.log(np.maximum(kf - 0.5 * step, 0.0)) - mu) / sigma)
    pmf = upper - lower
    if not np.any(pmf > 0):
        raise InputError(f"no mass in [{lo}, {hi}] for this log-normal", field="hi")
    return _marginal(k, pmf)


def zipf(exponent: float, hi: int, lo: int = 1) -> Marginal:
    """Power law ``P(X = k) proportional to k^-exponent`` on {lo, ..., hi}, lo >= 1."""
    _check("exponent", exponent, lo=0.0)
    _check_count("lo", lo, lo=1)
    _check_count("hi", hi, lo=lo)
    _check_support(int(hi) - int(lo) + 1, "hi")
    k = np.arange(int(lo), int(hi) + 1, dtype=np.int64)
    logp = -float(exponent) * np.log(k.astype(np.float64))
    return _marginal(k, np.exp(logp - logp.max()))


# ----------------------------------------------------------------------------- workloads
def _check_decode(decode: Marginal):
    if decode.values[0] < 1:
        raise InputError("decode steps must be >= 1 (use min=1 / lo=1)", field="decode")


def _check_prompt(prompt: Marginal):
    if prompt.values[0] < 0:
        raise InputError("prompt lengths must be >= 0", field="prompt")


def gaussian_corr(rank_corr: float) -> float:
    """Pearson correlation of the latent normals with Spearman correlation ``rank_corr``:
    ``rho = 2 sin(pi rank_corr / 6)``."""
    return 2.0 * math.sin(math.pi * float(rank_corr) / 6.0)


def copula(
    prompt: Marginal, decode: Marginal, rank_corr: float, name: str = "copula", label: str = ""
) -> ParametricWorkload:
    """P and D tied by a Gaussian copula whose rank (Spearman) correlation is ``rank_corr``.

    Latent (Z_D, Z_P) standard normals with correlation ``rho = 2 sin(pi rank_corr/6)``;
    ``D = F_D^-1(Phi(Z_D))``, ``P = F_P^-1(Phi(Z_P))``.
    """
    _check("corr", rank_corr, lo=-0.999, hi=0.999)
    _check_prompt(prompt)
    _check_decode(decode)
    comp = CopulaComponent(prompt, decode, float(rank_corr))
    return ParametricWorkload(name, (comp,), np.array([1.0]), label=label)


def independent(
    prompt: Marginal, decode: Marginal, name: str = "independent", label: str = ""
) -> ParametricWorkload:
    """P and D independent."""
    return copula(prompt, decode, 0.0, name=name, label=label)


def mixture(
    parts: Sequence[tuple[float, ParametricWorkload | CopulaComponent]],
    name: str = "mixture",
    label: str = "",
) -> ParametricWorkload:
    """Finite mixture: a request comes from part k with probability weight_k / sum(weights).

    A part may itself be a mixture (its components are flattened with product weights)."""
    comps, weights = [], []
    if not parts:
        raise InputError("empty mixture", field="mixture")
    for wk, part in parts:
        _check("weight", wk, lo=0.0)
        if isinstance(part, CopulaComponent):
            comps.append(part)
            weights.append(float(wk))
        elif isinstance(part, ParametricWorkload):
            comps.extend(part.components)
            weights.extend(float(wk) * np.asarray(part.weights, np.float64))
        else:
            raise InputError(f"not a parametric workload: {part!r}", field="mixture")
    weights = np.asarray(weights, np.float64)
    if not weights.sum() > 0:
        raise InputError("mixture weights must not all be zero", field="weight")
    keep = weights > 0
    comps = tuple(c for c, k in zip(comps, keep, strict=True) if k)
    return ParametricWorkload(name, comps, weights[keep] / weights[keep].sum(), label=label)


# ----------------------------------------------------------------------------- copula quadrature
_GL = {q: np.polynomial.legendre.leggauss(q) for q in (2, 3, 6)}


def _latent_nodes(decode: Marginal, rho: float):
    """Quadrature nodes for the latent Z_D over each decode atom's interval.

    Atom d_j owns the latent interval ``[ndtri(F_D(d_{j-1})), ndtri(F_D(d_j)))`` (clipped to
    [-Z_MAX, Z_MAX]); U_D = Phi(Z_D) is uniform on [F_D(d_{j-1}), F_D(d_j)). Each interval is cut
    into panels whose effective width ``w * max(1, |z|, |rho|/sqrt(1-rho^2))`` (the scale on which
    the integrand ``Phi((a - rho z)/s) phi(z)`` varies) is <= 0.3, with 2, 3 or 6
    Gauss-Legendre nodes per panel (2 for effective width < 0.02, 3 below 0.1): the relative
    quadrature error is below ~1e-11. Returns (z, weight, owner): float64 nodes, weights
    normalised to sum 1 within each atom, and the atom index of each node (sorted).
    """
    s = math.sqrt(1.0 - rho * rho)
    cdf = np.minimum(np.cumsum(decode.pmf), 1.0)  # rounding: an interior cdf may exceed 1
    cdf[-1] = 1.0
    lo_u = np.concatenate([[0.0], cdf[:-1]])
    b0 = np.clip(ndtri(lo_u), -Z_MAX, Z_MAX)
    b1 = np.clip(ndtri(cdf), -Z_MAX, Z_MAX)
    # atoms whose interval is clipped to nothing get a single node at the clip edge
    width = np.maximum(b1 - b0, 0.0)
    scale = np.maximum(np.maximum(1.0, np.maximum(np.abs(b0), np.abs(b1))), abs(rho) / s)
    w_eff = width * scale
    n_pan = np.maximum(1, np.ceil(w_eff / 0.3)).astype(np.int64)
    pan_eff = w_eff / n_pan
    q = np.where(pan_eff < 0.02, 2, np.where(pan_eff < 0.1, 3, 6))
    zs, ws, owners = [], [], []
    for qq in (2, 3, 6):
        sel = np.nonzero(q == qq)[0]
        if sel.size == 0:
            continue
        owner = np.repeat(sel, n_pan[sel])
        # panel index within its atom
        starts = np.cumsum(n_pan[sel]) - n_pan[sel]
        j = np.arange(owner.size) - np.repeat(starts, n_pan[sel])
        h = width[owner] / n_pan[owner]
        left = b0[owner] + j * h
        x, wgl = _GL[qq]
        z = left[:, None] + 0.5 * h[:, None] * (x[None, :] + 1.0)
        wt = 0.5 * h[:, None] * wgl[None, :] * np.exp(-0.5 * z * z)
        zs.append(z.ravel())
        ws.append(wt.ravel())
        owners.append(np.repeat(owner, qq))
    z, wt, owner = np.concatenate(zs), np.concatenate(ws), np.concatenate(owners)
    order = np.argsort(owner, kind="stable")
    z, wt, owner = z[order], wt[order], owner[order]
    tot = np.bincount(owner, weights=wt, minlength=decode.values.size)
    zero = tot <= 0  # degenerate (fully clipped) interval: equal weights
    if np.any(zero):
        cnt = np.bincount(owner, minlength=decode.values.size).astype(np.float64)
        wt = np.where(zero[owner], 1.0, wt)
        tot = np.where(zero, cnt, tot)
    return z, wt / tot[owner], owner


def _chebyshev_grid(rho: float, s: float):
    """Chebyshev points on [-Z_MAX, Z_MAX] and barycentric weights. ``N = 64 + 8 Z_MAX |rho|/s``
    points interpolate ``z -> Phi((a - rho z)/s)`` to ~1e-14 uniformly in a (checked for rank
    correlations up to 0.99; the function varies on the scale s/|rho|)."""
    n = int(64 + 8.0 * Z_MAX * abs(rho) / s)
    j = np.arange(n)
    x = Z_MAX * np.cos(np.pi * j / (n - 1))
    bw = np.where(j % 2 == 0, 1.0, -1.0)
    bw[0] *= 0.5
    bw[-1] *= 0.5
    return x, bw


def _interp_matrix(z, x, bw):
    """Barycentric interpolation matrix L (len(z), len(x)): f(z) ~ L @ f(x)."""
    diff = z[:, None] - x[None, :]
    exact = diff == 0.0
    diff = np.where(exact, 1.0, diff)
    t = bw[None, :] / diff
    t = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), t)
    return t / t.sum(axis=1, keepdims=True)


def copula_conditional_rows(
    comp: CopulaComponent, max_elements: int = 1 << 22
) -> Iterator[tuple[slice, np.ndarray]]:
    """Conditional laws of P given D for a copula component, in chunks of decode atoms.

    Yields ``(atoms, rows)``: ``atoms`` a slice of decode-atom indices, ``rows`` float64 of shape
    (len(atoms), n_prompt_atoms) with ``rows[i, k] = Pr(P = p_k | D = d_{atoms.start + i})``.

    Method: U_D = Phi(Z_D) is uniform on ``[F_D(d-1), F_D(d))`` given D = d, so
    ``Pr(P <= p | D = d) = E[Phi((Phi^-1(F_P(p)) - rho Z_D) / sqrt(1 - rho^2)) | Z_D in I_d]``,
    integrated with the Gauss-Legendre nodes of :func:`_latent_nodes` (weights normalised per
    atom). When there are more quadrature nodes than Chebyshev points, the integrand is
    evaluated on a Chebyshev grid in z (:func:`_chebyshev_grid`, error ~1e-14) and carried to the
    nodes by barycentric interpolation (the cost is then ~N |P| ndtr calls plus a matrix
    product, N ~ 100, instead of ~2 |D| |P|). Each row sums to 1 and the D-marginal is exact,
    so every statistic derived from the rows (theta, v, pi) is mutually consistent.
    Independent components (rank_corr = 0 or a point-mass marginal) give ``rows = pmf_P``.
    """
    p, d = comp.prompt, comp.decode
    nd, npp = d.values.size, p.values.size
    rho = gaussian_corr(comp.rank_corr)
    budget = max(1, max_elements // max(npp, 1))
    if rho == 0.0 or nd == 1 or npp == 1:
        for a in range(0, nd, budget):
            b = min(nd, a + budget)
            yield slice(a, b), np.broadcast_to(p.pmf, (b - a, npp))
        return
    amat, grid = conditional_factors(comp)
    for a in range(0, nd, budget):
        b = min(nd, a + budget)
        yield slice(a, b), amat[a:b] @ grid


def conditional_factors(comp: CopulaComponent) -> tuple[np.ndarray, np.ndarray]:
    """(A, G) with ``Pr(P = p_k | D = d_i) = (A @ G)[i, k]`` for a copula component with rho != 0:
    G[j] = Pr(P = . | Z_D = x_j) at points x_j (the quadrature nodes themselves, or a Chebyshev
    grid when that is smaller), A[i, j] the quadrature/interpolation weights of atom i."""
    p, d = comp.prompt, comp.decode
    nd = d.values.size
    rho = gaussian_corr(comp.rank_corr)
    s = math.sqrt(1.0 - rho * rho)
    cdf_p = np.cumsum(p.pmf)
    cdf_p[-1] = 1.0
    a_p = ndtri(np.minimum(cdf_p, 1.0))  # +inf for the last atom

    def pmf_at(zz):  # (len(zz), npp): Pr(P = p_k | Z_D = z)
        c = ndtr((a_p[None, :] - rho * zz[:, None]) / s)
        return np.diff(c, axis=1, prepend=0.0)

    z, wt, owner = _latent_nodes(d, rho)
    starts = np.searchsorted(owner, np.arange(nd + 1))
    x, bw = _chebyshev_grid(rho, s)
    if z.size <= x.size:  # few nodes: evaluate directly
        amat = np.zeros((nd, z.size))
        amat[owner, np.arange(z.size)] = wt
        return amat, pmf_at(z)
    amat = np.empty((nd, x.size))
    step = max(1, (1 << 22) // x.size)
    for a in range(0, nd, step):
        b = min(nd, a + step)
        lo, hi = starts[a], starts[b]
        lmat = _interp_matrix(z[lo:hi], x, bw) * wt[lo:hi, None]
        amat[a:b] = np.add.reduceat(lmat, starts[a:b] - lo, axis=0)
    return amat, pmf_at(x)


# ----------------------------------------------------------------------------- statistics
_MOMENTS = ("d1", "d2", "d3", "p1", "p2", "pd", "pdd", "ppd")


def raw_moments(comp: CopulaComponent) -> dict[str, float]:
    """Raw moments E[D], E[D^2], E[D^3], E[P], E[P^2], E[PD], E[P D^2], E[P^2 D] (float64) of
    one component, exact up to the quadrature of :func:`copula_conditional_rows`."""
    pv = comp.prompt.values.astype(np.float64)
    dv = comp.decode.values.astype(np.float64)
    dm = comp.decode.pmf
    out = {
        "d1": float(dm @ dv),
        "d2": float(dm @ dv**2),
        "d3": float(dm @ dv**3),
    }
    if gaussian_corr(comp.rank_corr) == 0.0 or dv.size == 1 or pv.size == 1:
        p1 = float(comp.prompt.pmf @ pv)
        p2 = float(comp.prompt.pmf @ pv**2)
        out.update(p1=p1, p2=p2, pd=p1 * out["d1"], pdd=p1 * out["d2"], ppd=p2 * out["d1"])
        return out
    amat, grid = conditional_factors(comp)
    cond1 = amat @ (grid @ pv)
    cond2 = amat @ (grid @ pv**2)
    out.update(
        p1=float(dm @ cond1),
        p2=float(dm @ cond2),
        pd=float(dm @ (dv * cond1)),
        pdd=float(dm @ (dv * dv * cond1)),
        ppd=float(dm @ (dv * cond2)),
    )
    return out


def parametric_stats(w: ParametricWorkload) -> WorkloadStats:
    """Exact :class:`~afd_jax.workload.containers.WorkloadStats` of a parametric workload
    (docs/model.md 4).

    With mixture weights w_k and component moments E_k[.]::

        E[f] = sum_k w_k E_k[f]
        theta = E[D P + D (D-1)/2] / E[D]
        v     = E[D P^2 + P D (D-1) + D (D-1)(2D-1)/6] / E[D] - theta^2

    ``corr_prompt_decode`` is the Pearson correlation of (P, D) per request (0 if either is
    constant). ``n_requests = n_zero_decode = 0``.
    """
    if not isinstance(w, ParametricWorkload):
        raise TypeError(f"expected ParametricWorkload, got {type(w).__name__}")
    m = dict.fromkeys(_MOMENTS, 0.0)
    for wk, comp in zip(np.asarray(w.weights, np.float64), w.components, strict=True):
        for key, val in raw_moments(comp).items():
            m[key] += float(wk) * val
    ed = m["d1"]
    theta = (m["pd"] + 0.5 * (m["d2"] - m["d1"])) / ed
    second = (
        m["ppd"] + (m["pdd"] - m["pd"]) + (2.0 * m["d3"] - 3.0 * m["d2"] + m["d1"]) / 6.0
    ) / ed
    var_p = max(m["p2"] - m["p1"] ** 2, 0.0)
    var_d = max(m["d2"] - m["d1"] ** 2, 0.0)
    cov = m["pd"] - m["p1"] * m["d1"]
    corr = cov / math.sqrt(var_p * var_d) if var_p > 0 and var_d > 0 else 0.0
    return WorkloadStats(
        n_requests=0,
        n_zero_decode=0,
        mean_prompt=m["p1"],
        mean_decode=ed,
        naive_mean_sum=m["p1"] + ed,
        theta=theta,
        slot_var=max(second - theta * theta, 0.0),
        corr_prompt_decode=float(corr),
    )
