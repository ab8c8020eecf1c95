"""Lab 06's ablation: train GRPO variants from one SFT start on one budget, evaluate each on the
held-out questions, and summarise over seeds (mean and standard error).

`run_variant` is one run (train with TRL, then sample the held-out set) and returns plain data:
numbers plus the trainer's log history. `run_variants` runs several, on the CPU two at a time in
two single-threaded worker processes (each run seeds itself and is deterministic, so its result
does not depend on which worker ran it or what ran there before), elsewhere one after another in this process.
benchmarks/ablation.py runs every variant for more seeds; `seed_table` and `summarise` turn those
rows plus the notebook's own into the per-variant mean +- standard error.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from labkit.profiles import Profile

NUM_ITERATIONS = 2      # optimisation passes per generated batch: with 1 the ratio is 1 and no clip acts
LAST = 5                # "end of training" = the mean of the last LAST logged steps
REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARK_PATH = REPO_ROOT / "benchmarks" / "ablation.json"


def clip_ratio(step: dict) -> float:
    """The share of tokens whose update was clipped in one logged step: TRL's region clip ratio,
    CISPO's own ratio; NaN for SAPO (a soft gate clips nothing)."""
    for key in ("clip_ratio/region_mean", "cispo_clip_ratio"):
        if key in step:
            return float(step[key])
    return math.nan


