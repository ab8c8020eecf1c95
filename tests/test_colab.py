"""The Colab install path (labkit.colab): pip's resolver against Colab's recorded packages, the
constraints and restart logic, the badges and setup cells, and a standard-library-only import.

test_colab_resolution asks PyPI (pip's resolver, as a dry run) what `python -m labkit.colab install`
would do on the Colab runtime recorded in tests/data/colab/ (Python 3.13, Ubuntu 22.04): nothing
Colab has may change version (except labkit.colab.ALLOW, empty today) and every requirement of
the installed packages must be met. Two builds on Colab are not on PyPI as wheels for it, so a
metadata-only stand-in wheel of the same name and version takes their place (their own
requirements are already installed on Colab, held by the constraints like everything else):
torch 2.11.0+cu128 (PyTorch's CUDA 12.8 build; PyPI's torch 2.11.0 is another build, which needs
CUDA 13 packages) and antlr4-python3-runtime 4.9.3 (PyPI has only its source; Colab built it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import jupytext
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from labkit import colab

ROOT = Path(__file__).resolve().parent.parent
FREEZE = ROOT / "tests" / "data" / "colab" / "pip-freeze.gpu.txt"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
PYTHON = "3.13.15"  # tests/data/colab/os-info-gpu.txt; Ubuntu 22.04 has glibc 2.35
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + ["manylinux2014_x86_64"]
STAND_INS = {"torch": "2.11.0+cu128", "antlr4-python3-runtime": "4.9.3"}
# Requirements of the --no-deps packages (requirements/colab-no-deps.txt) that Colab does not meet,
# on purpose: see that file for why trl 1.16 works with Colab's datasets 4.0.0 and pyarrow 18.1.0.
WAIVED = {("trl", "datasets"), ("trl", "pyarrow")}


def freeze_versions() -> dict[str, str]:
    pins = [line.split("==") for line in FREEZE.read_text(encoding="utf-8").splitlines() if "==" in line]
    return {canonicalize_name(name): version for name, version in pins}


def stand_in_wheel(folder: Path, name: str, version: str) -> None:
    """A wheel with only metadata, so pip can resolve against a build PyPI does not serve."""
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist}.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}.dist-info/RECORD", "")


def resolve(tmp: Path, *args: str) -> list[dict]:
    """pip's dry run for Colab's Python and platform: the report's installed items."""
    report = tmp / f"report-{len(list(tmp.glob('report-*')))}.json"
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--disable-pip-version-check", "--report", str(report), "--python-version", PYTHON[:4],
               *platforms, "--only-binary=:all:", "--target", str(tmp / "target"),  # nothing is written there
               "--find-links", str(tmp / "stand-ins"), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    noise = ("WARNING: Location", "Collecting", "  Using", "  Downloading", "Looking")
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and not line.startswith(noise)]
    assert done.returncode == 0, "pip cannot resolve the Colab path:\n" + "\n".join(said[-20:])
    return json.loads(report.read_text(encoding="utf-8"))["install"]


def unmet(items: list[dict], versions: dict[str, str]) -> set[tuple[str, str]]:
    """(package, requirement name) for each requirement of `items` that `versions` does not meet."""
    environment = {**default_environment(), "python_version": PYTHON[:4], "python_full_version": PYTHON,
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    missing = set()
    for item in items:
        for line in item["metadata"].get("requires_dist", []):
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            have = versions.get(canonicalize_name(requirement.name))
            if have is None or not requirement.specifier.contains(Version(have), prereleases=True):
                missing.add((canonicalize_name(item["metadata"]["name"]), canonicalize_name(requirement.name)))
    return missing


def test_colab_resolution(tmp_path):
    """Resolve the Colab path against the recorded runtime: what changes, and is everything met?"""
    started = time.monotonic()
    (tmp_path / "stand-ins").mkdir()
    for name, version in STAND_INS.items():
        stand_in_wheel(tmp_path / "stand-ins", name, version)
    recorded = freeze_versions()
    assert {name: recorded[name] for name in STAND_INS} == STAND_INS, "update STAND_INS to the recorded freeze"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(colab.protected_constraints(FREEZE.read_text().splitlines())) + "\n")

    resolved = resolve(tmp_path, "-r", str(ROOT / colab.REQUIREMENTS), "-c", str(constraints))
    no_deps = resolve(tmp_path, "--no-deps", "-r", str(ROOT / colab.NO_DEPS_REQUIREMENTS))
    versions = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in resolved + no_deps}
    changes = {name: (recorded.get(name), new) for name, new in sorted(versions.items()) if recorded.get(name) != new}
    print(f"\nColab path, {time.monotonic() - started:.1f} s: " +
          ", ".join(f"{name} {old or '(new)'} -> {new}" for name, (old, new) in changes.items()))

    changed = {name for name, (old, _) in changes.items() if old is not None}
    assert changed <= colab.ALLOW, f"the Colab path would change what Colab ships: {changed - colab.ALLOW}"
    assert not unmet(resolved, {**recorded, **versions})  # pip's own promise, checked anyway
    assert unmet(no_deps, {**recorded, **versions}) == WAIVED
    # Everything the kit depends on (but the venv-only extras) is on Colab or added by the Colab path.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = {canonicalize_name(Requirement(line).name)
              for line in project["dependencies"] + project["optional-dependencies"]["gpu"]}
    assert needed - set(recorded) - set(versions) == set()


