"""Google Colab: install the kit beside what Colab ships, without replacing any of it.

Standard library only: the notebooks' first code cell runs this before anything is installed.

Colab's runtime already has a CUDA torch, numpy, pandas, transformers, datasets, peft, accelerate
and its own Jupyter stack (ipykernel 6, jupyter-client 7, notebook 6, ipywidgets 7), which
google-colab, numba, cudf and gradio pin; upgrading them under a running kernel can crash it. So
on Colab the kit installs only what Colab lacks (requirements/colab.txt) while a constraints file
made from the live `pip freeze` holds every installed package at its version (ALLOW lists the
exceptions: none today); then trl (requirements/colab-no-deps.txt says why without dependencies)
and the kit itself, editable, without dependencies.

    python -m labkit.colab install [--dry-run]   # what the notebooks' setup cell runs on Colab
    python -m labkit.colab badges                # rewrite badges and setup cells from pyproject's URL

The repository URL lives in one place, pyproject.toml's [project.urls] Repository; `badges`
copies it into the README badge and into every notebook's badge and setup cell (.py and .ipynb).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

KIT_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path("requirements/colab.txt")
NO_DEPS_REQUIREMENTS = Path("requirements/colab-no-deps.txt")
# Installed packages the kit may upgrade on Colab (normalized names). Keep it empty if possible.
ALLOW: frozenset[str] = frozenset()
# Where the notebooks' setup cell clones the repository on Colab.
CLONE_DIR = "/content/labkit-course"
SETUP_TAG = "colab-setup"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
README_NOTEBOOK = "00_environment"  # the notebook the README's badge opens
RESTART_HINT = "Colab 菜单 代码执行程序 → 重启会话 (Runtime → Restart session)"

Changes = dict[str, tuple[str | None, str]]  # distribution -> (old version or None when new, new version)


def normalize(name: str) -> str:
    """PEP 503 name: `PyYAML`, `jupyter_client` -> `pyyaml`, `jupyter-client`."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- pinning what is installed -----------------------------------------------------------------

def protected_constraints(freeze_lines: Iterable[str], allow: Iterable[str] = ALLOW) -> list[str]:
    """pip constraint lines that hold every package of `pip freeze` where it is, except `allow`.

    `torch==2.11.0+cu128` stays exact, local label included: only the installed build satisfies
    it (PyPI's torch 2.11.0 is another build), so pip keeps it or fails instead of swapping it.
    `name @ url` stays as it is (only that artifact). Comments and `-e` lines (editable projects,
    the kit itself) are skipped.
    """
    allowed = {normalize(name) for name in allow}
    lines = []
    for raw in freeze_lines:
        line = raw.strip()
        if not line or line.startswith(("#", "-")):
            continue
        name = re.split(r"\s*(?:==|@)", line, maxsplit=1)[0]
        if normalize(name) not in allowed:
            lines.append(line)
    return lines


def _pip(python: str, *args: str) -> str:
    """Run pip; its stdout, or a RuntimeError with the end of what it said (a conflict's cause)."""
    command = [python, "-m", "pip", *args, "--disable-pip-version-check"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and not line.lstrip().startswith(("Requirement already", "Collecting", "Using",
                                                                   "Downloading", "WARNING: Location"))]
        raise RuntimeError(f"pip {' '.join(args)} failed:\n" + "\n".join(said[-25:]))
    return done.stdout


def installed_versions(python: str = sys.executable) -> dict[str, str]:
    """Normalized distribution name -> version, for the environment of `python`."""
    listed = json.loads(_pip(python, "list", "--format=json"))
    return {normalize(d["name"]): d["version"] for d in listed}


def diff_versions(before: Mapping[str, str], after: Mapping[str, str]) -> Changes:
    """What is new or has another version in `after`."""
    return {name: (before.get(name), version) for name, version in sorted(after.items())
            if before.get(name) != version}


