"""Workload specs: a trace path, a preset name, or a parametric spec string.

``resolve_workload(spec, fmt=None, decode_mapping="output") -> Workload``

1. ``spec`` names an existing file: :func:`afd_jax.workload.traces.load_trace`.
2. ``spec`` is a preset name (:func:`list_presets`).
3. Otherwise a parametric spec (grammar; docs/workloads.md has examples)::

       spec   := term (";" term)*              # several terms: a mixture
       term   := [weight "*"] family ":" field ("," field)*
       field  := key "=" value

   families and keys (P = prompt, D = decode; ``corr`` = rank correlation of a Gaussian copula,
   default 0 = independent, allowed for every family)::

       deterministic  prompt=INT decode=INT
       geometric      prompt=MEAN decode=MEAN        P on {0,1,..}, D on {1,2,..}
       uniform        prompt=LO..HI decode=LO..HI    (a single INT means LO = HI)
       lognormal      prompt=MEDIAN decode=MEDIAN sigma=S | prompt_sigma=S decode_sigma=S
                      [prompt_max=INT] [decode_max=INT] [prompt_step=INT] [decode_step=INT]
       zipf           prompt=LO..HI decode=LO..HI exponent=A | prompt_exponent= decode_exponent=

   e.g. ``geometric:prompt=100,decode=500``,
   ``lognormal:prompt=800,decode=150,sigma=0.8,decode_max=2000,corr=0.3``,
   ``0.7*geometric:prompt=100,decode=500;0.3*deterministic:prompt=2000,decode=20``.
   Mixture weights must be positive and are normalised to sum 1.

Bad specs raise :class:`~afd_jax.errors.InputError` naming the offending field.
"""

from __future__ import annotations

import os

from afd_jax.errors import InputError
from afd_jax.workload import families
from afd_jax.workload.containers import ParametricWorkload
from afd_jax.workload.numbers import parse_float, parse_int
from afd_jax.workload.traces import load_trace

__all__ = ["PRESETS", "list_presets", "preset", "resolve_workload"]

# Fitted by experiments/fit_presets.py (results: experiments/results/fit_presets.json; method in
# docs/workloads.md): per trace a 2-component mixture of Gaussian copulas with discretised
# log-normal marginals, truncated to the trace's [min, max] (prompt lattice step for >16k
# ranges), fitted jointly so that the EXACT theta and sqrt(v) match the trace's, with E[P], E[D],
# the marginal spreads and the rank correlation close. Entry: (trace file, prompt bounds,
# decode bounds, [(weight, prompt log-normal, decode log-normal, rank corr), ...]).
_FITS = {
    "azure-conv-fit": (
        "azure_llm_2023_conv.csv",
        dict(lo=2, hi=14050, step=1),
        dict(lo=7, hi=1000, step=1),
        [
            (
                0.450511,
                dict(median=850.109354, sigma=1.003492),
                dict(median=59.201702, sigma=0.327632),
                -0.046106,
            ),
            (
                0.549489,
                dict(median=906.152261, sigma=0.412446),
                dict(median=312.835139, sigma=0.357566),
                0.190289,
            ),
        ],
    ),
    "azure-code-fit": (
        "azure_llm_2023_code.csv",
        dict(lo=3, hi=7437, step=1),
        dict(lo=6, hi=1899, step=1),
        [
            (
                0.580516,
                dict(median=2480.572431, sigma=1.277716),
                dict(median=8.333438, sigma=0.240215),
                0.285335,
            ),
            (
                0.419484,
                dict(median=1361.544136, sigma=1.815793),
                dict(median=23.776209, sigma=1.203137),
                0.170427,
            ),
        ],
    ),
    "mooncake-fit": (
        "mooncake_conversation.jsonl",
        dict(lo=891, hi=126195, step=8),
        dict(lo=1, hi=2000, step=1),
        [
            (
                0.509356,
                dict(median=5380.552076, sigma=1.095869),
                dict(median=129.491493, sigma=0.669436),
                -0.043819,
            ),
            (
                0.490644,
                dict(median=7328.235673, sigma=1.236278),
                dict(median=493.607056, sigma=0.378828),
                -0.060592,
            ),
        ],
    ),
}

