"""Hardware of a deployment: GPU counts, per-GPU price / power / memory, KV capacity, feasible r,
and the throughput in user terms (docs/plan.md).

A latency file may carry a ``[hardware]`` table (GPU counts of ONE Attention instance and of the
ONE FFN instance, the AIConfigurator system names, KV bytes per token, resident weights) and a
``[costs]`` table (``price_attn``/``price_ffn`` in USD per GPU-hour, ``power_attn``/``power_ffn``
in W per GPU, ``memory_attn_gib``/``memory_ffn_gib`` in GiB per GPU). Anything not given comes
from :data:`SYSTEMS`, documented per-GPU *defaults* (list prices and TDP specs, not
measurements); flags override both.

Throughput in user terms is :func:`afd_jax.model.latency.throughput` with the instance costs
replaced (the one formula ``1e6 r B / ((r c_A + c_F) E[tau])``):

* tokens/s per GPU:          c_A = attn_gpus,                c_F = ffn_gpus;
* tokens per USD:            c_A = attn_gpus price_A / 3600, c_F = ffn_gpus price_F / 3600
  (USD per second: tokens/s per USD/s); cost per million tokens = 1e6 / tokens per USD;
* tokens per joule:          c_A = attn_gpus power_A,        c_F = ffn_gpus power_F (W = J/s);
  joules per token = 1 / tokens per joule.

>>> from afd_jax.model.hardware import Hardware
>>> hw = Hardware(attn_gpus=8, ffn_gpus=16, attn_system="h200_sxm", ffn_system="h200_sxm")
>>> float(hw.attn_price), float(hw.attn_power)
(3.79, 700.0)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from afd_jax.errors import InputError, read_toml
from afd_jax.model.latency import Latency, throughput

__all__ = [
    "COST_KEYS",
    "HARDWARE_KEYS",
    "SYSTEMS",
    "Hardware",
    "SystemDefaults",
    "check_ffn_fits",
    "check_hardware_tables",
    "feasible_ratios",
    "check_reserved",
    "kv_capacity_tokens",
    "per_gpu_latency",
    "read_hardware",
    "user_metrics",
]


class SystemDefaults(NamedTuple):
    """Per-GPU defaults of one system: memory (GiB), price (USD per GPU-hour), power (W)."""

    memory_gib: float
    price_usd_per_hour: float
    power_w: float


# Defaults, NOT measurements (docs/plan.md gives the source of each number): memory is the
# nominal HBM capacity of the product spec sheet, power the GPU's TDP (board power for SXM,
# per-GPU share of the superchip for Grace systems), price a round on-demand GPU-hour figure of
# the order of public GPU-cloud list prices in 2025. Override with [costs] or the flags.
SYSTEMS: dict[str, SystemDefaults] = {
    "a100_sxm": SystemDefaults(80.0, 1.79, 400.0),
    "h100_sxm": SystemDefaults(80.0, 2.99, 700.0),
    "h200_sxm": SystemDefaults(141.0, 3.79, 700.0),
    "b200_sxm": SystemDefaults(180.0, 5.99, 1000.0),
    "b300_sxm": SystemDefaults(288.0, 7.49, 1100.0),
    "gb200": SystemDefaults(186.0, 6.99, 1200.0),
    "gb300": SystemDefaults(288.0, 8.49, 1400.0),
}

HARDWARE_KEYS = (
    "model",
    "attn_system",
    "ffn_system",
    "framework",
    "attn_gpus",
    "ffn_gpus",
    "attn_parallelism",
    "ffn_parallelism",
    "kv_bytes_per_token",
    "attn_weight_bytes",
    "ffn_weight_bytes",
)
COST_KEYS = (
    "price_attn",
    "price_ffn",
    "power_attn",
    "power_ffn",
    "memory_attn_gib",
    "memory_ffn_gib",
)
_TEXT_KEYS = (
    "model",
    "attn_system",
    "ffn_system",
    "framework",
    "attn_parallelism",
    "ffn_parallelism",
)
_INT_KEYS = ("attn_gpus", "ffn_gpus")


class Hardware(NamedTuple):
    """GPU counts, systems and per-GPU figures of one rA-1F deployment (None = unknown).

    ``price_*``/``power_*``/``memory_*`` given here override the :data:`SYSTEMS` defaults; the
    properties ``attn_price`` ... resolve them (None when neither is known)."""

    attn_gpus: int | None = None
    ffn_gpus: int | None = None
    attn_system: str | None = None
    ffn_system: str | None = None
    kv_bytes_per_token: float | None = None
    attn_weight_bytes: float | None = None
    ffn_weight_bytes: float | None = None
    price_attn: float | None = None
    price_ffn: float | None = None
    power_attn: float | None = None
    power_ffn: float | None = None
    memory_attn_gib: float | None = None
    memory_ffn_gib: float | None = None
    model: str | None = None

    def _resolve(self, own, system, index):
        if own is not None:
            return float(own)
        sys_defaults = SYSTEMS.get(system) if system else None
        return None if sys_defaults is None else float(sys_defaults[index])

    @property
    def attn_price(self):
        """USD per GPU-hour of an Attention GPU."""
        return self._resolve(self.price_attn, self.attn_system, 1)

    @property
    def ffn_price(self):
        return self._resolve(self.price_ffn, self.ffn_system, 1)

    @property
    def attn_power(self):
        """W per Attention GPU."""
        return self._resolve(self.power_attn, self.attn_system, 2)

    @property
    def ffn_power(self):
        return self._resolve(self.power_ffn, self.ffn_system, 2)

    @property
    def attn_memory_gib(self):
        """GiB per Attention GPU."""
        return self._resolve(self.memory_attn_gib, self.attn_system, 0)

    @property
    def ffn_memory_gib(self):
        """GiB per FFN GPU."""
        return self._resolve(self.memory_ffn_gib, self.ffn_system, 0)

    @property
    def has_gpus(self) -> bool:
        return self.attn_gpus is not None and self.ffn_gpus is not None

    def gpus(self, r) -> int:
        """GPUs of an rA-1F bundle: r attn_gpus + ffn_gpus."""
        return int(r) * int(self.attn_gpus) + int(self.ffn_gpus)


VALUE_LIMIT = 1e15
"""The largest number of a [hardware] or [costs] table or its flag (1e15 bytes is a petabyte,
USD per GPU-hour and watts far beyond any machine): products of prices, power, GPUs and step
times then stay finite (a review: a price of 1.7e308 printed inf USD per million tokens)."""


def _check_value(key: str, value, path: str | None):
    if key in _TEXT_KEYS:
        if not isinstance(value, str):
            raise InputError(f"must be a string, got {value!r}", path=path, field=key)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"must be a number, got {value!r}", path=path, field=key)
    if not (math.isfinite(value) and 0 <= value <= VALUE_LIMIT):
        raise InputError(f"must be in [0, {VALUE_LIMIT:g}], got {value}", path=path, field=key)
    if key in _INT_KEYS:
        if int(value) != value or value < 1:
            raise InputError(f"must be an integer >= 1, got {value}", path=path, field=key)
        return int(value)
    if (key in COST_KEYS or key == "kv_bytes_per_token") and value <= 0:
        raise InputError(f"must be > 0, got {value}", path=path, field=key)  # 0 hid the KV limit
    return float(value)


def _check_section(table, allowed, name: str, path: str | None) -> dict:
    if not isinstance(table, dict):
        raise InputError(f"[{name}] must be a table", path=path, field=name)
    out = {}
    for key, value in table.items():
        if key not in allowed:
            raise InputError(
                f"unknown key {key!r} (allowed: {', '.join(allowed)})", path=path, field=name
            )
        out[key] = _check_value(key, value, path)
    return out


def check_hardware_tables(data: dict, path: str | None) -> dict:
    """Validate the ``[hardware]`` and ``[costs]`` tables of a parsed latency file; returns
    their values merged (InputError names the file and the table or key)."""
    fields = _check_section(data.get("hardware", {}), HARDWARE_KEYS, "hardware", path)
    fields.update(_check_section(data.get("costs", {}), COST_KEYS, "costs", path))
    return fields


def read_hardware(path: str | Path | None, overrides: dict | None = None) -> Hardware:
    """The :class:`Hardware` of a latency file's ``[hardware]`` and ``[costs]`` tables (both
    optional; ``path`` None = none), then ``overrides`` (keys of Hardware; None values ignored).
    InputError names the file and key of a bad value."""
    data: dict = {}
    where = None if path is None else str(path)
    if path is not None:
        data = read_toml(path, "latency file")
    fields = check_hardware_tables(data, where)
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    fields.update(_check_section(extra, HARDWARE_KEYS + COST_KEYS, "flags", None))
    # an unknown system name is allowed; its figures then come from [costs] or the flags
    return Hardware(**{k: v for k, v in fields.items() if k in Hardware._fields})


KV_RESERVED = 0.1
"""Default fraction of GPU memory kept out of the weights and the KV cache (``--kv-reserved``)."""
KV_EPSILON = 1e-3
"""Default allowed probability that a worker's KV load exceeds its capacity (``--kv-epsilon``)."""


