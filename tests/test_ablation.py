"""labkit.ablation: what lab 06 reads from TRL's logs, the seed summary, the benchmark table's budget
check, and that a variant's result does not depend on the worker process that ran it."""

from __future__ import annotations

import json
import math

import pytest

from labkit import ablation
from labkit.ablation import budget_key, clip_ratio, history_numbers, load_benchmark, summarise
from labkit.profiles import get_profile, notebook_params


def _history() -> list[dict]:
    """Four optimizer steps with num_iterations=2: rollout metrics on steps 1 and 3 only."""
    rollout = {"reward": 1.0, "completions/clipped_ratio": 0.5, "rewards/accuracy_reward/mean": 0.25,
               "rewards/wrong_answer_length/mean": 30.0, "dynamic/extra_prompts": 3.0}
    return [{"step": 1, "entropy": 0.4, "clip_ratio/region_mean": 0.0, **rollout},
            {"step": 2, "entropy": 0.3, "clip_ratio/region_mean": 0.1},
            {"step": 3, "entropy": 0.2, "clip_ratio/region_mean": 0.0, **rollout,
             "rewards/wrong_answer_length/mean": 34.0, "completions/clipped_ratio": 0.0},
            {"step": 4, "entropy": 0.1, "clip_ratio/region_mean": 0.3},
            {"train_runtime": 1.0}]


def test_history_numbers_read_updates_and_rollouts_apart(monkeypatch):
    monkeypatch.setattr(ablation, "LAST", 2)
    got = history_numbers(_history())
    assert got["steps"] == 4
    assert got["entropy_end"] == pytest.approx(0.15)            # last 2 updates
    assert got["clip_ratio"] == pytest.approx(0.1)              # mean over all 4 updates
    assert got["wrong_len_train_end"] == pytest.approx(32.0)    # last 2 rollouts
    assert got["truncated_end"] == pytest.approx(0.25)
    assert got["extra_prompts"] == 6.0


def test_clip_ratio_per_objective():
    assert clip_ratio({"clip_ratio/region_mean": 0.2}) == 0.2
    assert clip_ratio({"cispo_clip_ratio": 0.01}) == 0.01
    assert math.isnan(clip_ratio({"entropy": 0.1}))              # SAPO: a soft gate, nothing clipped
    sapo = [{"step": 1, "entropy": 0.1, "reward": 1.0}]
    assert math.isnan(history_numbers(sapo)["clip_ratio"])


def test_summarise_gives_mean_and_standard_error_over_seeds():
    rows = [{"variant": "a", "seed": s, **dict.fromkeys(ablation.ROW_FIELDS, v)} for s, v in enumerate((1.0, 2.0, 4.0))]
    rows.append({"variant": "b", "seed": 0, **dict.fromkeys(ablation.ROW_FIELDS, 5.0)})
    stats = summarise(rows, ["a", "b"])
    assert stats["a"]["seeds"] == 3 and stats["a"]["acc"] == pytest.approx(7 / 3)
    assert stats["a"]["acc_se"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2 / 3))
    assert stats["b"]["acc"] == 5.0 and math.isnan(stats["b"]["acc_se"])   # one seed: no standard error


def test_benchmark_rows_are_used_only_for_the_same_budget(tmp_path):
    profile = get_profile("cpu", lab="grpo_compare")
    key = budget_key(profile, ("grpo", "dapo"), 2, 2)
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps({"key": key, "rows": [{"variant": "grpo", "seed": 1}]}))
    assert load_benchmark(key, path) == [{"variant": "grpo", "seed": 1}]
    assert load_benchmark({**key, "max_steps": 31}, path) == []
    assert load_benchmark(key, tmp_path / "missing.json") == []


def test_committed_benchmark_matches_the_cpu_notebook_budget():
    """Notebook 06 on the cpu profile must find the benchmark's other seeds (else rerun benchmarks/ablation.py)."""
    table = json.loads(ablation.BENCHMARK_PATH.read_text(encoding="utf-8"))
    params = notebook_params("cpu", "grpo_compare")
    key = budget_key(get_profile("cpu", lab="grpo_compare"), tuple(params["VARIANTS"]), params["EVAL_SAMPLES"],
                     ablation.NUM_ITERATIONS)
    assert table["key"] == key
    seeds = {r["seed"] for r in table["rows"]}
    assert len(seeds) >= 3
    assert all({r["variant"] for r in table["rows"] if r["seed"] == s} == set(params["VARIANTS"]) for s in seeds)


def test_a_variant_gives_the_same_result_in_a_worker_process(tmp_path):
    """jobs=2 runs variants in spawned single-threaded workers; the numbers equal an in-process run."""
    from labkit.runtime import setup
    from labkit.stages import get_stage, model_path

    profile = setup("cpu", lab="grpo_compare", quiet=True, max_steps=2, eval_limit=4)
    sft = model_path(get_stage("sft", profile))
    names = ("dynamic",)   # its extra draws use a generator of their own: the most state to carry over
    here = ablation.run_variants(names, profile, sft, 0, 1, jobs=1, output_dir=tmp_path / "a")
    there = ablation.run_variants(names, profile, sft, 0, 1, jobs=2, output_dir=tmp_path / "b")
    for name in names:
        assert {k: v for k, v in here[name].items() if k not in ("history", "train_s")} == pytest.approx(
            {k: v for k, v in there[name].items() if k not in ("history", "train_s")}, nan_ok=True)


def test_budget_key_changes_with_the_prompts_or_the_sft_start(tmp_path, monkeypatch):
    import shutil

    import labkit.data
    import labkit.stages

    profile = get_profile("cpu", lab="grpo_compare")
    key = budget_key(profile, ("grpo",), 2, 2)
    for path in labkit.data.DATA_DIR.glob("*.jsonl"):   # the SFT stage's recipe hashes its data too
        shutil.copy(path, tmp_path / path.name)
    with open(tmp_path / "rl.jsonl", "a", encoding="utf-8") as f:
        f.write("\n")
    monkeypatch.setattr(labkit.data, "DATA_DIR", tmp_path)
    assert budget_key(profile, ("grpo",), 2, 2)["data"] != key["data"]
    monkeypatch.setattr(labkit.stages, "stage_key", lambda name, prof: "another-sft")
    assert budget_key(profile, ("grpo",), 2, 2)["sft_stage"] == "another-sft"