# --- protected_constraints -----------------------------------------------------------------------

def test_constraints_pin_every_installed_package_except_the_allowed():
    freeze = ["# a comment", "", "numpy==2.1.3", "torch==2.11.0+cu128", "Jupyter_Client==7.4.9",
              "google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz",
              "# Editable install with no version control (labkit==0.1.0)", "-e /content/labkit-course"]
    assert colab.protected_constraints(freeze, allow=["jupyter-client"]) == [
        "numpy==2.1.3", "torch==2.11.0+cu128", "google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz"]
    assert colab.protected_constraints(freeze, allow=[])[2] == "Jupyter_Client==7.4.9"


def test_constraints_from_the_recorded_freeze():
    lines = FREEZE.read_text(encoding="utf-8").splitlines()
    constraints = colab.protected_constraints(lines)
    assert len(constraints) == sum(1 for line in lines if line and not line.startswith("#"))
    assert "torch==2.11.0+cu128" in constraints and "ipykernel==6.17.1" in constraints


# --- install and restart_needed --------------------------------------------------------------------

def test_install_holds_what_is_installed_and_installs_the_kit_without_dependencies(monkeypatch, tmp_path):
    calls, seen_constraints = [], []
    versions = iter([{"numpy": "2.1.3", "labkit": "0.1.0"},
                     {"numpy": "2.1.3", "labkit": "0.1.0", "trl": "1.16.0"}])

    def fake_pip(python, *args):
        calls.append(args)
        if "-c" in args:
            seen_constraints.append(Path(args[args.index("-c") + 1]).read_text())
        return "numpy==2.1.3\ntorch==2.11.0+cu128\n" if args[0] == "freeze" else ""

    monkeypatch.setattr(colab, "_pip", fake_pip)
    monkeypatch.setattr(colab, "installed_versions", lambda python: next(versions))
    assert colab.install(tmp_path) == {"trl": (None, "1.16.0")}
    installs = [args for args in calls if args[0] == "install"]
    assert installs == [("install", "-r", str(tmp_path / colab.REQUIREMENTS), "-c", installs[0][-1]),
                        ("install", "--no-deps", "-r", str(tmp_path / colab.NO_DEPS_REQUIREMENTS)),
                        ("install", "--no-deps", "-e", str(tmp_path))]
    assert seen_constraints == ["numpy==2.1.3\ntorch==2.11.0+cu128\n"]


def test_restart_needed_only_for_upgraded_packages_already_imported():
    changed = {"numpy": ("2.1.3", "2.4.6"), "pyyaml": ("6.0.2", "6.0.3"), "trl": (None, "1.16.0"),
               "pandas": ("2.2.3", "2.3.0")}
    modules = {"numpy": {"numpy"}, "pyyaml": {"yaml"}, "trl": {"trl"}, "pandas": {"pandas"}}
    assert colab.restart_needed(changed, ["numpy.linalg", "yaml", "trl", "os"], modules) == ["numpy", "pyyaml"]
    assert colab.restart_needed(changed, ["os", "sys"], modules) == []
    assert colab.restart_needed({}, sys.modules) == []


def test_modules_of_reads_the_installed_metadata():
    assert "yaml" in colab.modules_of(["PyYAML"])["PyYAML"]
    assert colab.modules_of(["not-installed-pkg"]) == {"not-installed-pkg": {"not_installed_pkg"}}