def install(kit_root: Path | str = KIT_ROOT, dry_run: bool = False, python: str = sys.executable) -> Changes:
    """Install the kit into the running Colab environment; returns and prints what changed.

    1. requirements/colab.txt with every installed package constrained to its version (see
       protected_constraints; ALLOW is exempt); 2. requirements/colab-no-deps.txt with --no-deps;
    3. the kit itself, editable, with --no-deps. With `dry_run`, pip only reports (no step 3).
    """
    kit_root = Path(kit_root)
    before = installed_versions(python)
    constraints = protected_constraints(_pip(python, "freeze", "--all").splitlines())
    with tempfile.TemporaryDirectory() as tmp:
        constraints_file = Path(tmp, "colab-constraints.txt")
        constraints_file.write_text("\n".join(constraints) + "\n", encoding="utf-8")
        steps = [["-r", str(kit_root / REQUIREMENTS), "-c", str(constraints_file)],
                 ["--no-deps", "-r", str(kit_root / NO_DEPS_REQUIREMENTS)]]
        if dry_run:
            after = dict(before)
            for i, step in enumerate(steps):
                report = Path(tmp, f"report-{i}.json")
                print("+ pip install --dry-run", " ".join(step), flush=True)
                _pip(python, "install", "--dry-run", "--report", str(report), *step)
                after.update({normalize(item["metadata"]["name"]): item["metadata"]["version"]
                              for item in json.loads(report.read_text(encoding="utf-8"))["install"]})
        else:
            for step in [*steps, ["--no-deps", "-e", str(kit_root)]]:
                print("+ pip install", " ".join(step), flush=True)
                _pip(python, "install", *step)
            after = installed_versions(python)
    changes = diff_versions(before, after)
    if not dry_run:
        changes.pop("labkit", None)  # the kit itself, always reinstalled
    if not changes:
        print("[labkit] nothing to install: the kit's requirements were already there")
    else:
        print("[labkit] pip would change:" if dry_run else "[labkit] installed:")
    for name, (old, new) in changes.items():
        print(f"  {name} {old or '(new)'} -> {new}")
    return changes


# --- does the running kernel need a restart? -------------------------------------------------

def modules_of(distributions: Iterable[str]) -> dict[str, set[str]]:
    """Top-level modules each distribution provides (from the installed metadata; `yaml` for PyYAML)."""
    importlib.invalidate_caches()
    provided: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            provided.setdefault(normalize(dist), set()).add(module)
    return {name: provided.get(normalize(name), {normalize(name).replace("-", "_")}) for name in distributions}


def restart_needed(changed: Mapping[str, tuple[str | None, str]], loaded_modules: Iterable[str],
                   modules: Mapping[str, set[str]] | None = None) -> list[str]:
    """Packages that got another version after the kernel had imported them (sorted; empty: no restart).

    `changed` as install() returns it (new packages cannot be stale); `loaded_modules` is
    sys.modules; `modules` maps a distribution to its top-level modules (default: modules_of).
    """
    upgraded = [name for name, (old, _new) in changed.items() if old is not None]
    modules = modules_of(upgraded) if modules is None else modules
    loaded = {name.split(".")[0] for name in loaded_modules}
    return sorted(name for name in upgraded if modules.get(name, set()) & loaded)


def setup_cell(kit_root: Path | str = CLONE_DIR) -> bool:
    """What a notebook's setup cell runs on Colab once it has cloned the kit: put it on sys.path,
    install() it, and say whether the session must restart. Returns whether it must."""
    kit_root = Path(kit_root).resolve()
    if str(kit_root) not in sys.path:
        sys.path.insert(0, str(kit_root))
    try:
        changes = install(kit_root)
    except Exception:  # forget the kit, so that running the cell again tries again
        sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != kit_root]
        for name in [name for name in sys.modules if name.split(".")[0] == "labkit"]:
            del sys.modules[name]
        raise
    stale = restart_needed(changes, sys.modules)
    if stale:
        print(f"[labkit] 请重启会话：{RESTART_HINT}，然后从头运行。\n"
              f"         Restart the session now: the running kernel had already imported {', '.join(stale)}.")
    else:
        print("[labkit] 安装完成，不需要重启会话，继续运行下面的单元。 (Done; no restart needed.)")
    return bool(stale)


# --- the URL, the badges and the setup cells ---------------------------------------------------