PRESETS = {
    "paper-v1": "the paper's v1 workload: P geometric mean 100 on {0,1,..}, D geometric mean 500 "
    "on {1,2,..}, independent (theta = 100 + 499 = 599)",
    **{
        name: f"fit to {trace}, illustrative: {len(comps)}-component mixture of log-normal "
        "marginals + Gaussian copula, theta and sqrt(v) matched to the trace"
        for name, (trace, _, _, comps) in _FITS.items()
    },
}


def list_presets() -> dict[str, str]:
    """Preset names and one-line descriptions (for --help texts)."""
    return dict(PRESETS)


def preset(name: str) -> ParametricWorkload:
    """Build a preset workload by name."""
    if name == "paper-v1":
        return families.independent(
            families.geometric(100.0, min=0),
            families.geometric(500.0, min=1),
            name="paper-v1",
            label=PRESETS["paper-v1"],
        )
    if name in _FITS:
        trace, pb, db, comps = _FITS[name]
        parts = [
            (wk, families.copula(families.lognormal(**p, **pb), families.lognormal(**d, **db), rc))
            for wk, p, d, rc in comps
        ]
        return families.mixture(parts, name=name, label=f"fit to {trace}, illustrative")
    raise InputError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})", field="workload")


# ----------------------------------------------------------------------------- spec grammar
def _range(key: str, text: str) -> tuple[int, int]:
    if ".." in text:
        a, _, b = text.partition("..")
        return parse_int(a, key), parse_int(b, key)
    x = parse_int(text, key)
    return x, x


def _field(fields: dict, family: str, key: str, default=None):
    if key in fields:
        return fields[key]
    if default is not None:
        return default
    raise InputError(f"missing key '{key}' for family '{family}'", field=key)


def _with_field(key: str, fn, *args, **kwargs):
    """Call a family constructor; re-label its InputError with the spec key."""
    try:
        return fn(*args, **kwargs)
    except InputError as err:
        sub = f" ({err.field})" if err.field else ""
        raise InputError(f"{err.reason}{sub}", field=key) from None


def _deterministic(fields: dict, family: str):
    return tuple(
        _with_field(w, families.deterministic, parse_int(_field(fields, family, w), w))
        for w in ("prompt", "decode")
    )


def _geometric(fields: dict, family: str):
    return tuple(
        _with_field(w, families.geometric, parse_float(_field(fields, family, w), w), min=lo)
        for w, lo in (("prompt", 0), ("decode", 1))
    )


def _uniform(fields: dict, family: str):
    return tuple(
        _with_field(w, families.uniform, *_range(w, _field(fields, family, w)))
        for w in ("prompt", "decode")
    )


def _lognormal(fields: dict, family: str):
    sig, margs = fields.get("sigma"), []
    for which, lo in (("prompt", 0), ("decode", 1)):
        if sig is None and f"{which}_sigma" not in fields:
            raise InputError("missing key (or prompt_sigma, decode_sigma)", field="sigma")
        s = parse_float(fields.get(f"{which}_sigma", sig), f"{which}_sigma")
        hi, step = fields.get(f"{which}_max"), fields.get(f"{which}_step")
        margs.append(
            _with_field(
                which,
                families.lognormal,
                s,
                median=parse_float(_field(fields, family, which), which),
                lo=lo,
                hi=None if hi is None else parse_int(hi, f"{which}_max"),
                step=1 if step is None else parse_int(step, f"{which}_step"),
            )
        )
    return tuple(margs)


