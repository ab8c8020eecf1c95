"""The bootstrap script behind the README's two commands (lab.py): its decisions, not pip itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def lab(monkeypatch):
    spec = importlib.util.spec_from_file_location("lab_script", ROOT / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for var in ("COLAB_RELEASE_TAG", "COLAB_GPU", "CONDA_PREFIX", "LABKIT_NO_VENV"):
        monkeypatch.delenv(var, raising=False)
    return module


def test_plain_interpreter_gets_a_venv(lab, monkeypatch):
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    assert not lab.in_managed_env()


@pytest.mark.parametrize("var", ["COLAB_RELEASE_TAG", "CONDA_PREFIX"])
def test_colab_and_conda_use_the_current_env(lab, monkeypatch, var):
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    monkeypatch.setenv(var, "x")
    assert lab.in_managed_env()


def test_active_venv_is_used(lab, monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/some/venv")
    assert lab.in_managed_env()


def test_unknown_command_prints_usage(lab, capsys):
    assert lab.main(["fly"]) == 2
    assert "python3 lab.py course" in capsys.readouterr().out


def test_torch_is_installed_only_when_missing(lab, monkeypatch, tmp_path):
    """A preinstalled torch (Colab's CUDA build) must not be replaced: no 'torch' extra then."""
    calls = []

    class Done:
        def __init__(self, returncode=0, stdout=""):
            self.returncode, self.stdout = returncode, stdout

    def fake_run(cmd, **kw):
        if "import torch" in " ".join(cmd):
            return Done(0 if has_torch else 1, "2.8.0+cu126\n" if has_torch else "")
        if "sys.prefix" in " ".join(cmd):
            return Done(0, str(tmp_path) + "\n")
        calls.append(cmd)
        return Done()

    monkeypatch.setattr(lab.subprocess, "run", fake_run)
    monkeypatch.setattr(lab.shutil, "which", lambda name: None)
    for has_torch in (True, False):
        calls.clear()
        (tmp_path / ".labkit-install").unlink(missing_ok=True)
        lab.install("python", ["test"])
        spec = calls[-1][-1]
        assert ("torch" in spec.split("[")[1]) is (not has_torch), spec
    # Nothing changed since the last install: pip is not run again.
    calls.clear()
    lab.install("python", ["test"])
    assert calls == []


def test_course_checks_the_stages_then_runs_the_notebooks(lab, monkeypatch):
    """`course` makes sure the stages are there (shipped on cpu), and `--refresh-stages` first ships
    the stale ones; the rest of the arguments go to labkit.course. `test` runs pytest once over tests/."""
    commands = []

    class Done:
        returncode = 0

    monkeypatch.setattr(lab, "ensure_env", lambda extras: "py")
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(lab.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or Done())
    assert lab.main(["course", "01", "--profile", "cpu", "--refresh-stages", "-p", "SEED=1"]) == 0
    assert commands == [["py", "-m", "labkit.stages", "ship"],
                        ["py", "-m", "labkit.stages", "build", "--profile", "cpu"],
                        ["py", "-m", "labkit.course", "01", "--profile", "cpu", "-p", "SEED=1"]]
    commands.clear()
    assert lab.main(["test", "-m", "not notebook"]) == 0
    assert commands == [["py", "-m", "pytest", "tests", "-p", "no:cacheprovider", "-m", "not notebook"]]
