"""Benchmark (not a test): how far each notebook's headline metrics move across seeds and CPUs.

    python benchmarks/spread.py run                    # seeds 0 1 2 x kernels native avx2, all notebooks
    python benchmarks/spread.py run --seeds 1 --kernels avx2 --notebooks 05 06 --jobs 1
    python benchmarks/spread.py table                  # -> benchmarks/spread.json and spread.md

`run` executes the notebooks on the cpu profile with `-p SEED=<seed>` through `labkit.course`, once
per (seed, kernels) pair, each in its own cache; "avx2" runs with another CPU's kernels emulated
(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2), as on a machine
without AVX-512. Each run's summary goes to benchmarks/spread/<seedN-kernels>.json; --keep DIR keeps
the executed notebooks (to diff them). `table` reads those files and the committed notebooks'
metrics (notebook metadata `labkit.metrics`) and writes, per notebook and numeric metric, the
committed value, min, max and every run's value. tests/test_notebooks.py reads spread.json: a
re-run must land inside the measured range (widened by a quarter of its width), and thresholds
must sit below it. Timings (`*_seconds`) are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
from fresh_clone import AVX2  # benchmarks/ is on sys.path when this file runs as a script

from labkit.course import committed_metrics

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RUNS_DIR = BENCH_DIR / "spread"
KERNELS = {"native": {}, "avx2": AVX2}


def run_one(seed: int, kernels: str, notebooks: list[str], keep: Path | None) -> Path:
    """Execute `notebooks` (all if empty) with SEED=seed under `kernels`; returns the summary file."""
    label = f"seed{seed}-{kernels}"
    with tempfile.TemporaryDirectory(prefix=f"labkit-spread-{label}-") as tmp:
        out_dir = keep / label if keep else Path(tmp) / "out"
        env = {**os.environ, **KERNELS[kernels], "OMP_NUM_THREADS": "1",
               "LABKIT_CACHE": str(Path(tmp) / "cache")}
        summary = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "labkit.course", *notebooks, "--profile", "cpu", "-p", f"SEED={seed}",
               "--out-dir", str(out_dir), "--summary", str(summary), "--jobs", "1"]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        print(f"--- {label}\n{done.stdout}{done.stderr[-2000:] if done.returncode else ''}", flush=True)
        records = json.loads(summary.read_text(encoding="utf-8")) if summary.exists() else []
    RUNS_DIR.mkdir(exist_ok=True)
    path = RUNS_DIR / f"{label}.json"
    previous = json.loads(path.read_text(encoding="utf-8"))["records"] if path.exists() else []
    merged = {r["notebook"]: r for r in previous} | {r["notebook"]: r for r in records}
    path.write_text(json.dumps({"seed": seed, "kernels": kernels, "records": sorted(
        merged.values(), key=lambda r: r["notebook"])}, indent=1) + "\n", encoding="utf-8")
    return path


def committed() -> dict[str, dict]:
    """{notebook: metrics} of the committed notebooks."""
    return {ipynb.stem: committed_metrics(nbformat.read(ipynb, as_version=4))
            for ipynb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))}


def table() -> dict:
    """Aggregate benchmarks/spread/*.json into {"runs": [...], "metrics": {nb: {metric: {...}}}}."""
    runs = sorted(RUNS_DIR.glob("seed*-*.json"))
    metrics: dict[str, dict[str, dict]] = {}
    labels = []
    for path in runs:
        labels.append(path.stem)
        for record in json.loads(path.read_text(encoding="utf-8"))["records"]:
            if record["status"] != "ok":
                print(f"{path.stem} {record['notebook']}: {record['status']} {record['error']}", file=sys.stderr)
                continue
            for name, value in record["metrics"].items():
                if isinstance(value, (int, float)) and not name.endswith("_seconds"):
                    entry = metrics.setdefault(record["notebook"], {}).setdefault(name, {"values": {}})
                    entry["values"][path.stem] = value
    for notebook, values in committed().items():
        for name, entry in metrics.get(notebook, {}).items():
            entry["committed"] = values.get(name)
    for entries in metrics.values():
        for entry in entries.values():
            entry["min"], entry["max"] = min(entry["values"].values()), max(entry["values"].values())
    return {"runs": labels, "metrics": metrics}


def markdown(result: dict) -> str:
    lines = [f"Runs: {', '.join(result['runs'])} (cpu profile, shipped stages).", "",
             "| notebook | metric | committed | min | max | runs |", "|---|---|---:|---:|---:|---:|"]
    for notebook, entries in sorted(result["metrics"].items()):
        for name, entry in entries.items():
            lines.append(f"| {notebook} | {name} | {_fmt(entry.get('committed'))} | {_fmt(entry['min'])} | "
                         f"{_fmt(entry['max'])} | {len(entry['values'])} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--notebooks", nargs="+", default=[], help='e.g. "05" "06_grpo_variants" (default: all)')
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one core)")
    parser.add_argument("--keep", type=Path, help="keep the executed notebooks under this folder")
    args = parser.parse_args(argv)
    if args.command == "run":
        pairs = [(seed, kernels) for seed in args.seeds for kernels in args.kernels]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda pair: run_one(*pair, args.notebooks, args.keep), pairs))
    result = table()
    (BENCH_DIR / "spread.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(result)
    (BENCH_DIR / "spread.md").write_text("# Headline metrics across seeds and CPU kernels\n\n" + text,
                                         encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
