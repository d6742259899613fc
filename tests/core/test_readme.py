"""README starts with the two commands (main job, tests) and CI runs exactly the test command."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_commands_and_ci_agree():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    run, test = blocks[0].strip(), blocks[1].strip()
    assert run.endswith("sparsekit demo") and "pip install" in run
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the CI script must run README's test command verbatim"
