"""Benchmark (not a test): labkit import times and notebook wall times on the "cpu" profile.

    python benchmarks/bench.py                        # imports + every notebook
    python benchmarks/bench.py --skip-notebooks       # imports only (seconds)
    python benchmarks/bench.py --notebooks 00 01_sft  # imports + these notebooks

Each import is timed in a fresh interpreter (the time of the `import` statement itself, not
interpreter start-up), REPEATS times; the table shows the median. Notebooks run once through
`labkit.course.run_notebooks` into a temporary directory (the committed notebooks are not
touched); their time is the runner's wall time, kernel start included. Prints markdown tables
and writes benchmarks/results.json. Run it with OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "results.json"
REPEATS = 5

_TIMER = "import importlib, time; t = time.perf_counter(); importlib.import_module({name!r}); print(time.perf_counter() - t)"


def labkit_modules() -> list[str]:
    """"labkit" and every labkit.<module> (one per .py file in labkit/)."""
    names = sorted(p.stem for p in (REPO / "labkit").glob("*.py") if p.stem not in ("__init__", "__main__"))
    return ["labkit"] + [f"labkit.{name}" for name in names]


def time_import(module: str, repeats: int = REPEATS) -> dict:
    """Median and min seconds of `import module` in fresh interpreters, or the error if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _TIMER.format(name=module)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["(no error output)"]
            return {"module": module, "median_s": None, "min_s": None, "error": lines[-1]}
        runs.append(float(done.stdout.strip().splitlines()[-1]))
    return {"module": module, "median_s": round(statistics.median(runs), 4), "min_s": round(min(runs), 4),
            "error": None}


def time_notebooks(names: list[str] | None) -> list[dict]:
    """Run notebooks on the cpu profile in a temp dir; one summary record each (see labkit.course)."""
    from labkit.course import CourseError, run_notebooks

    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        try:
            return run_notebooks(names, profile="cpu", out_dir=tmp, summary_path=Path(tmp, "summary.json"))
        except CourseError as error:
            print(f"notebooks skipped: {error}", file=sys.stderr)
            return []


def markdown(imports: list[dict], notebooks: list[dict]) -> str:
    lines = ["| import | median s | min s |", "|---|---:|---:|"]
    for row in imports:
        if row["error"]:
            lines.append(f"| `{row['module']}` | failed: {row['error']} | |")
        else:
            lines.append(f"| `{row['module']}` | {row['median_s']:.3f} | {row['min_s']:.3f} |")
    if notebooks:
        lines += ["", "| notebook (cpu) | status | wall s |", "|---|---|---:|"]
        lines += [f"| {r['notebook']} | {r['status']} | {r['seconds']:.1f} |" for r in notebooks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time labkit imports and the notebooks on the cpu profile.")
    parser.add_argument("--notebooks", nargs="+", metavar="NAME", help='notebooks to run ("01", "01_sft"); default all')
    parser.add_argument("--skip-notebooks", action="store_true", help="time the imports only")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # `python benchmarks/bench.py` from a checkout finds labkit

    imports = [time_import(module) for module in labkit_modules()]
    notebooks = [] if args.skip_notebooks else time_notebooks(args.notebooks)
    results = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "repeats": REPEATS,
        "imports": imports,
        "notebooks": [{k: r[k] for k in ("notebook", "status", "seconds", "metrics", "error")} for r in notebooks],
    }
    print(markdown(imports, notebooks))
    RESULTS_PATH.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS_PATH.relative_to(REPO)}")
    failed = [row for row in imports if row["error"]] + [r for r in notebooks if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
