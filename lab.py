#!/usr/bin/env python3
"""The kit's commands. Standard library only, so it runs on a fresh machine with just Python.

    python3 lab.py course [NOTEBOOKS...] [--profile auto|cpu|t4|24gb|80gb] [-p NAME=VALUE]
                          [--refresh-stages]                                 run the labs
    python3 lab.py test   [PYTEST ARGS...]                                    run the tests
    python3 lab.py lab    [JUPYTERLAB ARGS...]                 open the labs in JupyterLab

`--refresh-stages` (instructors) first rebuilds the kit's shipped cpu stages whose recipe
changed and writes them to data/stages/cpu/ (python -m labkit.stages ship).

All first make sure the pinned environment is installed:
- on a plain machine: a virtual environment in .venv/ (created once, reused afterwards);
- inside an active venv / conda env: that environment itself;
- on Colab: Colab's own packages are kept (labkit.colab installs only what the kit adds).
torch is only installed when missing: Colab's and AutoDL's CUDA builds are never replaced (pip
gets the installed torch as a constraint). A torch older than the kit needs stops with the
command that upgrades it. Python must be 3.11 or newer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH_PIN = "2.13.0"
# The oldest torch the pinned stack accepts: transformers 5.23 switches torch off below 2.6
# (transformers/utils/import_utils.py, is_torch_available), bitsandbytes 0.50.2 needs >= 2.4.
TORCH_MIN = (2, 6)
PYTHON_MIN = (3, 11)  # trl 1.16, transformers 5.23 and pandas 3.1 publish nothing for 3.10
KERNEL_NAME = "labkit"


def python_problem(version: tuple = tuple(sys.version_info[:3])) -> str | None:
    """Why this Python cannot run the kit (with what to do), or None if it can."""
    if tuple(version[:2]) >= PYTHON_MIN:
        return None
    have = ".".join(str(v) for v in version[:3])
    need = ".".join(str(v) for v in PYTHON_MIN)
    return (f"labkit needs Python >= {need} (trl 1.16, transformers 5.23 and pandas 3.1 have no "
            f"release for older ones); this is Python {have}.\n"
            f"  conda:  conda create -n labkit python={need} -y && conda activate labkit "
            f"&& python lab.py ...\n"
            f"          (or: conda env create -f environment.yml && conda activate labkit)\n"
            f"  other:  install Python {need}+ (e.g. `uv python install {need}`) and run "
            f"lab.py with it: python{need} lab.py ...")


def torch_problem(installed: str) -> str | None:
    """Why the installed torch cannot be kept (with the command that fixes it), or None."""
    release = installed.split("+")[0]
    try:
        parts = tuple(int(p) for p in release.split(".")[:2])
    except ValueError:
        return None  # a nightly or custom build: let pip and the libraries judge it
    if parts >= TORCH_MIN:
        return None
    local = installed.partition("+")[2]
    index = f" --index-url https://download.pytorch.org/whl/{local}" if local.startswith("cu") else ""
    need = ".".join(str(p) for p in TORCH_MIN)
    return (f"the installed torch {installed} is older than the kit needs (>= {need}: transformers "
            f"5.23 ignores older ones). labkit never replaces an installed torch itself; upgrade it "
            f"(same CUDA build) and run again:\n"
            f"  {Path(sys.executable).name} -m pip install torch=={TORCH_PIN}{index}\n"
            f"If the PyTorch index has no {TORCH_PIN} for {local or 'your build'}, pick the newest "
            f"torch >= {need} offered for your driver at https://pytorch.org/get-started/locally/.")


def on_colab() -> bool:
    return "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ


def in_managed_env() -> bool:
    """An environment the user chose: an active venv, a conda env, Colab, or LABKIT_NO_VENV=1."""
    return (sys.prefix != sys.base_prefix or "CONDA_PREFIX" in os.environ or on_colab()
            or os.environ.get("LABKIT_NO_VENV") == "1")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def env_prefix(python: str) -> Path:
    """sys.prefix of the environment `python` belongs to."""
    return Path(subprocess.run([python, "-c", "import sys; print(sys.prefix)"],
                               capture_output=True, text=True, check=True).stdout.strip())


class SetupError(RuntimeError):
    """The environment cannot be used as it is; the message says what to do."""


def install(python: str, extras: list[str]) -> None:
    """pip-install the kit (editable) with `extras`; skipped when nothing changed since last time.

    An installed torch is kept: pip gets it as a constraint, so no requirement can replace it.
    """
    probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    has_torch = probe.returncode == 0
    torch_version = probe.stdout.strip() if has_torch else ""
    if not has_torch:
        extras = [*extras, "torch"]
    else:
        problem = torch_problem(torch_version)
        if problem:
            raise SetupError(problem)
        if not torch_version.startswith(TORCH_PIN):
            print(f"keeping the installed torch {torch_version} (the kit pins {TORCH_PIN}; "
                  "a preinstalled CUDA build is never replaced)")
    if shutil.which("nvidia-smi"):
        extras = [*extras, "gpu"]  # bitsandbytes, for 4-bit QLoRA
    stamp = env_prefix(python) / ".labkit-install"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                            + ",".join(sorted(extras)).encode() + torch_version.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    keep_args = []
    if has_torch:  # a constraint file: no requirement may replace the installed torch
        handle, keep = tempfile.mkstemp(prefix="labkit-keep-torch-", suffix=".txt")
        with os.fdopen(handle, "w") as file:
            file.write(f"torch=={torch_version}\n")
        keep_args = ["-c", keep]
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *keep_args,
         "-e", f"{ROOT}[{','.join(sorted(set(extras)))}]"])
    try:
        stamp.write_text(digest)
    except OSError:
        pass  # a read-only environment: we simply reinstall-check next time


def ensure_env(extras: list[str]) -> str:
    """The interpreter to use, with the kit installed into it.

    On Colab the exact pins would upgrade packages the runtime depends on (numpy, pandas,
    ipykernel, ...): labkit.colab installs only what Colab lacks, with all it has held in place.
    """
    if on_colab():
        if "test" in extras:
            raise SetupError("the tests need the kit's exact pins, which would replace Colab's own "
                             "packages: run `python3 lab.py test` on your machine or CI, not on Colab")
        run([sys.executable, "-m", "labkit.colab", "install"], cwd=ROOT)
        return sys.executable
    if in_managed_env():
        python = sys.executable
    else:
        if not venv_python().exists():
            print(f"creating a virtual environment in {VENV.name}/", flush=True)
            venv.create(VENV, with_pip=True)
        python = str(venv_python())
    install(python, extras)
    return python


def kernel_command(python: str) -> list[str]:
    """Register the environment's Python as the Jupyter kernel "labkit" (inside that environment)."""
    return [python, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
            "--display-name", f"Python 3 (labkit, {Path(python).parent.parent.name})"]