def _end(values: list[float]) -> float:
    """Mean of the last LAST finite values (NaN if none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite[-LAST:])) if finite else math.nan


def run_variant(name: str, profile: Profile, sft_dir: str | Path, seed: int, eval_samples: int,
                num_iterations: int = NUM_ITERATIONS, output_dir: str | Path = "outputs") -> dict[str, Any]:
    """Train variant `name` (labkit.grpo.VARIANTS) from the SFT model with TRL and sample the
    held-out questions `eval_samples` times each. Returns numbers and the log history."""
    import torch
    from transformers import set_seed

    from labkit.data import load_problems
    from labkit.evaluate import evaluate_accuracy
    from labkit.grpo import TRAIN_LEVELS, make_trainer, rl_dataset
    from labkit.models import load_model, load_tokenizer, lora_config

    set_seed(seed)
    tokenizer = load_tokenizer(sft_dir)
    levels = TRAIN_LEVELS.get(profile.dataset)
    heldout = load_problems(profile.dataset, "eval", levels=levels, limit=profile.eval_limit)
    policy = load_model(sft_dir, profile)
    trainer = make_trainer(name, profile, policy, tokenizer, rl_dataset(profile), Path(output_dir) / f"06_{name}",
                           seed=seed, peft_config=lora_config(profile), wrong_length=True,
                           num_iterations=num_iterations)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    history = [dict(h) for h in trainer.state.log_history]
    torch.manual_seed(seed)
    result = evaluate_accuracy(trainer.model, tokenizer, heldout, profile, desc=f"eval {name}",
                               samples=eval_samples)
    del trainer, policy
    return {"variant": name, "seed": seed, **eval_numbers(result, tokenizer),
            **history_numbers(history), "train_s": round(train_s, 1), "history": history}


def eval_numbers(result, tokenizer) -> dict[str, float]:
    """Accuracy, its binomial standard error, mean length and mean length of the wrong answers."""
    lengths = [len(tokenizer(c).input_ids) for c in result.completions]
    wrong = [n for n, ok in zip(lengths, result.correct) if not ok]
    n, acc = len(result.correct), float(np.mean(result.correct))
    return {"acc": acc, "acc_se_binomial": math.sqrt(acc * (1 - acc) / n), "n_eval": n,
            "mean_len": float(np.mean(lengths)), "wrong_len": float(np.mean(wrong)) if wrong else math.nan}


def history_numbers(history: list[dict]) -> dict[str, float]:
    """What lab 06 reads from a TRL log history: entropy and lengths at the end, the mean clip ratio,
    the truncation rate, and the extra prompts dynamic sampling drew. With num_iterations = k, TRL
    logs every optimizer step, but the rollout metrics (reward, lengths) only on the step that
    generated; entropy and clip ratios on every step."""
    updates = [h for h in history if "entropy" in h]
    rollouts = [h for h in history if "reward" in h]
    clips = [clip_ratio(h) for h in updates]
    return {
        "steps": len(updates),
        "entropy_end": _end([h["entropy"] for h in updates]),
        "clip_ratio": float(np.nanmean(clips)) if any(math.isfinite(c) for c in clips) else math.nan,
        "wrong_len_train_end": _end([h.get("rewards/wrong_answer_length/mean", math.nan) for h in rollouts]),
        "truncated_end": _end([h.get("completions/clipped_ratio", math.nan) for h in rollouts]),
        "train_acc_end": _end([h.get("rewards/accuracy_reward/mean", math.nan) for h in rollouts]),
        "extra_prompts": float(sum(h.get("dynamic/extra_prompts", 0.0) for h in rollouts)),
    }


def _worker_init() -> None:
    """One thread per worker (two workers share the two cores, and one thread keeps runs
    reproducible), and no output: the workers' TRL logs and progress bars would land in the
    notebook. Errors still reach the caller, as exceptions of the futures."""
    import torch
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def run_variants(names: tuple[str, ...] | list[str], profile: Profile, sft_dir: str | Path, seed: int,
                 eval_samples: int, num_iterations: int = NUM_ITERATIONS, jobs: int | None = None,
                 output_dir: str | Path = "outputs") -> dict[str, dict[str, Any]]:
    """run_variant for each name. jobs=None: 2 worker processes on the CPU profile (when the machine
    has 2 cores), else 1 (in this process: one GPU trains one model at a time). Results by name,
    in the order given, with a progress bar."""
    from tqdm.auto import tqdm

    if jobs is None:
        jobs = min(2, os.cpu_count() or 1) if profile.device == "cpu" else 1
    args = dict(profile=profile, sft_dir=str(sft_dir), seed=seed, eval_samples=eval_samples,
                num_iterations=num_iterations, output_dir=str(output_dir))
    done: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(names), desc=f"seed {seed}: variants")
    if jobs <= 1:
        for name in names:
            bar.set_postfix_str(name)
            done[name] = run_variant(name, **args)
            bar.update()
    else:
        # Fresh interpreters (spawn, not fork: torch's threads do not survive a fork); run_variant
        # seeds everything itself, so a worker's earlier run does not change the next one.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init) as pool:
            futures = {pool.submit(run_variant, name, **args): name for name in names}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.set_postfix_str(futures[future])
                bar.update()
    bar.close()
    return {name: done[name] for name in names}


# ---------------------------------------------------------------- seeds


ROW_FIELDS = ("acc", "mean_len", "wrong_len", "entropy_end", "clip_ratio", "wrong_len_train_end",
              "truncated_end", "train_acc_end", "extra_prompts", "train_s")


def budget_key(profile: Profile, names: tuple[str, ...] | list[str], eval_samples: int,
               num_iterations: int) -> dict[str, Any]:
    """What must match for benchmark rows to be comparable with a notebook's own run: the budget,
    the SFT start (its stage recipe) and, on the kit's data, the prompt and held-out files."""
    from labkit.data import DATA_DIR
    from labkit.stages import _file_hash, stage_key

    data = ({f: _file_hash(DATA_DIR / f)[:16] for f in ("rl.jsonl", "eval.jsonl")}
            if profile.dataset == "kit" else {})
    return {"profile": profile.name, "model_id": profile.model_id, "max_steps": profile.max_steps,
            "rollout_batch_size": profile.rollout_batch_size, "num_generations": profile.num_generations,
            "learning_rate": profile.learning_rate, "max_new_tokens": profile.max_new_tokens,
            "eval_limit": profile.eval_limit, "eval_samples": eval_samples, "num_iterations": num_iterations,
            "variants": list(names), "sft_stage": stage_key("sft", profile), "data": data}


def load_benchmark(key: dict[str, Any], path: Path = BENCHMARK_PATH) -> list[dict[str, Any]]:
    """The benchmark's per-(variant, seed) rows when they were measured on the same budget `key`,
    else [] (another profile, budget or variant list: nothing comparable)."""
    if not path.exists():
        return []
    table = json.loads(path.read_text(encoding="utf-8"))
    return table["rows"] if table.get("key") == key else []


def seed_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant of a run_variants result, without the log history."""
    return [{"variant": r["variant"], "seed": r["seed"], **{f: r[f] for f in ROW_FIELDS}} for r in results.values()]


def summarise(rows: list[dict[str, Any]], names: tuple[str, ...] | list[str]) -> dict[str, dict[str, float]]:
    """Per variant: seed count, and the mean and standard error (std / sqrt(n), ddof 1) over seeds
    of each ROW_FIELDS number (NaN standard error with one seed)."""
    out = {}
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        stats: dict[str, float] = {"seeds": float(len(mine))}
        for f in ROW_FIELDS:
            values = np.array([r[f] for r in mine], dtype=float)
            values = values[np.isfinite(values)]
            stats[f] = float(values.mean()) if len(values) else math.nan
            stats[f"{f}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
        out[name] = stats
    return out
