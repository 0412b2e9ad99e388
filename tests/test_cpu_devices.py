"""`afd-jax simulate` gives JAX's CPU backend one device per available core (the spine splits
rows over devices; the numbers equal one device's, tests/test_multidevice.py), unless the
user set the count or AFD_JAX_CPU_DEVICES says otherwise; a bad value is one line, exit 2."""

from __future__ import annotations

import os

import pytest

from afd_jax.cli import cpu_device_flags, main
from afd_jax.errors import InputError

FLAG = "--xla_force_host_platform_device_count"


@pytest.fixture
def no_jax(monkeypatch):
    """cpu_device_flags leaves XLA_FLAGS alone once JAX is imported (as in this process)."""
    import sys

    monkeypatch.delitem(sys.modules, "jax")


def test_one_device_per_core(no_jax):
    cores = len(os.sched_getaffinity(0))
    got = cpu_device_flags({"XLA_FLAGS": "--xla_cpu_foo=1"})
    assert got == (f"--xla_cpu_foo=1 {FLAG}={cores}" if cores > 1 else None)
    assert cpu_device_flags({"AFD_JAX_CPU_DEVICES": "3"}) == f"{FLAG}=3"
    assert cpu_device_flags({"AFD_JAX_CPU_DEVICES": "1"}) is None
    assert cpu_device_flags({"XLA_FLAGS": f"{FLAG}=4"}) is None  # the user's count wins


def test_not_after_jax_is_imported():
    assert cpu_device_flags({"AFD_JAX_CPU_DEVICES": "3"}) is None


@pytest.mark.parametrize("bad", ["0", "x", "-2", "1.5"])
def test_bad_count_is_one_line_exit_2(no_jax, bad, monkeypatch, capsys):
    with pytest.raises(InputError, match="AFD_JAX_CPU_DEVICES"):
        cpu_device_flags({"AFD_JAX_CPU_DEVICES": bad})
    monkeypatch.setenv("AFD_JAX_CPU_DEVICES", bad)
    assert main(["simulate", "--workload", "paper-v1", "-B", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "AFD_JAX_CPU_DEVICES" in err