def lab_command(python: str, args: list[str]) -> list[str]:
    """JupyterLab from the kit's environment, opening notebooks/, new notebooks on the labkit kernel."""
    return [python, "-m", "jupyterlab", f"--notebook-dir={ROOT / 'notebooks'}",
            f"--MultiKernelManager.default_kernel_name={KERNEL_NAME}", *args]


def lab_env(python: str) -> dict[str, str]:
    """The environment JupyterLab starts with: the kit environment's kernels are found first, so a
    notebook's "python3" kernel is that Python, never one from another installation."""
    env = dict(os.environ)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(env_prefix(python) / "share" / "jupyter"),
                                                      env.get("JUPYTER_PATH", "")) if p)
    return env


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("course", "test", "lab"):
        print(__doc__)
        return 2
    problem = python_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        python = ensure_env({"course": ["lab"], "lab": ["lab"], "test": ["test"]}[command])
    except SetupError as error:
        print(f"lab.py: {error}", file=sys.stderr)
        return 2
    if command == "lab":
        run(kernel_command(python), cwd=ROOT)
        return subprocess.run(lab_command(python, rest), cwd=ROOT, env=lab_env(python)).returncode
    if command == "course":
        profile = rest[rest.index("--profile") + 1] if "--profile" in rest else "auto"
        if "--refresh-stages" in rest:
            rest.remove("--refresh-stages")
            run([python, "-m", "labkit.stages", "ship"], cwd=ROOT)
        # On cpu, check the shipped stages first (so each notebook's time is its own); on a GPU,
        # a stage is built by the first lab that needs it, inside that lab's time plan.
        run([python, "-m", "labkit.stages", "prepare", "--profile", profile], cwd=ROOT)
        # From the caller's directory, so `-p MODEL_ID=./folder` means the folder they typed.
        return subprocess.run([python, "-m", "labkit.course", *rest]).returncode
    # Each notebook is executed once, by tests/test_notebooks.py (papermill), which also compares
    # its marked outputs and its metrics with the committed notebook.
    return subprocess.run([python, "-m", "pytest", "tests", "-p", "no:cacheprovider", *rest],
                          cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
