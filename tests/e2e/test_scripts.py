"""The set-up scripts and the package's metadata: the demo installs no test tools and no browser.

The scripts run on a copy of the repo's scripts beside a stand-in ``.venv/bin/python`` and a
stand-in ``apt-get`` that only log how they were called, so nothing is installed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox(tmp_path):
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    log = tmp_path / "calls.log"
    stub = f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\n'
    for path in (tmp_path / ".venv" / "bin" / "python", tmp_path / "bin" / "apt-get"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stub)
        path.chmod(0o755)
    return tmp_path, log


def _setup(sandbox, *args):
    root, log = sandbox
    env = {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(root / "scripts" / "setup.sh"), *args], cwd=root, env=env, check=True,
                   capture_output=True)
    return log.read_text().splitlines()


def test_the_demo_set_up_installs_fpn_alone(sandbox):
    calls = _setup(sandbox)
    assert calls == ["python -m pip install --quiet -e ."]  # no extras, no apt-get
    assert "bash scripts/setup.sh\n" in (REPO / "scripts" / "demo.sh").read_text()


def test_the_test_set_up_adds_the_test_extras(sandbox):
    calls = _setup(sandbox, "--test")
    assert calls[0] == "python -m pip install --quiet -e .[dev]"
    if not Path("/usr/bin/chromium").exists() and os.getuid() == 0:
        assert calls[1:] and all(call.startswith("apt-get") for call in calls[1:])
    assert "bash scripts/setup.sh --test\n" in (REPO / "scripts" / "test.sh").read_text()


def test_the_package_says_its_licence_types_and_address():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()
    assert project["urls"] and (REPO / "src" / "fpn" / "py.typed").is_file()
    dev = " ".join(project["optional-dependencies"]["dev"])
    assert "pytest" in dev and "playwright" in dev and not any(
        name in " ".join(project["dependencies"]) for name in ("pytest", "playwright", "schemathesis"))
