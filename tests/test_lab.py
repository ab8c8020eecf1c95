"""The bootstrap script behind the README's two commands (lab.py): its decisions, not pip itself."""

from __future__ import annotations

import importlib.util
import os
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


class FakePip:
    """subprocess.run for lab.install: answers the torch probe with `torch` (None: not installed) and
    sys.prefix with a temporary folder, and records each pip command with its constraint file's text."""

    def __init__(self, prefix: Path):
        self.prefix, self.torch, self.calls = prefix, None, []

    def __call__(self, cmd, **kw):
        done = type("Done", (), {"returncode": 0, "stdout": ""})()
        if "import torch" in " ".join(cmd):
            done.returncode, done.stdout = (1, "") if self.torch is None else (0, self.torch + "\n")
        elif "sys.prefix" in " ".join(cmd):
            done.stdout = f"{self.prefix}\n"
        else:
            constraint = Path(cmd[cmd.index("-c") + 1]).read_text() if "-c" in cmd else None
            self.calls.append((cmd, constraint))
        return done


@pytest.fixture()
def pip(lab, monkeypatch, tmp_path):
    fake = FakePip(tmp_path)
    monkeypatch.setattr(lab.subprocess, "run", fake)
    monkeypatch.setattr(lab.shutil, "which", lambda name: None)
    return fake


def test_torch_is_installed_only_when_missing(lab, pip, tmp_path):
    """A preinstalled torch (Colab's CUDA build) must not be replaced: no 'torch' extra then."""
    for pip.torch in ("2.8.0+cu126", None):
        pip.calls.clear()
        (tmp_path / ".labkit-install").unlink(missing_ok=True)
        lab.install("python", ["test"])
        spec = pip.calls[-1][0][-1]
        assert ("torch" in spec.split("[")[1]) is (pip.torch is None), spec
    # Nothing changed since the last install: pip is not run again.
    pip.calls.clear()
    lab.install("python", ["test"])
    assert pip.calls == []


def test_course_checks_the_stages_then_runs_the_notebooks(lab, monkeypatch):
    """`course` prepares the stages (checks the shipped ones on cpu; a GPU builds each in the lab that needs it), and `--refresh-stages` first ships
    the stale ones; the rest of the arguments go to labkit.course. `test` runs pytest once over tests/."""
    commands = []

    class Done:
        returncode = 0

    monkeypatch.setattr(lab, "ensure_env", lambda extras: "py")
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(lab.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or Done())
    assert lab.main(["course", "01", "--profile", "cpu", "--refresh-stages", "-p", "SEED=1"]) == 0
    assert commands == [["py", "-m", "labkit.stages", "ship"],
                        ["py", "-m", "labkit.stages", "prepare", "--profile", "cpu"],
                        ["py", "-m", "labkit.course", "01", "--profile", "cpu", "-p", "SEED=1"]]
    commands.clear()
    assert lab.main(["test", "-m", "not notebook"]) == 0
    assert commands == [["py", "-m", "pytest", "tests", "-p", "no:cacheprovider", "-m", "not notebook"]]


@pytest.mark.parametrize("version, ok", [((3, 10, 12), False), ((3, 8, 0), False), ((3, 11, 0), True),
                                         ((3, 13, 15), True)])
def test_python_requirement_is_checked_first(lab, version, ok):
    problem = lab.python_problem(version)
    assert (problem is None) is ok
    if not ok:
        assert "3.11" in problem and "conda create -n labkit python=3.11" in problem


def test_old_python_is_refused_before_anything_is_installed(lab, monkeypatch, capsys):
    monkeypatch.setattr(lab, "python_problem", lambda: "labkit needs Python >= 3.11")
    monkeypatch.setattr(lab, "ensure_env", lambda extras: pytest.fail("installed on a refused Python"))
    assert lab.main(["course"]) == 2
    assert "Python >= 3.11" in capsys.readouterr().err


@pytest.mark.parametrize("installed, ok", [("2.13.0", True), ("2.6.0+cu124", True), ("2.11.0+cu128", True),
                                           ("2.5.1+cu121", False), ("2.3.0", False), ("2.14.0.dev20261101", True)])
