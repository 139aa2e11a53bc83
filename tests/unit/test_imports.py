"""
The arrows between the rooms (docs/architecture.rst): ``.ci/check_imports.py``
run on the package, and shown to catch what it must on small packages made
here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "check_imports.py"


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = load_checker()


def package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A ``sysadm_dispatch`` package with these modules (and an empty ``__init__`` in every folder)."""
    root = tmp_path / "sysadm_dispatch"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(text)
    return root


@pytest.fixture(autouse=True)
def no_exceptions(monkeypatch: pytest.MonkeyPatch, request: Any) -> None:
    """The made-up packages are checked against the rule alone."""
    if "real" not in request.node.name:
        monkeypatch.setattr(checker, "EXCEPTIONS", {})


def test_the_real_package_follows_the_arrows() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "text"),
    [
        # Below the api, nothing imports a transport; relative or absolute, at any depth.
        ("core/dispatcher.py", "from ..transports.websocket import Factory\n"),
        ("core/dispatcher.py", "import sysadm_dispatch.transports.rest\n"),
        ("core/dispatcher.py", "def f():\n    from ..api import router\n"),
        ("core/dispatcher.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..api.router import R\n"),
        # process and store import nothing of core, auth, api, transports; nor each other.
        ("process/runner.py", "from ..core.job import Job\n"),
        ("process/runner.py", "from sysadm_dispatch.core import job\n"),
        ("store/database.py", "from ..auth.login import User\n"),
        ("store/database.py", "from ..process import runner\n"),
        ("process/deep/inner.py", "from ...core import job\n"),
        # Rooms of one layer do not import each other; nothing looks up.
        ("api/router.py", "from ..ops.health import HealthCheck\n"),
        ("core/dispatcher.py", "from ..auth.login import User\n"),
        ("auth/login.py", "from ..api.router import Router\n"),
        ("ops/metrics.py", "from ..transports.websocket import Factory\n"),
        # The client speaks the wire protocol, and takes only auth.users of the server.
        ("client/main.py", "from ..core.job import Job\n"),
        ("client/main.py", "from ..auth.blocking import LoginGuard\n"),
        ("cli.py", "from .core.dispatcher import Dispatcher\n"),
        # The reactor's types are below every room: they import none.
        ("reactors.py", "from .core.job import Job\n"),
        ("reactors.py", "from .store import database\n"),
    ],
)
def test_a_wrong_arrow_is_reported(tmp_path: Path, module: str, text: str) -> None:
    problems = checker.check(package(tmp_path, {module: text}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"sysadm_dispatch/{module}:"), problems


@pytest.mark.parametrize(
    ("module", "text"),
    [
        ("transports/rest.py", "from ..api.router import Router\nfrom ..core.events import Event\n"
                               "from ..ops.health import HealthCheck\nfrom ..auth.login import User\n"),
        ("api/router.py", "from ..core.dispatcher import D\nfrom ..auth import login\nfrom ..store.history import q\n"),
        ("ops/metrics.py", "from ..core.job import Job\nfrom ..store.database import Store\n"),
        ("core/dispatcher.py", "from ..process.runner import R\nfrom ..store.database import S\nfrom .job import J\n"),
        ("process/runner.py", "from .spawn import spawn\nfrom . import procs\nimport os\nfrom twisted import x\n"),
        ("client/main.py", "from ..auth.users import default_state_dir\nfrom . import format\n"),
        ("cli.py", "from .auth.login import read_users\nfrom .client.main import handle\n"),
        ("server.py", "from .transports.rest import RestAPI\nfrom .core.dispatcher import D\nfrom .ops import metrics\n"),
        ("__init__.py", "from . import server\n"),
        # Every room of the layers types its reactor with the module below them all.
        ("process/runner.py", "from ..reactors import IProcessReactor\n"),
        ("store/writer.py", "from ..reactors import IThreadedClock\n"),
        ("core/dispatcher.py", "from ..reactors import IDispatchReactor\n"),
        ("auth/pam.py", "from .. import reactors\n"),
        ("transports/rest.py", "from sysadm_dispatch.reactors import IServerReactor\n"),
        ("client/main.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..reactors import IClientReactor\n"),
    ],
)
def test_the_arrows_the_rule_allows(tmp_path: Path, module: str, text: str) -> None:
    assert checker.check(package(tmp_path, {module: text})) == []


def test_an_exception_no_longer_needed_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checker, "EXCEPTIONS", {("process.runner", "core.job"): "why"})
    root = package(tmp_path, {"process/runner.py": "from ..core.job import Job\n"})
    assert checker.check(root) == []
    (root / "process" / "runner.py").write_text("import os\n")
    [problem] = checker.check(root)
    assert "no longer imports core.job" in problem


def test_the_script_exits_non_zero_on_a_wrong_arrow(tmp_path: Path) -> None:
    root = package(tmp_path, {"store/database.py": "from ..transports import rest\n"})
    result = subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "sysadm_dispatch/store/database.py:1: store may not import transports " in result.stdout
