"""
The README's two install commands share one ``.venv``: after the test
command's editable install, twistd must still find the plugin, and the
other way round.  Installed without network (``--no-deps`` over the
running environment's packages), so the test is about the layout only;
the build backend comes from the package index, as for a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from typing import Any

import pytest
from conftest import REPO

TWISTD = "from twisted.scripts.twistd import run; import sys; sys.argv[0] = 'twistd'; run()"


def _venv(path: Any) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = os.path.join(path, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies come from the environment running the tests.
    with open(os.path.join(site, "zz_test_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _install(python: str, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # (The build backend comes from the package index, as for a user.)
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _twistd_lists_the_plugin(python: str, cwd: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([python, "-c", TWISTD, "sysadm-dispatch", "--help"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--kill-grace" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("order", [("editable", "plain"), ("plain", "editable")])
def test_editable_and_plain_installs_both_expose_the_plugin(tmp_path: Any, order: tuple[str, str]) -> None:
    python = _venv(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing found by accident
    elsewhere.mkdir()
    for kind in order:
        _install(python, *(["-e", REPO] if kind == "editable" else [REPO]))
        _twistd_lists_the_plugin(python, str(elsewhere))


OPEN_A_STORE = """
import sqlite3, sys
from twisted.internet import defer, task
import sysadm_dispatch.store.migrations as migrations
from sysadm_dispatch import Store

async def main(reactor):
    store = Store(sys.argv[1], reactor)
    await store.open()
    await store.close()
    tables = sqlite3.connect(sys.argv[1]).execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    print(migrations.__file__, migrations.SCHEMA_VERSION, sorted(row[0] for row in tables))

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def test_a_plain_install_finds_the_schema_files(tmp_path: Any) -> None:
    # The schema is package data (setup.cfg): a store opened from an installed
    # copy, away from the checkout, gets its tables.
    python = _venv(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # From a clean copy: a build/ left in the checkout by an earlier install
    # would supply the files whatever setup.cfg says.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", ".venv", ".git", "__pycache__", ".*_cache", ".hypothesis"))
    _install(python, str(source))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([python, "-c", OPEN_A_STORE, str(elsewhere / "dispatch.sqlite3")], env=env,
                          cwd=str(elsewhere), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    where, version, tables = done.stdout.split(" ", 2)
    assert where.startswith(str(tmp_path / "venv")), where
    assert version == "2"
    assert tables.strip() == "['active_jobs', 'history', 'schema_version', 'sqlite_sequence']"
