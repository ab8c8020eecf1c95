"""Benchmark (not a test): lab 06's ablation over several seeds on the cpu profile.

    python benchmarks/ablation.py                 # seeds 0 1 2, every variant, 2 at a time
    python benchmarks/ablation.py --seeds 3 4     # more seeds (rows are merged by variant and seed)

Runs labkit.ablation.run_variants exactly as notebook 06 does (same profile, budget, variants,
evaluation) and writes benchmarks/ablation.json (one row per variant and seed, plus the budget key
the notebook checks before it uses them) and benchmarks/ablation.md (mean +- standard error over
seeds). The notebook trains one seed itself and takes the other seeds' rows from this file.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

from labkit.ablation import BENCHMARK_PATH, NUM_ITERATIONS, budget_key, run_variants, seed_rows, summarise
from labkit.profiles import notebook_params
from labkit.runtime import setup
from labkit.stages import get_stage, model_path


def _fmt(mean: float, se: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def write_markdown(table: dict, path: Path) -> None:
    names = table["key"]["variants"]
    stats = summarise(table["rows"], names)
    seeds = sorted({r["seed"] for r in table["rows"]})
    lines = [f"# Lab 06 ablation, cpu profile, seeds {seeds}", "",
             f"Budget: {json.dumps(table['key'])}", "",
             "Mean ± standard error over seeds (held-out sampled accuracy; entropy and wrong-answer length at the "
             "end of training; clip ratio over training; truncation = share of rollouts cut at the budget).", "",
             "| variant | held-out acc | entropy end | clip ratio | wrong-answer len (eval) | truncated end | "
             "extra prompts | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        s = stats[name]
        lines.append(f"| {name} | {_fmt(s['acc'], s['acc_se'])} | {_fmt(s['entropy_end'], s['entropy_end_se'], 4)} | "
                     f"{_fmt(s['clip_ratio'], s['clip_ratio_se'], 4)} | {_fmt(s['wrong_len'], s['wrong_len_se'], 2)} | "
                     f"{_fmt(s['truncated_end'], s['truncated_end_se'], 4)} | {_fmt(s['extra_prompts'], math.nan, 0)} | "
                     f"{_fmt(s['train_s'], math.nan, 0)} |")
    lines += ["", f"Measured {table['measured']} on {table['machine']}; wall time per seed: "
              + ", ".join(f"seed {k}: {v:.0f} s" for k, v in table["seconds"].items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    profile = setup("cpu", lab="grpo_compare", quiet=True)
    params = notebook_params("cpu", "grpo_compare")
    names, samples = tuple(params["VARIANTS"]), params["EVAL_SAMPLES"]
    key = budget_key(profile, names, samples, NUM_ITERATIONS)
    sft_dir = model_path(get_stage("sft", profile))
    table = json.loads(BENCHMARK_PATH.read_text(encoding="utf-8")) if BENCHMARK_PATH.exists() else {}
    if table.get("key") != key:
        table = {"key": key, "rows": [], "seconds": {}}
    for seed in args.seeds:
        start = time.perf_counter()
        results = run_variants(names, setup("cpu", lab="grpo_compare", seed=seed, quiet=True), sft_dir, seed,
                               samples, jobs=args.jobs, output_dir=f"/tmp/labkit-ablation-{seed}")
        table["seconds"][str(seed)] = round(time.perf_counter() - start, 1)
        table["rows"] = [r for r in table["rows"] if r["seed"] != seed] + seed_rows(results)
        table["rows"].sort(key=lambda r: (r["seed"], names.index(r["variant"])))
        table["measured"] = time.strftime("%Y-%m-%d")
        table["machine"] = f"{platform.processor() or platform.machine()}, jobs={args.jobs}"
        BENCHMARK_PATH.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
        write_markdown(table, BENCHMARK_PATH.with_suffix(".md"))
        print(f"seed {seed}: {table['seconds'][str(seed)]} s", flush=True)


if __name__ == "__main__":
    main()
