"""Boards run only the ClientApp installed with the agent, never code the server sends.

A Flower run ships an app bundle (FAB, a zip) to every node, and Flower's ``flwr-clientapp``
process installs it under ``$FLWR_HOME/apps``, puts it first on ``sys.path`` and imports the
``clientapp`` it names: a FAB carrying Python files would run them on the board (the OSS
SuperLink cannot sign bundles, so ``--trusted-entities`` is no help).

The SuperNode starts ``flwr-clientapp`` (through ``flower-superexec``) by name from PATH.
The daemon puts a directory of its own first on its SuperNode's PATH whose
``flwr-clientapp`` is this module. It runs Flower's ClientApp process with three changes:

* the FAB is checked, not installed: it must hold nothing but ``pyproject.toml`` and
  Flower's ``.info/`` manifest, and its ``clientapp`` must be
  ``sleepfed.board.training.client_app:app``;
  anything else is refused (the server gets an error reply naming the reason);
* the FAB is never put on ``sys.path`` and its dependencies are never installed;
* the ClientApp run is the one installed with the agent:
``sleepfed.board.training.client_app:app``, or the
  installed module named by ``SLEEPFED_CLIENTAPP`` (set by whoever starts the daemon).
"""

from __future__ import annotations

import importlib
import io
import os
import stat
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

EXPECTED_CLIENTAPP = "sleepfed.board.training.client_app:app"
CLIENTAPP_ENV = "SLEEPFED_CLIENTAPP"
GUARD_DIR_NAME = "clientapp-guard"
ALLOWED_FAB_FILES = ("pyproject.toml",)
ALLOWED_FAB_PREFIX = ".info/"


class ForeignCodeError(Exception):
    """The server's app bundle carries code or names a ClientApp this board did not install."""


def check_fab(fab: bytes) -> None:
    """Accept a FAB that only names the installed components; raise ForeignCodeError."""
    try:
        bundle = zipfile.ZipFile(io.BytesIO(fab))
    except zipfile.BadZipFile as error:
        raise ForeignCodeError(f"app bundle is not a zip ({error})") from None
    with bundle:
        names = bundle.namelist()
        foreign = [
            n for n in names if n not in ALLOWED_FAB_FILES and not n.startswith(ALLOWED_FAB_PREFIX)
        ]
        if foreign:
            raise ForeignCodeError(f"app bundle carries files: {', '.join(sorted(foreign))}")
        if "pyproject.toml" not in names:
            raise ForeignCodeError("app bundle has no pyproject.toml")
        try:
            project = tomllib.loads(bundle.read("pyproject.toml").decode("utf-8"))
            ref = project["tool"]["flwr"]["app"]["components"]["clientapp"]
        except (KeyError, TypeError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ForeignCodeError(f"app bundle's pyproject.toml: {error!r}") from None
    if ref != EXPECTED_CLIENTAPP:
        raise ForeignCodeError(f"app bundle names clientapp {ref!r}, not {EXPECTED_CLIENTAPP!r}")


def installed_clientapp_ref() -> str:
    return os.environ.get(CLIENTAPP_ENV, "") or EXPECTED_CLIENTAPP


def load_installed_clientapp(ref: str) -> object:
    module_name, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module_name), attribute or "app")


def install_guard(state_dir: Path) -> Path:
    """Write the guard's ``flwr-clientapp`` under ``state_dir``; returns its directory."""
    folder = state_dir / GUARD_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "flwr-clientapp"
    text = f"#!{sys.executable}\nfrom sleepfed.board.training.code_guard import main\n\nmain()\n"
    if not script.exists() or script.read_text() != text:
        script.write_text(text)
    script.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return folder


def guarded_environment(env: dict[str, str], state_dir: Path) -> dict[str, str]:
    """``env`` with the guard's ``flwr-clientapp`` first on PATH."""
    folder = install_guard(state_dir)
    return {**env, "PATH": f"{folder}{os.pathsep}{env.get('PATH', '')}"}


def _refusing_installer(fab_file: bytes | Path, *args: object, **kwargs: object) -> Path:
    """Stands in for Flower's ``install_from_fab``: checks, installs nothing. The error's
    text reaches the server in the error reply (Flower replaces a LoadClientAppError's)."""
    content = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
    try:
        check_fab(content)
    except ForeignCodeError as error:
        raise ForeignCodeError(f"sleepfed board refused the app bundle: {error}") from None
    return Path(os.devnull)


def _installed_loader(**kwargs: object) -> Callable[[str, str, str], object]:
    from flwr.clientapp.client_app import ClientApp, LoadClientAppError

    def load(fab_id: str, fab_version: str, fab_hash: str) -> object:
        ref = installed_clientapp_ref()
        try:
            app = load_installed_clientapp(ref)
        except (ImportError, AttributeError) as error:
            raise LoadClientAppError(f"installed ClientApp {ref!r}: {error}") from None
        if not isinstance(app, ClientApp):
            raise LoadClientAppError(f"{ref!r} is not a ClientApp")
        return app

    return load


def main() -> None:
    """Flower's ``flwr-clientapp`` with the FAB checked instead of installed and the
    installed ClientApp loaded instead of the FAB's."""
    from flwr.supernode.cli import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    runtime.install_from_fab = _refusing_installer  # type: ignore[assignment]
    runtime.get_project_dir = lambda *args, **kwargs: Path(os.devnull)  # type: ignore[assignment]
    runtime.get_load_client_app_fn = _installed_loader  # type: ignore[assignment]
    original = runtime.run_clientapp

    def run_without_dependency_install(*args: object, **kwargs: object) -> None:
        kwargs["runtime_dependency_install"] = False
        original(*args, **kwargs)  # type: ignore[arg-type]

    import flwr.supernode.cli.flwr_clientapp as cli

    cli.run_clientapp = run_without_dependency_install  # type: ignore[assignment]
    flwr_clientapp()
