"""Tests for labkit.timeplan: token counts, the refusal and its fix, class budgets, calibration."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from labkit import stages, timeplan
from labkit.hardware import Hardware
from labkit.profiles import NOTEBOOK_PARAMS, get_profile, notebook_params
from labkit.timeplan import (BUDGET_MIN, LAB_STAGES, LABS, RATES, TimeBudgetError, gpu_kind, load_calibration,
                             needed_stages, plan_lab, rates_for, time_preflight)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
T4 = Hardware(device="cuda", name="Tesla T4", vram_total_gb=14.7, vram_free_gb=14.6, capability=(7, 5))
CPU = Hardware(device="cpu", name="cpu (2 cores)")
T4_RATES = next(r for r in RATES if r.gpu == "t4")
# Variables setup() writes for a GPU profile; monkeypatch restores them after each test.
SETUP_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT",
             "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_XET", "TOKENIZERS_PARALLELISM",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS")


@pytest.fixture
def empty_cache(monkeypatch, tmp_path) -> Path:
    """No stage built, no shipped stage, no gpucheck report."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(timeplan.CALIBRATION_ENV, raising=False)
    monkeypatch.setattr(stages, "SHIPPED_DIR", tmp_path / "shipped")
    return tmp_path / "cache"


# ---------------------------------------------------------------- token counts by hand


def test_sft_plan_by_hand():
    profile = get_profile("t4", lab="sft", max_steps=10, batch_size=2, grad_accum=3, eval_limit=8,
                          eval_batch_size=4, max_new_tokens=16, max_length=256)
    plan = plan_lab("sft", profile, "t4", missing=["base"])
    prompt, sft = 192, 256                   # padded GSM8K prompt; SFT sequence capped at max_length
    body = [r for r in plan.runs if not r.exercise]
    assert [r.name for r in body] == ["load the base model", "eval before SFT (8 questions)",
                                      "SFT training (10 steps)", "eval after SFT"]
    assert plan.totals(body) == (2 * 8 * 16, 10 * 2 * 3 * sft, 2 * 8 * prompt)   # (256, 15360, 3072)
    evals = 2 * (2 * 16 * (0.080 + 4 / 2000))   # 2 evals x 2 calls of 4 x 16 decode steps
    seconds = evals + 15360 / 600 + 3072 / 1800 + 20   # + training, prefill, one model load
    assert plan.minutes(body) == pytest.approx(seconds / 60)
    download = 596_049_920 * 2 / 2**30 * 1024 / 30  # Qwen3-0.6B in 16 bits at 30 MB/s
    assert [r.name for r in plan.stage_runs] == ["stage base: download Qwen/Qwen3-0.6B"]
    assert plan.budgeted_min == pytest.approx((seconds + download) / 60)
    # exercise 3's attempt: 30 steps of the same recipe and a greedy eval of the (8) held-out questions
    exercise = [r for r in plan.runs if r.exercise]
    assert [r.trained for r in exercise] == [30 * 2 * 3 * sft, 0] and exercise[1].gen_seqs == 8
    assert plan.total_min == pytest.approx(plan.budgeted_min + plan.exercise_min)
    assert "budgeted (without the exercise attempts)" in plan.table()


def test_grpo_plan_by_hand():
    profile = get_profile("t4", lab="grpo", max_steps=3, rollout_batch_size=2, num_generations=4,
                          max_new_tokens=16, eval_limit=5, eval_batch_size=4)
    plan = plan_lab("grpo", profile, "t4", params={"EVAL_SAMPLES": 2}, missing=[])
    rl = 192 + 16  # prompt + completion
    by_run = {r.name: (r.generated, r.trained, r.forward) for r in plan.runs}
    assert by_run == {
        "probe groups (hand check)": (3 * 4 * 16, 0, 3 * 4 * 192 + 2 * 4 * rl),  # 3 tries of G=4, loss check
        "greedy eval before/after (5 questions)": (2 * 5 * 16, 0, 2 * 5 * 192),
        "sampled eval before/after (5 x 2)": (2 * 5 * 2 * 16, 0, 2 * 5 * 2 * 192),
        # 3 steps x 2 prompts x G=4: generate, train on prompt + completion, reference pass (BETA 0.04)
        "GRPO training (3 steps x 2 prompts x G=4)": (3 * 8 * 16, 3 * 8 * rl, 3 * 8 * (192 + rl)),
        # exercise 3 (one attempt): G=4 samples of 192 questions at the student's temperature
        "exercise 3: 192 questions x G": (192 * 4 * 16, 0, 192 * 4 * 192),
    }
    assert plan.totals([r for r in plan.runs if not r.exercise]) == (1056, 4992, 3968 + 1920 + 3840 + 9600)


