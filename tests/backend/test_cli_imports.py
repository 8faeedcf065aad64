"""The command line answers at once: ``--help`` and ``status`` never import torch or transformers (5-15 s here);
only the commands that load a model do. Checked in a fresh interpreter, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
from backend.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "supervision", "label_studio_sdk") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["status"], ["status", "--json"]])
def test_help_and_status_import_no_model_code(tmp_path, argv):
    if argv[0] == "status" and "--help" not in argv:
        argv = [*argv, "--data-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout
