"""The wheel installs sparsekit, sparsekit.plugins and sparsekit.kernels — never top-level plugins/kernels."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _folders(top: str, prefix: str) -> set[str]:
    base = ROOT / top
    return {prefix + ("." + ".".join(p.parent.relative_to(base).parts) if p.parent != base else "")
            for p in base.rglob("__init__.py")}


def test_package_list_matches_the_folders_on_disk():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["project"]["name"] != "sparsekit"  # PyPI's sparsekit is another project
    declared = set(cfg["tool"]["setuptools"]["packages"])
    on_disk = _folders("sparsekit", "sparsekit") | _folders("plugins", "sparsekit.plugins") | _folders(
        "kernels", "sparsekit.kernels")
    assert declared == on_disk


@pytest.mark.slow
def test_wheel_has_no_top_level_plugins_or_kernels(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True)
    wheel = next(tmp_path.glob("sparsekit_attn-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"sparsekit"}
    assert "sparsekit/plugins/proxyattn/estimator.py" in names
    assert "sparsekit/kernels/block_sparse/naive.py" in names
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(eps).decode()
    assert "proxyattn = sparsekit.plugins.proxyattn" in text and "sparsekit = sparsekit.cli:main" in text


def _import_kernels_from_the_root(*flags: str) -> str:
    """Where ``import kernels`` lands when the checkout's root is on sys.path (``python -c`` run there)."""
    res = subprocess.run([sys.executable, *flags, "-c", "import kernels; print(kernels.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_checkout_root_does_not_hide_the_kernels_distribution():
    """transformers >= 5.25 requires Hugging Face's ``kernels`` and imports it on start-up; run from the
    checkout's root, our ``kernels/`` folder must hand the name over instead of shadowing it."""
    try:
        from importlib.metadata import distribution
        installed = pathlib.Path(distribution("kernels").locate_file("kernels/__init__.py"))
    except Exception:
        pytest.skip("no `kernels` distribution installed here")
    assert pathlib.Path(_import_kernels_from_the_root()).resolve() == installed.resolve()


def test_without_the_kernels_distribution_the_folder_imports_quietly():
    # -S: no site-packages, so nothing else is called `kernels` and the folder keeps the name.
    assert pathlib.Path(_import_kernels_from_the_root("-S")) == ROOT / "kernels" / "__init__.py"


def test_transformers_imports_from_the_checkout_root():
    pytest.importorskip("transformers")
    res = subprocess.run([sys.executable, "-c", "from transformers import LlamaConfig, AttentionInterface"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
