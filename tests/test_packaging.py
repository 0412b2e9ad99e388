"""Packaging: the wheel ships the kernels as ``afd_jax/kernels/`` (no top-level ``kernels``), and
both entry points (`afd-jax`, `python -m afd_jax`) answer ``--help``."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_ok() -> bool:
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("wheel") is None:
        return False
    import setuptools

    return int(setuptools.__version__.split(".")[0]) >= 69


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (an in-tree build would write build/ and
    *.egg-info into the working tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("afd_jax", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    if _setuptools_ok():
        cmd.insert(5, "--no-build-isolation")  # offline-friendly; else pip fetches setuptools
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list(out.glob("afd_jax-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "afd_jax/kernels/__init__.py" in names
    assert "afd_jax/kernels/sampling.py" in names
    assert "afd_jax/cli/__init__.py" in names
    assert "afd_jax/workload/traces.py" in names
    assert not [n for n in names if n.startswith("kernels/")], names
    tops = {n.split("/", 1)[0] for n in names}
    assert tops <= {"afd_jax"} | {t for t in tops if t.endswith((".dist-info", ".data"))}, tops
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "afd-jax = afd_jax.cli:main" in text


def _afd_jax_script() -> str:
    exe = Path(sys.executable).with_name("afd-jax")
    found = str(exe) if exe.exists() else shutil.which("afd-jax")
    if found is None:
        pytest.skip("afd-jax console script not installed (pip install -e .)")
    return found


@pytest.mark.parametrize("how", ["script", "module"])
def test_help(how):
    cmd = [_afd_jax_script()] if how == "script" else [sys.executable, "-m", "afd_jax"]
    res = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: afd-jax" in res.stdout
    assert "theta" in res.stdout
    res = subprocess.run(cmd + ["theta", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--decode-mapping" in res.stdout and "--ci-method" in res.stdout
