"""docs/writing-a-plugin.md: every Python block runs, and the blocks that quote the example package's
files quote them exactly.

The blocks run top to bottom in one namespace, each compiled on its own as if pasted into ``python``,
in a fresh interpreter (they register throwaway plugins, some in the process-wide registry, which must
not leak into the other tests).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "writing-a-plugin.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
RUNNER = """
import json, sys
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, block in enumerate(blocks):
    print(f"# --- block {i}", flush=True)
    exec(compile(block, f"<docs/writing-a-plugin.md block {i}>", "exec"), namespace)
"""


def python_blocks() -> list[str]:
    return [code for lang, code in FENCE.findall(DOC.read_text()) if lang == "python"]


def _installed() -> bool:
    try:
        importlib.metadata.distribution("sparsekit-keynorm")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_quoted_files_match_the_package():
    quoted = [b for b in python_blocks() if b.startswith("# examples/")]
    assert len(quoted) == 2
    for block in quoted:
        header, body = block.split("\n", 1)
        path = ROOT / header.removeprefix("# ").strip()
        assert body == path.read_text(), f"docs/writing-a-plugin.md quotes {path.relative_to(ROOT)} out of date"


@pytest.mark.skipif(not _installed(), reason="sparsekit-keynorm is not installed: run "
                                             "`pip install -e examples/sparsekit-keynorm`")
def test_every_python_block_runs(tmp_path):
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps(python_blocks()))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs it
    res = subprocess.run([sys.executable, "-c", RUNNER, str(blocks)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
