"""Tests for labkit.preflight: profile -> memory plan, and refusing plans that will not fit."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from labkit import tiny
from labkit.data import load_split
from labkit.hardware import GiB, Hardware
from labkit.memory import MODEL_SPECS, MemoryBudgetError, ModelSpec, TrainPlan, estimate_memory
from labkit.preflight import TINY_VOCAB, model_spec, preflight, train_plan
from labkit.profiles import PROFILES, choose_profile, get_profile

CPU = Hardware(device="cpu", name="cpu (2 cores)", cpu_cores=2)


def gpu(vram_gb: float) -> Hardware:
    return Hardware(device="cuda", name="fake GPU", vram_total_gb=vram_gb, vram_free_gb=vram_gb,
                    capability=(8, 6), bf16=True)


# ---------------------------------------------------------------- model_spec


def test_tiny_spec_matches_a_built_tiny_model():
    rows = load_split("pretrain", limit=100)
    tok = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
    model = tiny.build_model(tok)
    built = ModelSpec.from_config(model.config)
    spec = model_spec(PROFILES["cpu"])
    # Everything but the vocabulary (the real one depends on the data; TINY_VOCAB bounds it).
    assert dataclasses.replace(spec, name=built.name, vocab_size=built.vocab_size) == built
    assert spec.vocab_size == TINY_VOCAB and built.vocab_size <= TINY_VOCAB
    # With the real vocabulary the spec counts the parameters exactly.
    assert dataclasses.replace(spec, vocab_size=len(tok)).num_params() == \
        sum(p.numel() for p in model.parameters())


def test_tiny_vocab_bounds_the_default_tokenizer():
    default = inspect.signature(tiny.build_tokenizer).parameters["vocab_size"].default
    assert default + 2 <= TINY_VOCAB  # BPE vocabulary + <think> and </think>


def test_tiny_spec_numbers():
    spec = model_spec(PROFILES["cpu"])
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim,
            spec.intermediate_size, spec.tie_embeddings) == (128, 4, 4, 2, 32, 384, True)
    assert spec.num_params() == 787_840 + 128 * 1024  # see tests/test_tiny.py for the count


@pytest.mark.parametrize("name", ["t4", "24gb", "80gb"])
def test_gpu_specs_come_from_model_specs(name):
    assert model_spec(PROFILES[name]) is MODEL_SPECS[PROFILES[name].model_id]


def test_unknown_model_id():
    profile = get_profile("24gb", model_id="Qwen/Qwen9-1T")
    with pytest.raises(KeyError, match="MODEL_SPECS") as error:
        model_spec(profile)
    assert "Qwen/Qwen9-1T" in str(error.value) and "Qwen/Qwen3-0.6B" in str(error.value)


# ---------------------------------------------------------------- train_plan


def test_train_plan_maps_profile_fields():
    plan = train_plan(PROFILES["t4"])
    assert plan == TrainPlan(
        model=MODEL_SPECS["Qwen/Qwen3-0.6B"], weight_dtype="fp16", quant="4bit", lora_rank=16,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj"),
        batch_size=4, gradient_accumulation_steps=4, seq_len=768, gradient_checkpointing=True,
    )


def test_train_plan_follows_overrides():
    profile = get_profile("80gb", lora_rank=8, batch_size=2, grad_accum=3, max_length=333,
                          lora_targets=("q_proj", "v_proj"), gradient_checkpointing=True)
    plan = train_plan(profile)
    assert (plan.weight_dtype, plan.quant, plan.lora_rank, plan.batch_size,
            plan.gradient_accumulation_steps, plan.seq_len, plan.lora_target_modules,
            plan.gradient_checkpointing) == \
        ("bf16", None, 8, 2, 3, 333, ("q_proj", "v_proj"), True)


# ---------------------------------------------------------------- preflight


def test_preflight_refuses_24gb_profile_on_4gb():
    with pytest.raises(MemoryBudgetError) as error:
        preflight(PROFILES["24gb"], gpu(4.0))
    message = str(error.value)
    assert "To fit" in message
    assert "Qwen/Qwen3-1.7B-Base" in message and "4.00 GiB" in message


def test_preflight_passes_24gb_profile_on_24gb():
    estimate = preflight(PROFILES["24gb"], gpu(24.0))
    assert estimate == estimate_memory(train_plan(PROFILES["24gb"]))
    assert 0 < estimate.total_bytes <= 0.9 * 24 * GiB


def test_preflight_on_cpu_returns_the_estimate():
    estimate = preflight(PROFILES["cpu"], CPU)
    assert estimate == estimate_memory(train_plan(PROFILES["cpu"]))
    assert estimate.total_bytes > 0
    # No VRAM to check on a CPU, even for a plan that would not fit any GPU.
    assert preflight(get_profile("24gb", batch_size=512), CPU).total_bytes > 80 * GiB


def test_preflight_uses_the_given_plan():
    with pytest.raises(MemoryBudgetError):
        preflight(PROFILES["24gb"], gpu(8.0))  # the profile's own plan: about 10.9 GiB
    small = dataclasses.replace(train_plan(PROFILES["24gb"]), batch_size=1, seq_len=64)
    assert preflight(PROFILES["24gb"], gpu(8.0), plan=small) == estimate_memory(small)


@pytest.mark.parametrize("name", [
    "t4",
    "24gb",
    "80gb",  # needs gradient checkpointing: batch 16 x 1024 without it is estimated at 80.2 GiB
])
def test_every_gpu_profile_fits_its_smallest_gpu(name):
    profile = PROFILES[name]
    preflight(profile, gpu(profile.min_vram_gb))


def test_pairwise_labs_count_chosen_and_rejected_sequences():
    from labkit.preflight import train_plan

    t4_dpo = get_profile("t4", lab="dpo")
    assert train_plan(t4_dpo, "dpo").batch_size == 2 * t4_dpo.batch_size
    assert train_plan(t4_dpo, "sft").batch_size == t4_dpo.batch_size
    assert not train_plan(t4_dpo, "dpo").ref_model          # LoRA: the reference is free
    full = get_profile("24gb", lab="dpo", lora_rank=0)
    plan = train_plan(full, "dpo")
    assert plan.lora_rank is None and plan.ref_model        # full fine-tuning keeps a frozen copy
    assert train_plan(get_profile("cpu", lab="rm"), "rm").lora_rank is None


A100_40GB = Hardware(device="cuda", name="A100-SXM4-40GB", vram_total_gb=39.4, vram_free_gb=39.0,
                     capability=(8, 0), bf16=True)


def test_reward_model_plan_is_a_classifier_without_vocab_logits():
    assert choose_profile(A100_40GB) == "80gb"
    profile = get_profile("80gb", lab="rm")
    rm, sft = train_plan(profile, "rm"), train_plan(profile, "sft")
    assert rm.num_labels == 1 and sft.num_labels is None
    rm_logits = estimate_memory(rm).breakdown["logits"]
    assert rm_logits == rm.batch_size * rm.seq_len * 1 * 2  # one bf16 score per token
    assert rm_logits * 10_000 < estimate_memory(sft).breakdown["logits"]
    estimate = preflight(profile, A100_40GB, lab="rm")  # was refused: 58.6 GiB, 46 of it logits
    assert estimate.total_bytes <= 0.9 * 39.4 * GiB


def test_untied_reward_model_has_no_lm_head():
    profile = get_profile("80gb", lab="rm", model_id="Qwen/Qwen3-8B")  # untied embeddings
    spec = MODEL_SPECS["Qwen/Qwen3-8B"]
    weights = estimate_memory(train_plan(profile, "rm")).breakdown["weights"]
    assert weights == (spec.num_params() - spec.vocab_size * spec.hidden_size + spec.hidden_size) * 2


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_rl_plans_ppo_holds_a_reward_model_grpo_generates_groups(name):
    ppo_profile, grpo_profile = get_profile(name, lab="ppo"), get_profile(name, lab="grpo")
    ppo, grpo = train_plan(ppo_profile, "ppo"), train_plan(grpo_profile, "grpo")
    assert ppo.num_generations == 1 and ppo.gen_batch_size == ppo_profile.rollout_batch_size
    assert ppo.reward_model == ppo.model and grpo.reward_model is None
    assert grpo.num_generations == grpo_profile.num_generations
    for plan, profile in ((ppo, ppo_profile), (grpo, grpo_profile)):
        if profile.device == "cuda":  # the lab's defaults fit the smallest GPU the profile is for
            assert estimate_memory(plan).fits(int(profile.min_vram_gb * GiB))
        assert plan.train_seq_len == profile.max_length
        assert plan.max_completion_len == profile.max_new_tokens
        assert plan.ref_model == (profile.lora_rank == 0)
    assert not ppo.value_model  # labkit.ppo: a value head on the policy, not a second model
    assert not ppo.gradient_checkpointing  # labkit.ppo keeps every activation
    assert grpo.gradient_checkpointing == grpo_profile.gradient_checkpointing
    with_value_model = estimate_memory(dataclasses.replace(ppo, value_model=True))
    assert with_value_model.total_bytes > estimate_memory(ppo).total_bytes
    assert estimate_memory(ppo).breakdown["reward_model"] > 0 == estimate_memory(grpo).breakdown["reward_model"]


@pytest.mark.parametrize("lab", ["sft", "rm", "dpo", "ppo", "grpo"])
@pytest.mark.parametrize("name, vram_gb", [("24gb", 12.0), ("80gb", 20.0), ("24gb", 8.0), ("t4", 6.0)])
def test_a_refusal_names_profile_fields_that_make_it_fit(lab, name, vram_gb):
    """The advice is in the fields a student sets (batch_size, grad_accum, max_new_tokens, ...), and
    setting exactly those fields makes the same lab pass the same check."""
    from labkit.memory import suggest_fix
    from labkit.preflight import profile_changes

    profile = get_profile(name, lab=lab)
    plan = train_plan(profile, lab)
    fix = suggest_fix(plan, int(vram_gb * GiB))
    if estimate_memory(plan).fits(int(vram_gb * GiB)) or fix is None:
        pytest.skip("fits already, or nothing we know fits")
    with pytest.raises(MemoryBudgetError, match="In the profile's fields") as error:
        preflight(profile, gpu(vram_gb), lab=lab)
    changes = profile_changes(profile, lab, plan, fix[0])
    assert changes and "per_device_train_batch_size" not in str(error.value).rsplit("\n", 1)[1]
    fixed = get_profile(name, lab=lab, **changes)
    preflight(fixed, gpu(vram_gb), lab=lab)  # no error