def _zipf(fields: dict, family: str):
    ex, margs = fields.get("exponent"), []
    for which in ("prompt", "decode"):
        if ex is None and f"{which}_exponent" not in fields:
            raise InputError("missing key (or prompt_exponent...)", field="exponent")
        a = parse_float(fields.get(f"{which}_exponent", ex), f"{which}_exponent")
        lo, hi = _range(which, _field(fields, family, which))
        margs.append(_with_field(which, families.zipf, a, hi=hi, lo=lo))
    return tuple(margs)


_PD = {"prompt", "decode", "corr"}
_FAMILIES = {
    "deterministic": (_PD, _deterministic),
    "geometric": (_PD, _geometric),
    "uniform": (_PD, _uniform),
    "lognormal": (
        _PD
        | {"sigma", "prompt_sigma", "decode_sigma", "prompt_max", "decode_max"}
        | {"prompt_step", "decode_step"},
        _lognormal,
    ),
    "zipf": (_PD | {"exponent", "prompt_exponent", "decode_exponent"}, _zipf),
}
"""The spec families: FAMILY -> (its keys, the builder of its (prompt, decode) marginals from
the parsed ``key -> text`` fields). A new family is one entry here (and its constructor in
:mod:`.families`, its rows in docs/workloads.md)."""
_KEYS = {name: keys for name, (keys, _) in _FAMILIES.items()}


def _parse_term(term: str):
    family, sep, rest = term.partition(":")
    family = family.strip().lower()
    if not sep or family not in _KEYS:
        raise InputError(
            f"unknown workload {term!r}: not a file, a preset ({', '.join(PRESETS)}) or a "
            f"spec FAMILY:key=value,... with FAMILY in {', '.join(_KEYS)}",
            field="workload",
        )
    fields: dict[str, str] = {}
    for item in rest.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not value:
            raise InputError(f"expected key=value, got {item!r}", field=key or "workload")
        if key not in _KEYS[family]:
            raise InputError(
                f"unknown key for '{family}' (known: {', '.join(sorted(_KEYS[family]))})",
                field=key,
            )
        if key in fields:
            raise InputError("given twice", field=key)
        fields[key] = value
    p, d = _FAMILIES[family][1](fields, family)
    corr = parse_float(fields.get("corr", "0"), "corr")
    if not -0.999 <= corr <= 0.999:
        raise InputError(f"rank correlation must be in [-0.999, 0.999], got {corr}", field="corr")
    if d.values[0] < 1:
        raise InputError("decode steps must be >= 1", field="decode")
    return _with_field("workload", families.copula, p, d, corr, name=term.strip())


def parse_spec(spec: str) -> ParametricWorkload:
    """Parse a parametric spec string (grammar in the module docstring)."""
    terms = [t for t in spec.split(";") if t.strip()]
    if not terms:
        raise InputError("empty workload spec", field="workload")
    parts = []
    for term in terms:
        weight = 1.0
        head, star, tail = term.partition("*")
        if star and ":" not in head:
            weight = parse_float(head.strip(), "weight")
            if not weight > 0:
                raise InputError(f"mixture weight must be > 0, got {head.strip()}", field="weight")
            term = tail
        parts.append((weight, _parse_term(term)))
    if len(parts) == 1:
        return parts[0][1]
    return families.mixture(parts, name=spec.strip())


def resolve_workload(spec: str, fmt: str | None = None, decode_mapping: str = "output"):
    """Resolve ``--workload``: an existing file -> trace; a preset name; or a parametric spec.

    Returns a TraceWorkload or ParametricWorkload. Raises InputError for anything else."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty workload", field="workload")
    if os.path.exists(spec):
        return load_trace(spec, fmt=fmt, decode_mapping=decode_mapping)
    name = spec.strip()
    if name in PRESETS:
        return preset(name)
    if ":" not in name and ("/" in name or "." in name.rsplit("/", 1)[-1]):
        raise InputError("no such file", path=spec)
    return parse_spec(name)
