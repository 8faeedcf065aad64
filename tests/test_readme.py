"""The README's configuration table and two commands stay true to the code."""

import dataclasses
import re
from pathlib import Path

from active_learning.settings import Settings, env_name

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented_with_its_flag_and_variable():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `--([a-z-]+)` \| `([A-Z_]+)` \|", README, re.M)}
    fields = {f.name.replace("_", "-"): env_name(f.name) for f in dataclasses.fields(Settings)}
    assert rows == fields


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in README and "bash scripts/test.sh" in ci
    assert "bash scripts/serve.sh" in README