def check_reserved(fraction: float) -> float:
    """``fraction`` (of GPU memory kept out of the KV cache, ``--kv-reserved``) when in
    [0, 1), else InputError (field ``kv_reserved``)."""
    if not 0 <= fraction < 1:
        raise InputError(f"must be in [0, 1), got {fraction}", field="kv_reserved")
    return fraction


def kv_capacity_tokens(hw: Hardware, reserved_fraction: float = KV_RESERVED) -> float | None:
    """KV-cache capacity of one Attention instance (tokens):
    ``(attn_gpus * memory * (1 - reserved) - attn_weight_bytes) / kv_bytes_per_token`` with the
    memory in bytes (GiB * 2**30). None when a figure is missing; InputError when the weights
    leave no room."""
    check_reserved(reserved_fraction)
    mem = hw.attn_memory_gib
    if hw.attn_gpus is None or mem is None or not hw.kv_bytes_per_token:
        return None
    usable = hw.attn_gpus * mem * 2.0**30 * (1.0 - reserved_fraction)
    free = usable - (hw.attn_weight_bytes or 0.0)
    if free <= 0:
        raise InputError(
            f"the Attention weights ({hw.attn_weight_bytes:.3g} B) fill the usable memory "
            f"({usable:.3g} B): no room for the KV cache",
            field="attn_weight_bytes",
        )
    return free / hw.kv_bytes_per_token