def test_stage_builds_use_the_stage_recipe_not_the_notebook_overrides():
    mine = get_profile("t4", lab="rm", max_steps=1)
    recipe = get_profile("t4", lab="rm")
    plan = plan_lab("ppo", get_profile("t4", lab="ppo"), "t4", missing=["sft", "rm"])
    names = [r.name for r in plan.stage_runs]
    assert f"stage rm: reward-model training ({recipe.max_steps} steps)" in names
    assert plan_lab("rm", mine, "t4", missing=[]).runs[1].name == "reward-model training (1 steps)"


# ---------------------------------------------------------------- refusing, and the fix


def test_refusal_names_the_fix_and_the_fix_fits(empty_cache, capsys):
    greedy = get_profile("t4", lab="sft", max_steps=2000)
    with pytest.raises(TimeBudgetError) as error:
        time_preflight(greedy, T4, "sft")
    message = str(error.value)
    assert "over the 45-min budget" in message and "Tesla T4" in message
    assert "python -m labkit.stages build base --profile t4" in message  # the base model is not cached
    assert re.search(r"TIME_BUDGET_MIN = \d+", message)
    steps = int(re.search(r"MAX_STEPS = (\d+)", message).group(1))
    assert "EVAL_LIMIT" not in message  # fewer questions alone cannot make up 2000 steps
    plan = time_preflight(get_profile("t4", lab="sft", max_steps=steps), T4, "sft")
    assert plan.fits and plan.budgeted_min <= 45 < plan.total_min  # exercise 3 is outside the budget
    assert "time plan: lab 'sft'" in capsys.readouterr().out
    more = replace(greedy, max_steps=steps + 10)  # the suggestion is the largest value that fits
    assert not plan_lab("sft", more, "t4", missing=["base"]).fits
    assert time_preflight(greedy, T4, "sft", budget_min=600).fits  # TIME_BUDGET_MIN accepts it


def test_refusal_suggests_notebook_parameters_only_when_the_notebook_passed_them(monkeypatch):
    monkeypatch.setattr(timeplan, "missing_stages", lambda lab, profile: [])  # every stage is built
    profile = get_profile("t4", lab="best_of_n")
    with pytest.raises(TimeBudgetError) as passed:
        time_preflight(profile, T4, "best_of_n", params={"MAX_N": 64, "OTHER_LIMIT": 64}, quiet=True)
    assert "MAX_N = 16" in str(passed.value) and "OTHER_LIMIT = " in str(passed.value)
    assert "GRPO_N" not in str(passed.value)  # not passed: setup cannot see it, so no use suggesting it
    value = int(re.search(r"OTHER_LIMIT = (\d+)", str(passed.value)).group(1))
    fits = lambda limit: time_preflight(profile, T4, "best_of_n", quiet=True,  # noqa: E731
                                        params={"MAX_N": 64, "OTHER_LIMIT": limit})
    assert fits(value).fits
    with pytest.raises(TimeBudgetError):
        fits(value + 5)  # the largest value that fits, in steps a student would type


def test_setup_refuses_before_loading_and_a_stand_in_run_never(empty_cache, monkeypatch, capsys):
    from labkit.runtime import setup
    from labkit.standin import GPU_ENV, WORLD_ENV

    for name in SETUP_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(GPU_ENV, "t4")            # detect() reports a T4 ...
    monkeypatch.delenv(WORLD_ENV, raising=False)  # ... and this is not a stand-in run
    with pytest.raises(TimeBudgetError, match="MAX_STEPS = "):
        setup("t4", lab="grpo", max_steps=500, time_budget_min=None)
    profile = setup("t4", lab="grpo", max_steps=500, time_budget_min=600, quiet=True)
    assert profile.max_steps == 500
    monkeypatch.setenv(WORLD_ENV, str(empty_cache / "world"))  # a stand-in run: SMOKE sizes, never refused
    capsys.readouterr()
    assert setup("t4", lab="grpo", time_budget_min=0.001).max_steps == 2
    assert "time plan: lab 'grpo'" in capsys.readouterr().out


