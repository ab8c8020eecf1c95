#!/usr/bin/env python3
"""The kit's two commands. Standard library only, so it runs on a fresh machine with just Python.

    python3 lab.py course [NOTEBOOKS...] [--profile auto|cpu|t4|24gb|80gb] [-p NAME=VALUE]
                          [--refresh-stages]                                 run the labs
    python3 lab.py test   [PYTEST ARGS...]                                    run the tests

`--refresh-stages` (instructors) first rebuilds the kit's shipped cpu stages whose recipe
changed and writes them to data/stages/cpu/ (python -m labkit.stages ship).

Both first make sure the pinned environment is installed:
- on a plain machine: a virtual environment in .venv/ (created once, reused afterwards);
- inside an active venv / conda env, or on Colab: that environment itself.
torch is only installed when missing: Colab's and AutoDL's CUDA builds are never replaced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH_PIN = "2.13.0"


def in_managed_env() -> bool:
    """An environment the user chose: an active venv, a conda env, Colab, or LABKIT_NO_VENV=1."""
    colab = "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ
    return (sys.prefix != sys.base_prefix or "CONDA_PREFIX" in os.environ or colab
            or os.environ.get("LABKIT_NO_VENV") == "1")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def install(python: str, extras: list[str]) -> None:
    """pip-install the kit (editable) with `extras`; skipped when nothing changed since last time."""
    probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    has_torch = probe.returncode == 0
    if not has_torch:
        extras = [*extras, "torch"]
    elif not probe.stdout.startswith(TORCH_PIN):
        print(f"keeping the installed torch {probe.stdout.strip()} (the kit pins {TORCH_PIN}; "
              "a preinstalled CUDA build is never replaced)")
    if shutil.which("nvidia-smi"):
        extras = [*extras, "gpu"]  # bitsandbytes, for 4-bit QLoRA
    stamp_dir = Path(subprocess.run([python, "-c", "import sys; print(sys.prefix)"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    stamp = stamp_dir / ".labkit-install"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                            + ",".join(sorted(extras)).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "-e", f"{ROOT}[{','.join(sorted(set(extras)))}]"])
    try:
        stamp.write_text(digest)
    except OSError:
        pass  # a read-only environment: we simply reinstall-check next time


def ensure_env(extras: list[str]) -> str:
    """The interpreter to use, with the kit installed into it."""
    if in_managed_env():
        python = sys.executable
    else:
        if not venv_python().exists():
            print(f"creating a virtual environment in {VENV.name}/", flush=True)
            venv.create(VENV, with_pip=True)
        python = str(venv_python())
    install(python, extras)
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("course", "test"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if command == "course":
        python = ensure_env(["lab"])
        profile = rest[rest.index("--profile") + 1] if "--profile" in rest else "auto"
        if "--refresh-stages" in rest:
            rest.remove("--refresh-stages")
            run([python, "-m", "labkit.stages", "ship"], cwd=ROOT)
        # Make sure the stages are there first (shipped on cpu, built once elsewhere), so each
        # notebook's time is its own; then run the notebooks.
        run([python, "-m", "labkit.stages", "build", "--profile", profile], cwd=ROOT)
        return subprocess.run([python, "-m", "labkit.course", *rest], cwd=ROOT).returncode
    python = ensure_env(["test"])
    # Each notebook is executed once, by tests/test_notebooks.py (papermill), which also compares
    # its marked outputs and its metrics with the committed notebook.
    return subprocess.run([python, "-m", "pytest", "tests", "-p", "no:cacheprovider", *rest],
                          cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