def repo_url(kit_root: Path = KIT_ROOT) -> str:
    """pyproject.toml's [project.urls] Repository: the one place the repository URL is written."""
    with open(kit_root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def colab_link(url: str, notebook: str) -> str:
    """Colab's address for notebooks/<notebook>.ipynb on the main branch of GitHub repo `url`."""
    owner_repo = re.sub(r"^https://github\.com/|\.git$", "", url)
    return f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{notebook}.ipynb"


def badge(url: str, notebook: str) -> str:
    """The markdown "Open in Colab" badge for one notebook."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_link(url, notebook)})"


def setup_cell_source(url: str) -> str:
    """The code cell every notebook has before its parameters cell (no-op wherever labkit imports)."""
    return f'''\
# Colab：第一次运行时下载课程仓库，只安装 Colab 缺少的包（不动它自带的 torch、numpy、pandas、ipykernel）。
# 本机、CI 或已经装好时，这一格什么也不做。换仓库 / 分支：先设环境变量 LABKIT_REPO / LABKIT_REF。
try:
    import labkit
except ImportError:
    import os, subprocess, sys
    if "COLAB_RELEASE_TAG" not in os.environ:  # not Colab: this kernel is a Python without the kit
        raise ImportError("这个内核里没有 labkit：在课程目录运行 `python3 lab.py lab`，用 'Python 3 (labkit, …)' 内核") from None
    KIT, REPO = "{CLONE_DIR}", os.environ.get("LABKIT_REPO", "{url}")
    if not os.path.isdir(KIT):
        ref = os.environ.get("LABKIT_REF", "main")
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", ref, REPO, KIT], check=True)
    sys.path.insert(0, KIT)
    from labkit.colab import setup_cell
    setup_cell(KIT)'''


_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)\s]*\)\]\([^)\s]*\)")
_CELL_URL_RE = re.compile(r'(os\.environ\.get\(\\?"LABKIT_REPO\\?", \\?")[^"\\]*')
_SETUP_CELL_RE = re.compile(rf'^# %% tags=\["{SETUP_TAG}"\]\n.*?(?=\n\n# %%)', re.M | re.S)


def rewrite_urls(text: str, url: str, notebook: str) -> str:
    """Point the Colab badge and the setup cell's URL in `text` (.py, .ipynb JSON, README) at `url`."""
    text = _BADGE_RE.sub(lambda _: badge(url, notebook), text)
    return _CELL_URL_RE.sub(lambda m: m.group(1) + url, text)


def add_to_script(text: str, url: str, notebook: str) -> str:
    """A jupytext percent script with the badge under its title and the setup cell before `parameters`."""
    if not _BADGE_RE.search(text):  # the badge goes under the first markdown cell's title line
        title = re.search(r"^# %% \[markdown\]\n# #[^\n]*\n", text, re.M)
        if title is None:
            raise ValueError(f"{notebook}: no markdown cell starting with a title")
        text = text[:title.end()] + f"#\n# {badge(url, notebook)}\n" + text[title.end():]
    cell = f'# %% tags=["{SETUP_TAG}"]\n{setup_cell_source(url)}'
    if _SETUP_CELL_RE.search(text):
        text = _SETUP_CELL_RE.sub(lambda _: cell, text)
    else:
        parameters = text.index('# %% tags=["parameters"]')
        text = text[:parameters] + cell + "\n\n" + text[parameters:]
    return rewrite_urls(text, url, notebook)


def write_badges(kit_root: Path = KIT_ROOT) -> list[Path]:
    """Bring the README badge and every notebook's badge and setup cell in line with repo_url()."""
    url, changed = repo_url(kit_root), []
    for path in sorted((kit_root / "notebooks").glob("[0-9][0-9]_*.*")):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            new = add_to_script(text, url, path.stem)
        elif path.suffix == ".ipynb":
            new = rewrite_urls(text, url, path.stem)
        else:
            continue
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    readme = kit_root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if rewrite_urls(text, url, README_NOTEBOOK) != text:
        readme.write_text(rewrite_urls(text, url, README_NOTEBOOK), encoding="utf-8")
        changed.append(readme)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.colab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("install", help="install the kit into this (Colab) environment")
    run.add_argument("--dry-run", action="store_true", help="only show what pip would change")
    commands.add_parser("badges", help="rewrite the Colab badges and setup cells from pyproject's Repository URL")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(KIT_ROOT, dry_run=args.dry_run)
        return 0
    for path in write_badges():
        print(f"rewrote {path.relative_to(KIT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