# ---------------------------------------------------------------- the class budgets


@pytest.mark.parametrize("name", ["t4", "24gb", "80gb"])
def test_every_lab_fits_its_budget_with_the_stages_it_builds(name):
    assert plan_lab("sft", get_profile(name, lab="sft"), missing=[]).gpu == timeplan.REFERENCE_GPU[name]
    for lab in LABS:
        plan = plan_lab(lab, get_profile(name, lab=lab), missing=needed_stages(lab))
        assert plan.missing == tuple(needed_stages(lab))
        assert plan.fits and plan.budgeted_min <= BUDGET_MIN[name], f"{name} {lab}: {plan.budgeted_min:.1f} min"
        # the experiment exercises are timed (one attempt each), outside the budget
        assert (plan.exercise_min > 0) == (lab in ("sft", "dpo", "ppo", "grpo", "best_of_n")), lab
    assert needed_stages("best_of_n") == ["base", "sft", "rm", "grpo"]


def test_the_summary_lists_every_lab():
    text = timeplan.summary("t4")
    assert "budget 45 min" in text
    for lab, number in LABS.items():
        assert f"| {number} {lab} |" in text
    assert "| NO |" not in text


def test_the_command_line_prints_a_labs_plan(capsys):
    assert timeplan.main(["--profile", "24gb", "--lab", "best_of_n"]) == 0
    out = capsys.readouterr().out
    assert "profile 24gb, rtx4090" in out and "stage grpo: GRPO training" in out and "budget 20 min" in out


# ---------------------------------------------------------------- rates and calibration


def test_cpu_needs_no_rates():
    profile = get_profile("cpu", lab="sft")
    assert rates_for(profile, None) == (None, "cpu profile: no time budget")
    plan = plan_lab("sft", profile, missing=[])
    assert plan.rates is None and plan.total_min is None and plan.fits and plan.budget_min is None
    assert plan.totals([r for r in plan.runs if not r.exercise])[1] == \
        profile.max_steps * profile.batch_size * profile.grad_accum * 80
    assert time_preflight(profile, CPU, "sft") is None


@pytest.mark.parametrize("name, kind", [
    ("Tesla T4", "t4"), ("NVIDIA GeForce RTX 4090", "rtx4090"), ("NVIDIA GeForce RTX 3090", "rtx3090"),
    ("NVIDIA A100-SXM4-40GB", "a100"), ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA L4", None),
])
def test_gpu_kind(name, kind):
    assert gpu_kind(name) == kind


def test_an_unknown_gpu_is_planned_as_the_slowest_of_its_profile():
    rates, note = rates_for(get_profile("24gb"), gpu_kind("NVIDIA A10G"))
    assert rates.gpu == "rtx3090" and "as rtx3090" in note
    rates, note = rates_for(get_profile("t4"), "rtx4090")  # no 4-bit entry for a 4090: the T4's
    assert rates == T4_RATES and "as t4" in note


def report_for(tmp_path: Path, **changes) -> Path:
    """A gpucheck report in its own format (labkit.gpucheck.build_report), measured on a T4."""
    report = {"device": "Tesla T4", "tiny": False,
              "rates": {"t4": {"generate_tokens_per_s": 400.0, "train_tokens_per_s": 1500.0}},
              "records": [{"profile": "t4", "plan": "grpo", "gen_batch_size": 16, "generate_tokens_per_s": 400.0},
                          {"profile": "t4", "plan": "ppo", "gen_batch_size": 64,
                           "generate_tokens_per_s": 1000.0}]}
    path = tmp_path / "gpucheck.json"
    path.write_text(json.dumps({**report, **changes}), encoding="utf-8")
    return path


