"""Importing ssmax_torch with python/ (the source tree) as the working directory: its sources
shadow the installed package and have no compiled extension; the ImportError says so."""

import glob
import os
import subprocess
import sys

import pytest

SOURCE = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGE = os.path.join(SOURCE, "ssmax_torch")


def test_import_from_the_source_tree_explains_itself():
    if glob.glob(os.path.join(PACKAGE, "_C.*")):
        pytest.skip("the source tree holds a compiled extension (an in-place build)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", "import ssmax_torch"], cwd=SOURCE, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ssmax_torch is being imported from the source tree "
                           f"{PACKAGE}, which has no compiled extension"), run.stderr
    assert "Run from another directory" in last and "pip install" in last, run.stderr
    assert "circular import" not in last, run.stderr
