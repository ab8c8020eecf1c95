"""labkit.grpo: batch layout, variants as TRL settings, dynamic sampling (unit and a short run)."""

from __future__ import annotations

import dataclasses

import importlib.metadata
import importlib.util
import inspect

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.import_utils import is_vllm_available

from labkit import grpo
from labkit.grpo import (VARIANTS, DynamicSamplingGRPOTrainer, GRPOSetupError, accumulation_steps,
                         grpo_config, make_trainer, replace_groups, reward_setup, rl_dataset,
                         use_vllm, zero_std_groups)
from labkit.memory import GiB, estimate_memory
from labkit.preflight import train_plan
from labkit.profiles import get_profile


def test_zero_std_groups_finds_all_equal_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    assert zero_std_groups(rewards, 3) == [0, 1]
    assert zero_std_groups(torch.tensor([0.5, 0.5, 0.5, 0.5]), 2) == [0, 1]
    assert zero_std_groups(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2) == []


def test_replace_groups_pads_both_batches_and_recounts_tokens():
    pad = 9
    batch = {"prompt_ids": torch.tensor([[1, 2], [1, 2], [3, 4], [3, 4]]),
             "prompt_mask": torch.ones(4, 2, dtype=torch.long),
             "completion_ids": torch.tensor([[5, 6], [5, 0], [7, 0], [7, 7]]),
             "completion_mask": torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]]),
             "advantages": torch.tensor([0.0, 0.0, 1.0, -1.0]), "num_items_in_batch": torch.tensor(6)}
    extra = {"prompt_ids": torch.tensor([[8, 1, 2], [8, 1, 2]]),
             "prompt_mask": torch.ones(2, 3, dtype=torch.long),
             "completion_ids": torch.tensor([[4, 4, 4], [4, 0, 0]]),
             "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
             "advantages": torch.tensor([0.7, -0.7]), "num_items_in_batch": torch.tensor(4)}
    out = replace_groups(batch, [0], extra, [0], 2, pad)
    assert out["prompt_ids"].tolist() == [[8, 1, 2], [8, 1, 2], [pad, 3, 4], [pad, 3, 4]]   # left-padded
    assert out["prompt_mask"].tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]]
    assert out["completion_ids"].tolist() == [[4, 4, 4], [4, 0, 0], [7, 0, pad], [7, 7, pad]]  # right-padded
    assert out["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert out["advantages"].tolist() == pytest.approx([0.7, -0.7, 1.0, -1.0])
    assert int(out["num_items_in_batch"]) == 7
    assert batch["advantages"].tolist() == [0.0, 0.0, 1.0, -1.0]   # the input batch is not modified


def test_replace_groups_refuses_batches_it_does_not_know():
    batch = {"prompt_ids": torch.ones(2, 1), "pixel_values": torch.ones(2, 3)}
    with pytest.raises(GRPOSetupError, match="pixel_values"):
        replace_groups(batch, [0], batch, [0], 2, 0)


def test_accumulation_steps_and_layout_errors():
    cpu = get_profile("cpu", lab="grpo")
    assert accumulation_steps(cpu) == cpu.rollout_batch_size * cpu.num_generations // cpu.batch_size
    for name in ("t4", "24gb", "80gb"):
        prof = get_profile(name, lab="grpo")
        assert accumulation_steps(prof) * prof.batch_size == prof.rollout_batch_size * prof.num_generations
    # get_profile refuses both before anything loads (tests/test_profiles.py); a profile built by hand
    # still meets the same check in accumulation_steps.
    with pytest.raises(GRPOSetupError, match="batch_size"):
        accumulation_steps(dataclasses.replace(cpu, batch_size=48))
    with pytest.raises(GRPOSetupError, match="num_generations"):
        accumulation_steps(dataclasses.replace(cpu, num_generations=1))


def test_grpo_config_states_the_grpo_choices_explicitly(tmp_path):
    config = grpo_config(get_profile("cpu", lab="grpo"), tmp_path)
    assert (config.loss_type, config.scale_rewards, config.beta, config.epsilon) == ("grpo", "group", 0.0, 0.2)
    assert config.epsilon_high is None       # the trainer then clips symmetrically
    assert (config.temperature, config.top_k, config.top_p) == (1.0, 0, 1.0)
    assert config.use_vllm is False


# ---------------------------------------------------------------- vLLM gating


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA available and vLLM installed at the version the test sets (default 0.25.0)."""
    installed = {"version": "0.25.0"}
    find_spec, version = importlib.util.find_spec, importlib.metadata.version

    def fake_find_spec(name, *args, **kwargs):
        if name == "vllm":
            return None if installed["version"] is None else object()
        return find_spec(name, *args, **kwargs)

    def fake_version(name):
        return installed["version"] if name == "vllm" else version(name)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    monkeypatch.setattr(grpo, "_cuda_vram_gb", lambda: 24.0)
    return installed


def test_use_vllm_on_for_a_supported_vllm_that_fits(fake_gpu):
    on, reason = use_vllm(get_profile("24gb", lab="grpo"), vram_gb=24.0)
    assert on and "0.25.0" in reason and "30%" in reason
    fake_gpu["version"] = "0.24.0+cu129"  # local tags do not count, as in TRL
    assert use_vllm(get_profile("24gb", lab="grpo"), vram_gb=24.0)[0]


def test_use_vllm_off_without_cuda_for_quantized_models_and_cpu_profiles(fake_gpu, monkeypatch):
    on, reason = use_vllm(get_profile("t4", lab="grpo"), vram_gb=16.0)  # 4-bit QLoRA
    assert not on and "4bit" in reason
    assert not use_vllm(get_profile("cpu", lab="grpo"), vram_gb=80.0)[0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # e.g. a stand-in GPU run
    on, reason = use_vllm(get_profile("24gb", lab="grpo"), vram_gb=24.0)
    assert not on and "CUDA" in reason


@pytest.mark.parametrize("version, reason", [(None, "not installed"), ("0.21.0", "outside"),
                                             ("0.32.0", "outside")])
def test_use_vllm_off_for_missing_or_unsupported_vllm(fake_gpu, version, reason):
    fake_gpu["version"] = version
    on, why = use_vllm(get_profile("24gb", lab="grpo"), vram_gb=24.0)
    assert not on and reason in why


def test_use_vllm_off_when_training_does_not_fit_next_to_vllms_share(fake_gpu):
    profile = get_profile("24gb", lab="grpo", rollout_batch_size=8, max_new_tokens=512)
    estimate = estimate_memory(train_plan(profile, "grpo"))  # about 11.2 GiB (64 completions of 512)
    assert estimate.fits(16 * GiB)  # fits a 16 GiB GPU on its own ...
    assert not estimate.fits(16 * GiB, reserved_bytes=int(0.3 * 16 * GiB))  # ... not beside vLLM
    on, reason = use_vllm(profile, vram_gb=16.0)
    assert not on and "does not fit" in reason


def test_rl_args_follow_use_vllm(fake_gpu, tmp_path, monkeypatch):
    args = grpo._rl_args(get_profile("24gb", lab="grpo"), tmp_path, None, 0)  # 24 GiB: fits
    assert args["use_vllm"] is True and args["vllm_mode"] == "colocate"
    assert args["vllm_gpu_memory_utilization"] == grpo.VLLM_GPU_MEMORY_UTILIZATION
    monkeypatch.setattr(grpo, "_cuda_vram_gb", lambda: 12.0)  # 7.7 GiB + vLLM's 3.6 > 90 % of 12
    assert grpo._rl_args(get_profile("24gb", lab="grpo"), tmp_path, None, 0)["use_vllm"] is False
    assert grpo._rl_args(get_profile("t4", lab="grpo"), tmp_path, None, 0)["use_vllm"] is False


def test_vllm_settings_match_trl():
    for config in (GRPOConfig, RLOOConfig):
        fields = config.__dataclass_fields__
        assert fields["vllm_gpu_memory_utilization"].default == grpo.VLLM_GPU_MEMORY_UTILIZATION
        assert fields["vllm_mode"].default == "colocate"
    source = inspect.getsource(is_vllm_available)
    low, high = grpo.VLLM_SUPPORTED
    assert f'Version("{low}") <= _vllm_base_version <= Version("{high}")' in source


def test_reward_setup_weights_are_exact_in_binary():
    funcs, weights = reward_setup(get_profile("cpu", lab="grpo"), overlong_fraction=1 / 3)
    assert [f.__name__ for f in funcs] == ["format_reward", "accuracy_reward", "overlong_penalty"]
    group = torch.tensor([weights[0] * 1.0 + weights[1] * 0.0] * 8, dtype=torch.float32)
    assert float(group.std()) == 0.0    # TRL's isclose(std, 0) needs an exact 0


def test_make_trainer_maps_each_variant_to_trl(tiny_policy, tmp_path):
    model, tok = tiny_policy
    profile = get_profile("cpu", lab="grpo_compare", max_steps=1)
    data = rl_dataset(profile, limit=16)
    expected = {"grpo": (GRPOTrainer, "grpo", "group", 0.2), "dapo": (DynamicSamplingGRPOTrainer, "dapo", "group", 0.28),
                "dr_grpo": (GRPOTrainer, "dr_grpo", "none", 0.2)}
    for name, (cls, loss_type, scale, eps_high) in expected.items():
        trainer = make_trainer(name, profile, model, tok, data, tmp_path / name)
        assert type(trainer) is cls
        assert (trainer.args.loss_type, trainer.args.scale_rewards, trainer.epsilon_high) == (loss_type, scale, eps_high)
        assert trainer.reward_func_names[-1] == ("overlong_penalty" if name == "dapo" else "accuracy_reward")
    rloo = make_trainer("rloo", profile, model, tok, data, tmp_path / "rloo")
    assert isinstance(rloo, RLOOTrainer) and rloo.args.normalize_advantages is False
    assert set(VARIANTS) == {"grpo", "clip_higher", "dynamic", "token_level", "dapo", "dr_grpo", "rloo",
                             "reinforce_pp", "gspo", "cispo", "sapo"}


def test_dynamic_sampling_replaces_zero_std_groups_in_a_short_run(tiny_policy, tmp_path):
    """An untrained policy never answers right: every group is all-wrong, the filter resamples
    max_rounds times, finds nothing better, and says so; the batch keeps its size."""
    model, tok = tiny_policy
    profile = get_profile("cpu", lab="grpo_compare", max_steps=1, rollout_batch_size=2, batch_size=16,
                          max_new_tokens=8)
    trainer = make_trainer("dapo", profile, model, tok, rl_dataset(profile, limit=8), tmp_path)
    trainer.max_rounds = 2
    trainer.model.train()
    rows = [dict(trainer.train_dataset[i]) for i in (0, 1) for _ in range(8)]
    batch = trainer._generate_and_score_completions(rows)
    assert batch["completion_ids"].shape[0] == 16
    metrics = trainer._metrics["train"]
    assert metrics["dynamic/frac_zero_std_before"] == [1.0]
    assert metrics["dynamic/extra_prompts"] == [4.0]      # 2 dead groups x 2 rounds
    assert metrics["dynamic/frac_zero_std_after"] == [1.0]
    assert len(metrics["reward"]) == 1                    # TRL's metrics describe the first sample only
    with pytest.raises(GRPOSetupError, match="filter_on"):
        DynamicSamplingGRPOTrainer(model=model, args=trainer.args, reward_funcs=trainer.reward_funcs,
                                   train_dataset=trainer.train_dataset, processing_class=tok, filter_on="nope")


def test_dynamic_sampling_keeps_groups_with_a_spread(tiny_policy, tmp_path, monkeypatch):
    """With rewards forced to alternate by call, resampled groups with a spread replace dead ones."""
    model, tok = tiny_policy
    profile = get_profile("cpu", lab="grpo_compare", max_steps=1, rollout_batch_size=2, batch_size=16,
                          max_new_tokens=4)
    trainer = make_trainer("dapo", profile, model, tok, rl_dataset(profile, limit=8), tmp_path)
    calls = []

    def fake_rewards(inputs, prompts, completions, completion_ids_list):
        calls.append(len(prompts))
        acc = [0.0] * len(prompts) if len(calls) == 1 else [float(i % 2) for i in range(len(prompts))]
        return torch.tensor([[1.0, a, 0.0] for a in acc])

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", lambda self, *a: fake_rewards(*a))
    trainer.model.train()
    rows = [dict(trainer.train_dataset[i]) for i in (0, 1) for _ in range(8)]
    batch = trainer._generate_and_score_completions(rows)
    assert calls == [16, 16]
    assert trainer._metrics["train"]["dynamic/frac_zero_std_after"] == [0.0]
    assert (batch["advantages"].abs() > 0.5).all()        # every group now has a spread


def test_every_variant_config_says_what_its_row_of_the_ablation_changes(tmp_path):
    """Each variant's TRL config differs from the one before it in the DAPO ladder by exactly its technique."""
    from labkit.grpo import DAPO_LADDER, variant_config

    profile = get_profile("cpu", lab="grpo_compare", max_steps=1)
    fields = ("loss_type", "scale_rewards", "epsilon", "epsilon_high", "importance_sampling_level", "reward_weights",
              "num_iterations")
    cfg = {n: variant_config(n, profile, tmp_path / n, num_iterations=2) for n in VARIANTS}
    got = {n: {f: getattr(c, f, None) for f in fields} for n, c in cfg.items()}
    assert all(g["num_iterations"] == 2 for g in got.values())
    changes = [{f for f in fields if got[a][f] != got[b][f]} for a, b in zip(DAPO_LADDER, DAPO_LADDER[1:])]
    assert changes == [{"epsilon_high"}, set(), {"loss_type"}, {"reward_weights"}]  # dynamic: the trainer class
    assert VARIANTS["dynamic"].dynamic_sampling and not VARIANTS["clip_higher"].dynamic_sampling
    assert got["reinforce_pp"]["scale_rewards"] == "batch" and got["reinforce_pp"]["loss_type"] == "grpo"
    assert (got["gspo"]["importance_sampling_level"], got["gspo"]["epsilon"], got["gspo"]["epsilon_high"]) == (
        "sequence", 3e-4, 4e-4)
    assert (got["cispo"]["loss_type"], got["cispo"]["epsilon_high"]) == ("cispo", 5.0)
    assert got["sapo"]["loss_type"] == "sapo"
    assert isinstance(cfg["rloo"], RLOOConfig)
    assert got["dapo"]["reward_weights"] == [0.5, 1.0, 1.0]


def test_wrong_answer_length_logs_only_wrong_answers_and_changes_no_reward():
    from labkit.grpo import reward_setup, wrong_answer_length

    got = wrong_answer_length(["<think>1+1=2</think> \\boxed{2}", "\\boxed{3}", "garbage"], answer=["2", "2", "2"],
                              completion_ids=[[1] * 9, [1] * 4, [1] * 7])
    assert got == [None, 4.0, 7.0]
    profile = get_profile("cpu", lab="grpo_compare", max_steps=1)
    funcs, weights = reward_setup(profile, wrong_length=True)
    assert funcs[-1] is wrong_answer_length and weights[-1] == 0.0


def test_step_timer_splits_a_short_run_and_changes_nothing(tiny_policy, tmp_path):
    from labkit.grpo import StepTimer

    model, tok = tiny_policy
    profile = get_profile("cpu", lab="grpo_compare", max_steps=1, rollout_batch_size=2, batch_size=16,
                          max_new_tokens=4)
    trainer = make_trainer("grpo", profile, model, tok, rl_dataset(profile, limit=8), tmp_path)
    timer = StepTimer(trainer)
    trainer.train()
    parts = timer.table()
    assert list(parts) == list(StepTimer.PARTS)
    assert all(v >= 0 for v in parts.values()) and parts["generation"] > 0 and parts[StepTimer.PARTS[-1]] > 0