def test_a_gpucheck_report_replaces_the_rates(tmp_path, monkeypatch):
    path = report_for(tmp_path)
    rates, note = rates_for(get_profile("t4"), "t4", load_calibration(path))
    assert rates.train_tokens_per_s == 1500.0 and f"gpucheck {path}" in note
    assert rates.forward_tokens_per_s == pytest.approx(1500.0 * T4_RATES.forward_tokens_per_s / 600)
    assert rates.generate_rate(16) == pytest.approx(400.0) and rates.generate_rate(64) == pytest.approx(1000.0)
    # One batch size measured: the table's shape, scaled to it.
    one = load_calibration(report_for(tmp_path, records=[]))
    assert rates_for(get_profile("t4"), "t4", one)[0].generate_rate(16) == pytest.approx(400.0)  # 4 prompts x 4
    # The plan reads $LABKIT_GPUCHECK (default: $LABKIT_CACHE/gpucheck.json).
    monkeypatch.setenv(timeplan.CALIBRATION_ENV, str(path))
    plan = time_preflight(get_profile("t4", lab="sft"), T4, "sft", quiet=True)
    assert plan.rates.train_tokens_per_s == 1500.0
    assert plan.lab_min < plan_lab("sft", get_profile("t4", lab="sft"), "t4", missing=[]).lab_min


def test_a_report_from_another_gpu_or_tiny_models_is_ignored(tmp_path):
    other = load_calibration(report_for(tmp_path, device="NVIDIA A100-SXM4-80GB"))
    assert rates_for(get_profile("t4"), "t4", other)[0] == T4_RATES
    assert load_calibration(report_for(tmp_path, tiny=True)) is None
    assert load_calibration(tmp_path / "missing.json") is None
    changed = get_profile("t4", model_id="Qwen/Qwen3-1.7B")  # not what gpucheck measured for t4
    assert "gpucheck" not in rates_for(changed, "t4", load_calibration(report_for(tmp_path)))[1]


# ---------------------------------------------------------------- stages and notebooks


def test_missing_stages_follow_what_labkit_stages_can_serve(empty_cache, monkeypatch):
    def fake(profile, out, deps):
        (out / "weights.txt").write_text("fake", encoding="utf-8")
        return {}

    for name in ("base", "sft"):
        monkeypatch.setitem(stages.BUILDERS, name, fake)
    profile = get_profile("cpu")
    assert timeplan.missing_stages("dpo", profile) == ["base", "sft"]
    stages.get_stage("base", profile)
    assert timeplan.missing_stages("dpo", profile) == ["sft"]
    stages.get_stage("sft", profile)
    assert timeplan.missing_stages("dpo", profile) == [] and stages.ready_stage("sft", profile) is not None
    (stages.stage_dir("base", profile) / "weights.txt").write_text("damaged", encoding="utf-8")
    stages._verified.clear()
    assert timeplan.missing_stages("dpo", profile) == ["base", "sft"]  # get_stage would rebuild both


def notebook_setup(path: Path) -> tuple[str, dict[str, str]]:
    """A notebook's lab key and its parameters cell (NAME -> source of the value)."""
    text = path.read_text(encoding="utf-8")
    cell = text.split('# %% tags=["parameters"]', 1)[1].split("# %%", 1)[0]
    params = dict(re.findall(r"^([A-Z_]+) = (.+?)(?:\s+#.*)?$", cell, flags=re.M))
    lab = re.search(r'setup\(PROFILE, lab="(\w+)"', text).group(1)
    return lab, params


def test_labs_match_the_notebooks():
    """Each notebook's lab key, the stages it loads and its parameters' defaults are what the plan counts."""
    seen = {}
    for path in sorted(NOTEBOOKS.glob("0*.py")):
        lab, params = notebook_setup(path)
        seen[lab] = path.name[:2]
        lines = path.read_text(encoding="utf-8").splitlines()
        code = "\n".join(line for line in lines if not line.startswith("#"))  # not the prose
        loaded = set(re.findall(r'get_stage\("(\w+)"', code))
        assert loaded == set(LAB_STAGES[lab]), path.name
        for name, default in NOTEBOOK_PARAMS.get(lab, {}).get("default", {}).items():
            value = eval(params[name])  # noqa: S307 - literals of our own notebooks
            assert value is None or value == default, f"{path.name}: {name} = {value!r}, planned {default!r}"
    assert seen == LABS


def test_notebook_params_fill_in_the_profiles_values():
    assert notebook_params("cpu", "best_of_n", MAX_N=None) == {"MAX_N": 32, "OTHER_LIMIT": 64, "GRPO_N": 16}
    assert notebook_params("t4", "best_of_n", MAX_N=None, GRPO_N=4)["MAX_N"] == 16
    assert notebook_params("t4", "best_of_n", GRPO_N=4)["GRPO_N"] == 4
    assert notebook_params("t4", "env") == {}