def check_ffn_fits(hw: Hardware, reserved_fraction: float = KV_RESERVED) -> None:
    """InputError when the FFN weights exceed the usable memory of the FFN instance
    (``ffn_gpus * memory * 2**30 * (1 - reserved)``); silent when a figure is unknown."""
    mem = hw.ffn_memory_gib
    if hw.ffn_gpus is None or mem is None or hw.ffn_weight_bytes is None:
        return
    usable = hw.ffn_gpus * mem * 2.0**30 * (1.0 - reserved_fraction)
    if hw.ffn_weight_bytes > usable:
        raise InputError(
            f"the FFN weights ({hw.ffn_weight_bytes:.3g} B) exceed the usable memory of "
            f"{hw.ffn_gpus} FFN GPUs ({usable:.3g} B): give more --ffn-gpus",
            field="ffn_weight_bytes",
        )


def per_gpu_latency(lat: Latency, hw: Hardware, unit: str = "gpu") -> Latency:
    """``lat`` with the instance costs c_A, c_F replaced by GPUs ("gpu"), USD per second
    ("usd") or watts ("watt") per instance, so that :func:`afd_jax.model.latency.throughput`
    gives tokens/s per GPU, tokens per USD or tokens per joule."""
    if not hw.has_gpus:
        raise InputError("needs attn_gpus and ffn_gpus ([hardware] or flags)", field="attn_gpus")
    if unit == "usd":
        scale_a = _need(hw.attn_price, "price_attn") / 3600
        scale_f = _need(hw.ffn_price, "price_ffn") / 3600
    elif unit == "watt":
        scale_a, scale_f = _need(hw.attn_power, "power_attn"), _need(hw.ffn_power, "power_ffn")
    else:
        scale_a = scale_f = 1.0
    return lat._replace(cost_attn=hw.attn_gpus * scale_a, cost_ffn=hw.ffn_gpus * scale_f)


def _need(value, name: str) -> float:
    if value is None:
        raise InputError(
            "unknown: give a known system name, a [costs] value or the flag", field=name
        )
    return value


def user_metrics(lat: Latency, hw: Hardware, r, batch, mean_step_time) -> dict:
    """Throughput in user terms at (r, B) with mean step time E[tau] (us): tokens_per_s_per_gpu,
    tokens_per_dollar, cost_per_million_tokens (USD), joules_per_token, gpus. Prices and power
    left unknown give None for their entries. Float64 NumPy (arrays broadcast)."""
    tau = np.asarray(mean_step_time, dtype=np.float64)
    per_gpu = throughput(per_gpu_latency(lat, hw, "gpu"), r, batch, tau)
    out = {"gpus": hw.gpus(r) if np.ndim(r) == 0 else None, "tokens_per_s_per_gpu": per_gpu}
    out["tokens_per_dollar"] = out["cost_per_million_tokens"] = out["joules_per_token"] = None
    if hw.attn_price is not None and hw.ffn_price is not None:
        per_usd = throughput(per_gpu_latency(lat, hw, "usd"), r, batch, tau)
        out["tokens_per_dollar"] = per_usd
        out["cost_per_million_tokens"] = 1e6 / per_usd
    if hw.attn_power is not None and hw.ffn_power is not None:
        out["joules_per_token"] = 1.0 / throughput(per_gpu_latency(lat, hw, "watt"), r, batch, tau)
    return out


def feasible_ratios(
    r_values: list[int] | tuple[int, ...] | None = None,
    r_step: int | None = None,
    r_max: int = 64,
) -> np.ndarray | None:
    """The allowed r (sorted int64 array), or None when every r in 1..r_max is allowed.

    ``r_values``: explicit list (positive integers <= r_max); ``r_step`` N: the multiples
    N, 2N, ... <= r_max (node granularity). At most one of them. InputError otherwise."""
    if r_values is not None and r_step is not None:
        raise InputError("give --r-values or --r-step, not both", field="r_values")
    if r_step is not None:
        if isinstance(r_step, bool) or int(r_step) != r_step or r_step < 1:
            raise InputError(f"must be an integer >= 1, got {r_step}", field="r_step")
        if r_step > r_max:
            raise InputError(f"{r_step} exceeds r_max = {r_max}", field="r_step")
        return np.arange(int(r_step), int(r_max) + 1, int(r_step), dtype=np.int64)
    if r_values is None:
        return None
    if len(r_values) == 0:
        raise InputError("needs at least one value", field="r_values")
    for v in r_values:
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise InputError(f"values must be integers >= 1, got {v}", field="r_values")
        if v > r_max:
            raise InputError(f"value {v} exceeds r_max = {r_max}", field="r_values")
    return np.unique(np.asarray([int(v) for v in r_values], dtype=np.int64))
