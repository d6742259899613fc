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
