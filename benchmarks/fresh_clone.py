"""Benchmark (not a test): the README's two commands on a fresh clone, timed with a breakdown.

    python3 benchmarks/fresh_clone.py                 # clone HEAD, then: lab.py test; lab.py course 01; lab.py course
    python3 benchmarks/fresh_clone.py --kernels avx2  # the same with another CPU's kernels emulated
    python3 benchmarks/fresh_clone.py --only test     # just one of: test, course01, course

Standard library only (it runs before anything is installed). The clone starts with no .venv and
no cache, as CI does (`.ci/run` sets the same cache variables). Breakdown:
- `lab.py test`: install (everything before pytest starts) and pytest's own time, split into the
  notebook executions (tests marked `notebook`) and everything else (from pytest's JUnit XML);
- `lab.py course 01` and `lab.py course`: run after the install, with an empty cache; the stage
  check (`labkit.stages build`) and each notebook's seconds (from summary.json).
Writes benchmarks/fresh_clone-<kernels>.json (each step with the commit it ran on, earlier steps kept) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, int]:
    """Run `cmd`, output to `log`; (seconds, exit status)."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return round(time.perf_counter() - start, 1), code


def ci_env(clone: Path, kernels: str) -> dict:
    """The environment .ci/run gives the test command (caches inside the clone), plus kernels."""
    cache = clone / ".cache"
    env = {**os.environ, "LABKIT_CACHE": str(cache / "labkit"), "HF_HOME": str(cache / "huggingface"),
           "MPLCONFIGDIR": str(cache / "matplotlib"), "IPYTHONDIR": str(cache / "ipython"),
           "JUPYTER_CONFIG_DIR": str(cache / "jupyter/config"), "JUPYTER_DATA_DIR": str(cache / "jupyter/data"),
           "JUPYTER_RUNTIME_DIR": str(cache / "jupyter/runtime"), "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    return {**env, **(AVX2 if kernels == "avx2" else {})}


def test_breakdown(junit: Path) -> dict:
    """pytest's seconds in total, in notebook executions and in everything else; test counts."""
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = suite.findall("testcase")
    notebook = sum(float(c.get("time", 0)) for c in cases if "test_notebook_runs_on_cpu" in c.get("name", ""))
    failed = sum(1 for c in cases if c.find("failure") is not None or c.find("error") is not None)
    per_notebook = {c.get("name").split("[")[1].rstrip("]"): round(float(c.get("time", 0)), 1)
                    for c in cases if "test_notebook_runs_on_cpu" in c.get("name", "")}
    return {"pytest_s": round(float(suite.get("time", 0)), 1), "notebook_tests_s": round(notebook, 1),
            "other_tests_s": round(float(suite.get("time", 0)) - notebook, 1), "tests": len(cases),
            "failed": failed, "skipped": int(suite.get("skipped", 0)), "per_notebook_s": per_notebook}


def course_breakdown(clone: Path, log: Path) -> dict:
    """Seconds of the stage check and of each notebook, from the log and notebooks/summary.json."""
    stages = [line.split()[1] for line in log.read_text(encoding="utf-8").splitlines()
              if len(line.split()) >= 3 and line.split()[0] in ("base", "sft", "rm", "grpo") and line.split()[2] == "s"]
    summary = json.loads((clone / "notebooks" / "summary.json").read_text(encoding="utf-8"))
    return {"stage_check_s": round(sum(float(s) for s in stages), 1),
            "notebooks_s": {r["notebook"]: r["seconds"] for r in summary},
            "failed": [r["notebook"] for r in summary if r["status"] != "ok"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", choices=["native", "avx2"], default="native")
    parser.add_argument("--only", choices=["test", "course01", "course"], action="append")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args(argv)
    steps = args.only or ["test", "course01", "course"]
    work = Path(tempfile.mkdtemp(prefix="labkit-fresh-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout.strip()
    env = ci_env(clone, args.kernels)
    result: dict = {"commit": commit, "kernels": args.kernels, "date": time.strftime("%Y-%m-%d"),
                    "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if "test" in steps:
        seconds, code = timed([sys.executable, "lab.py", "test", f"--junitxml={work / 'junit.xml'}"], clone, env,
                              work / "test.log")
        result["test"] = {"commit": commit, "total_s": seconds, "exit": code, **test_breakdown(work / "junit.xml")}
        result["test"]["install_s"] = round(seconds - result["test"]["pytest_s"], 1)
    for step, names in (("course01", ["01"]), ("course", [])):
        if step not in steps:
            continue
        shutil.rmtree(clone / ".cache" / "labkit", ignore_errors=True)      # no cache: a fresh start
        if not (clone / ".venv").exists():                                   # install first, untimed
            timed([sys.executable, "lab.py", "test", "--co", "-q"], clone, env, work / "install.log")
        log = work / f"{step}.log"
        seconds, code = timed([sys.executable, "lab.py", "course", *names, "--profile", "cpu"], clone, env, log)
        result[step] = {"commit": commit, "total_s": seconds, "exit": code, **course_breakdown(clone, log)}
    out = BENCH_DIR / f"fresh_clone-{args.kernels}.json"
    previous = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    out.write_text(json.dumps({**previous, **result}, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
