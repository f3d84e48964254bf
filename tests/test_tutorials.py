"""Every tutorial runs to completion (in a temporary directory, with a time budget)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(ROOT, "tutorials", "*.py")))


@pytest.mark.parametrize("path", TUTORIALS, ids=[os.path.basename(p) for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = dict(os.environ, QC_TUTORIAL_FAST="1")
    proc = subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{os.path.basename(path)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