def test_a_too_old_torch_stops_with_the_command_that_fixes_it(lab, installed, ok):
    problem = lab.torch_problem(installed)
    assert (problem is None) is ok
    if not ok:
        assert f"pip install torch=={lab.TORCH_PIN}" in problem
        if "+cu121" in installed:  # same CUDA build from PyTorch's index
            assert "--index-url https://download.pytorch.org/whl/cu121" in problem


def test_pip_gets_the_installed_torch_as_a_constraint(lab, pip, monkeypatch, tmp_path):
    """No requirement (bitsandbytes needs torch>=2.4, ...) can make pip replace the installed torch."""
    monkeypatch.setattr(lab.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    pip.torch = "2.11.0+cu128"
    lab.install("python", ["lab"])
    (cmd, constraint), = pip.calls
    assert constraint == "torch==2.11.0+cu128\n"
    assert "gpu" in cmd[-1] and "torch" not in cmd[-1].split("[")[1]
    pip.torch = "2.5.1+cu121"
    (tmp_path / ".labkit-install").unlink()
    with pytest.raises(lab.SetupError, match="older than the kit needs"):
        lab.install("python", ["lab"])


def test_lab_registers_the_kernel_and_starts_jupyterlab_from_the_kit_env(lab, monkeypatch):
    commands = []

    class Done:
        returncode = 0

    monkeypatch.setattr(lab, "ensure_env", lambda extras: commands.append(extras) or "/kit/.venv/bin/python")
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(lab, "lab_env", lambda python: {"JUPYTER_PATH": "x"})
    monkeypatch.setattr(lab.subprocess, "run", lambda cmd, **kw: commands.append((cmd, kw["env"])) or Done())
    assert lab.main(["lab", "--no-browser"]) == 0
    assert commands[0] == ["lab"]
    assert commands[1][:6] == ["/kit/.venv/bin/python", "-m", "ipykernel", "install", "--sys-prefix", "--name"]
    assert commands[1][6] == "labkit" and "labkit" in commands[1][-1]
    cmd, env = commands[2]
    assert cmd[:3] == ["/kit/.venv/bin/python", "-m", "jupyterlab"]
    assert f"--notebook-dir={ROOT / 'notebooks'}" in cmd and cmd[-1] == "--no-browser"
    assert "--MultiKernelManager.default_kernel_name=labkit" in cmd and env == {"JUPYTER_PATH": "x"}


def test_the_registered_kernel_runs_the_kit_python(lab, tmp_path):
    """For real: the kernel spec lab.py registers is found first and starts this very interpreter."""
    import json
    import subprocess

    cmd = lab.kernel_command(sys.executable)
    cmd[cmd.index("--sys-prefix")] = f"--prefix={tmp_path}"
    subprocess.run(cmd, check=True, capture_output=True)
    env = {**lab.lab_env(sys.executable), "JUPYTER_PATH": str(tmp_path / "share" / "jupyter")}
    listed = subprocess.run([sys.executable, "-m", "jupyter_client.kernelspecapp", "list", "--json"],
                            env=env, capture_output=True, text=True, check=True).stdout
    spec = json.loads(listed)["kernelspecs"]["labkit"]["spec"]
    assert spec["argv"][0] == sys.executable
    assert lab.lab_env(sys.executable)["JUPYTER_PATH"].split(os.pathsep)[0] == f"{sys.prefix}/share/jupyter"


def test_colab_installs_through_labkit_colab_and_keeps_its_packages(lab, monkeypatch):
    """On Colab the exact pins are not installed (they would upgrade numpy, pandas, ipykernel ...):
    labkit.colab installs only what Colab lacks. The tests (pytest pins) are refused there."""
    commands = []
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-20260819")
    monkeypatch.setattr(lab, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(lab, "install", lambda *a: pytest.fail("pip install -e .[...] on Colab"))
    assert lab.ensure_env(["lab"]) == sys.executable
    assert commands == [[sys.executable, "-m", "labkit.colab", "install"]]
    with pytest.raises(lab.SetupError, match="not on Colab"):
        lab.ensure_env(["test"])
