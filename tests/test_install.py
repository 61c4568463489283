"""What a fresh install from the README's line must give: every module imports, every command answers --help.

Run in the environment the README builds (`pip install -e ".[torch,jittor,eval,test]"`), these fail when an
extra forgets a package its code needs at run time (as `[eval]` once forgot OWLv2's scipy).
"""
from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import suppresseot
from suppresseot.cli import EXTRA_COMMANDS, build_parser


def all_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(suppresseot.__path__, "suppresseot."))


def test_every_module_imports():
    modules = all_modules()
    assert "suppresseot.backends.jittor.backend" in modules and "suppresseot.evaluation.detect" in modules
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every module that fails, with its reason
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert not failed, failed


def subcommands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def commands() -> list[str]:
    return sorted(subcommands())


def test_every_command_is_listed():
    assert set(commands()) == {"generate", "edit", "tokens", "approaches", "baselines", *EXTRA_COMMANDS}
    choices = subcommands()
    assert choices["baselines"] is choices["approaches"]  # an alias


@pytest.mark.parametrize("command", [None, *commands()])
def test_console_script_help(command):
    script = shutil.which("suppress-eot") or shutil.which("suppress-eot", path=str(Path(sys.executable).parent))
    assert script, "the suppress-eot console script is not on PATH: install the project with pip install -e ."
    argv = [script] + ([command] if command else []) + ["--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    usage = subcommands()[command].prog if command else "suppress-eot"  # an alias answers with its command's name
    assert done.stdout.startswith(f"usage: {usage}"), done.stdout[:200]
    assert "Traceback" not in done.stderr
    if command is None:
        for name in commands():
            assert name in done.stdout