def test_setup_cell_says_when_to_restart(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(colab, "install", lambda kit_root: {"pytest": ("1.0", "2.0")})
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert colab.setup_cell(tmp_path) is True
    assert "重启会话" in capsys.readouterr().out and str(tmp_path.resolve()) in sys.path
    monkeypatch.setattr(colab, "install", lambda kit_root: {"trl": (None, "1.16.0")})
    assert colab.setup_cell(tmp_path) is False
    assert "不需要重启" in capsys.readouterr().out


# --- badges and setup cells ------------------------------------------------------------------------

SCRIPT = '''# %% [markdown]
# # 实验 99：标题
#
# 正文

# %% tags=["parameters"]
PROFILE = "auto"
'''


def test_badge_and_setup_cell_are_added_once_and_follow_the_url():
    url, other = "https://github.com/a/b", "https://github.com/fork/c"
    text = colab.add_to_script(SCRIPT, url, "99_x")
    assert colab.add_to_script(text, url, "99_x") == text
    cells = jupytext.reads(text, fmt="py:percent").cells
    assert colab.badge(url, "99_x") in cells[0].source.splitlines()
    assert colab.badge(url, "99_x").endswith("(https://colab.research.google.com/github/a/b/blob/main/notebooks/"
                                             "99_x.ipynb)")
    assert (cells[1].source, cells[1].metadata["tags"]) == (colab.setup_cell_source(url), [colab.SETUP_TAG])
    assert cells[2].metadata["tags"] == ["parameters"]
    moved = colab.add_to_script(text, other, "99_x")
    assert moved == text.replace(url, other).replace("github/a/b/", "github/fork/c/")
    # the same rewrite inside an .ipynb (JSON-escaped quotes)
    notebook = json.dumps({"cells": [{"source": c.source} for c in cells]})
    assert json.loads(colab.rewrite_urls(notebook, other, "99_x")) == \
        {"cells": [{"source": c.source} for c in jupytext.reads(moved, fmt="py:percent").cells]}


def test_write_badges_rewrites_a_fork(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "pyproject.toml").write_text('[project.urls]\nRepository = "https://github.com/fork/c"\n')
    (tmp_path / "notebooks" / "99_x.py").write_text(colab.add_to_script(SCRIPT, "https://github.com/a/b", "99_x"))
    (tmp_path / "README.md").write_text(f"# Kit\n\n{colab.badge('https://github.com/a/b', colab.README_NOTEBOOK)}\n")
    assert colab.write_badges(tmp_path) == [tmp_path / "notebooks" / "99_x.py", tmp_path / "README.md"]
    assert colab.write_badges(tmp_path) == []
    assert "github.com/a/b" not in (tmp_path / "notebooks" / "99_x.py").read_text()
    assert colab.badge("https://github.com/fork/c", colab.README_NOTEBOOK) in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("script", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_the_canonical_badge_and_setup_cell(script):
    """Exactly what `python -m labkit.colab badges` writes, for the URL in pyproject.toml."""
    url, text = colab.repo_url(), script.read_text(encoding="utf-8")
    assert colab.add_to_script(text, url, script.stem) == text, (
        f"{script.name}: badge or setup cell out of date: run `python -m labkit.colab badges`")
    first, setup = jupytext.reads(text, fmt="py:percent").cells[:2]
    assert colab.badge(url, script.stem) in first.source and setup.source == colab.setup_cell_source(url)


FAKE_GIT = """#!{python}
import os, pathlib, sys
pathlib.Path(os.environ["FAKE_GIT_LOG"]).write_text(" ".join(sys.argv[1:]))
kit = pathlib.Path(sys.argv[-1], "labkit")
kit.mkdir(parents=True)
(kit / "__init__.py").write_text("")
(kit / "colab.py").write_text("def setup_cell(kit):\\n    print('setup_cell', kit)\\n")
"""


def test_setup_cell_clones_once_and_calls_labkit_colab(tmp_path):
    """The cell where labkit does not import (python -S: no site-packages), with a fake git: it clones
    LABKIT_REPO at LABKIT_REF, imports labkit.colab from the clone and calls setup_cell; a second
    run reuses the clone."""
    (tmp_path / "bin").mkdir()
    git = tmp_path / "bin" / "git"
    git.write_text(FAKE_GIT.format(python=sys.executable))
    git.chmod(0o755)
    kit = tmp_path / "kit"
    source = colab.setup_cell_source("https://github.com/a/b").replace(colab.CLONE_DIR, str(kit))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "LABKIT_REPO": "https://example.org/fork.git", "LABKIT_REF": "dev",
           "COLAB_RELEASE_TAG": "release-colab-20260819"}
    for run in ("first", "second"):
        env["FAKE_GIT_LOG"] = str(tmp_path / f"{run}.log")
        done = subprocess.run([sys.executable, "-S", "-c", source], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True)
        assert done.stdout == f"setup_cell {kit}\n"
    assert (tmp_path / "first.log").read_text() == f"clone -q --depth 1 --branch dev https://example.org/fork.git {kit}"
    assert not (tmp_path / "second.log").exists()


def test_setup_cell_off_colab_says_which_kernel_to_use(tmp_path):
    """A local Jupyter kernel without labkit (another Python): no clone, no install into it, but an
    error that names `python3 lab.py lab`."""
    source = colab.setup_cell_source("https://github.com/a/b").replace(colab.CLONE_DIR, str(tmp_path / "kit"))
    done = subprocess.run([sys.executable, "-S", "-c", source], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "python3 lab.py lab" in done.stderr
    assert not (tmp_path / "kit").exists()


def test_readme_badge_follows_the_url():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert colab.badge(colab.repo_url(), colab.README_NOTEBOOK) in readme
    assert colab.rewrite_urls(readme, colab.repo_url(), colab.README_NOTEBOOK) == readme


def test_importing_labkit_colab_loads_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import labkit.colab; "
            "print('\\n'.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout.split()
    assert set(loaded) - set(sys.stdlib_module_names) == {"labkit"}


def test_a_failed_install_can_be_retried(monkeypatch, tmp_path):
    """After a failure (PyPI unreachable, say) the kit is off sys.path again, so rerunning the cell
    does not find `labkit` and installs again."""
    def fail(kit_root):
        raise RuntimeError("pip install failed")

    monkeypatch.setattr(colab, "install", fail)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    kit_modules = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "labkit"}
    try:
        with pytest.raises(RuntimeError):
            colab.setup_cell(tmp_path)
        assert str(tmp_path) not in sys.path and "labkit" not in sys.modules and "labkit.colab" not in sys.modules
    finally:
        sys.modules.update(kit_modules)
