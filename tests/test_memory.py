"""Tests for labkit.memory: hand-computed figures, Qwen3 sizes, budget errors and properties."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

from labkit.memory import (
    CUDA_OVERHEAD_BYTES,
    GiB,
    MODEL_SPECS,
    MemoryBudgetError,
    ModelSpec,
    TrainPlan,
    TrainPlanError,
    check_fits,
    estimate_memory,
    kv_cache_bytes,
    layer_activation_bytes,
    suggest_fix,
)

# A model small enough to count by hand: h=8, 2 layers, H=2 heads, KV=1, d=4, I=16, V=100.
TOY = ModelSpec("toy", vocab_size=100, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=1,
                head_dim=4, intermediate_size=16, tie_embeddings=True)
T4_VRAM = 16 * 10**9  # "16 GB" T4


def toy_plan(**changes) -> TrainPlan:
    base = dict(model=TOY, weight_dtype="fp16", batch_size=2, seq_len=10)
    return TrainPlan(**{**base, **changes})


# ---------------------------------------------------------------- parameter counts

def test_toy_param_count_by_hand():
    # per layer projections: q 8*8=64, k 8*4=32, v 32, o 8*8=64, gate/up/down 3*8*16=384 -> 576
    assert TOY.linear_params() == 2 * 576
    # + norms per layer 2*8 + q_norm/k_norm 2*4 = 24 (x2 layers = 48) + final norm 8
    # + embeddings 100*8 = 800 (tied: lm_head counted once) = 1152 + 48 + 8 + 800
    assert TOY.num_params() == 2008
    untied = dataclasses.replace(TOY, tie_embeddings=False)
    assert untied.num_params() == 2008 + 800


@pytest.mark.parametrize("tied", [True, False])
def test_from_config_matches_transformers_parameter_count(tied):
    config = Qwen3Config(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=4, intermediate_size=16,
                         tie_word_embeddings=tied)
    spec = ModelSpec.from_config(config)
    model = Qwen3ForCausalLM(config)
    assert spec.num_params() == sum(p.numel() for p in model.parameters())
    assert spec.num_params() == (2008 if tied else 2808)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (2, 1, 4)


@pytest.mark.parametrize("tied", [True, False])
def test_classifier_param_count_matches_transformers(tied):
    # A sequence classifier has a hidden x num_labels score head and no lm_head, tied or not.
    config = Qwen3Config(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=4, intermediate_size=16,
                         tie_word_embeddings=tied, num_labels=1)
    spec = ModelSpec.from_config(config)
    model = Qwen3ForSequenceClassification(config)
    assert spec.num_params(num_labels=1) == sum(p.numel() for p in model.parameters()) == 2008 + 8
    assert spec.num_params(num_labels=3) == 2008 + 24


def test_from_config_rejects_configs_without_decoder_sizes():
    from transformers import PretrainedConfig

    with pytest.raises(TrainPlanError, match="vocab_size"):
        ModelSpec.from_config(PretrainedConfig())


@pytest.mark.parametrize("name, total, non_embedding", [
    # tied models: the 151936 x h embedding is counted once
    ("Qwen/Qwen3-0.6B", 596_049_920, 440_467_456),    # card: 0.6B, 0.44B non-embedding
    ("Qwen/Qwen3-1.7B", 1_720_574_976, 1_409_410_048),  # card: 1.7B, 1.4B non-embedding
    ("Qwen/Qwen3-1.7B-Base", 1_720_574_976, 1_409_410_048),
    ("Qwen/Qwen3-4B", 4_022_468_096, 3_633_511_936),  # card: 4.0B, 3.6B non-embedding
    # untied: embedding and lm_head, 2 x 151936 x 4096
    ("Qwen/Qwen3-8B", 8_190_735_360, 6_946_075_648),  # card: 8.2B, 6.95B non-embedding
])
def test_qwen3_param_counts(name, total, non_embedding):
    spec = MODEL_SPECS[name]
    assert spec.num_params() == total
    embeddings = spec.vocab_size * spec.hidden_size * (1 if spec.tie_embeddings else 2)
    assert spec.num_params() - embeddings == non_embedding


# ---------------------------------------------------------------- hand-computed breakdowns

def test_full_finetune_fp16_adamw_by_hand():
    est = estimate_memory(toy_plan())
    b = est.breakdown
    assert b["weights"] == 2008 * 2  # fp16: 2 B/param
    assert b["gradients"] == 2008 * 2  # full FT: every param, in its load dtype
    assert b["optimizer_states"] == 2008 * 2 * 2  # AdamW: 2 states in the param dtype
    # per layer per token, a=2, T=10:
    #   always:  2*4*8 + 4*(2+1)*4 + 4*2*2*4 + 2*10 + 3*2*16 = 64+48+64+20+96 = 292
    #   full FT: 2*2*2*8 + 2*(2+1)*4 + 2*16               = 64+24+32       = 120
    # 412 B x 2 layers x (2 x 10) tokens
    assert b["activations"] == 412 * 2 * 20
    assert b["logits"] == 2 * 10 * 100 * (2 + 4 + 4)  # lm_head out + fp32 upcast + log-softmax
    assert b["lora_adapters"] == b["kv_cache"] == b["reference_model"] == 0
    assert b["cuda_overhead"] == CUDA_OVERHEAD_BYTES
    assert est.total_bytes == 4016 + 4016 + 8032 + 16480 + 20000 + CUDA_OVERHEAD_BYTES


def test_classifier_by_hand():
    # A reward model (num_labels=1): weights without lm_head, and logits of one score per token.
    b = estimate_memory(toy_plan(model=dataclasses.replace(TOY, tie_embeddings=False),
                                 num_labels=1)).breakdown
    assert b["weights"] == b["gradients"] == (2008 + 8) * 2  # not 2808: no untied lm_head
    assert b["logits"] == 2 * 10 * 1 * 2  # batch x tokens x 1 score in fp16, no vocab
    lm = estimate_memory(toy_plan(model=dataclasses.replace(TOY, tie_embeddings=False))).breakdown
    assert lm["logits"] == 2 * 10 * 100 * (2 + 4 + 4) and lm["weights"] == 2808 * 2
    assert b["activations"] == lm["activations"]  # the decoder is the same


def test_full_finetune_fp32_costs_16_bytes_per_param_before_activations():
    b = estimate_memory(toy_plan(weight_dtype="fp32")).breakdown
    # weights 4 + gradients 4 + AdamW 2 x 4 = 16 B/param
    assert b["weights"] + b["gradients"] + b["optimizer_states"] == 16 * 2008


def test_gradient_checkpointing_by_hand():
    b = estimate_memory(toy_plan(gradient_checkpointing=True)).breakdown
    # each layer keeps its input (a*h = 2*8) + one layer (412) is recomputed: 20 tokens
    assert b["activations"] == 20 * (2 * 2 * 8 + 412)


def test_lora_by_hand():
    b = estimate_memory(toy_plan(weight_dtype="bf16", lora_rank=2)).breakdown
    # r*(in+out): q 2*16, k 2*12, v 2*12, o 2*16, gate/up/down 3 * 2*24 = 256 per layer, 2 layers
    lora = 512
    assert b["weights"] == 2008 * 2  # the frozen base
    assert b["lora_adapters"] == lora * 4  # PEFT keeps adapters in fp32
    assert b["gradients"] == lora * 4  # only the adapters get gradients
    assert b["optimizer_states"] == lora * 2 * 4
    # per layer per token: always 292 + a copy of each adapted projection's input plus lora_A's
    # output: 2 * (in: 8*6 + 16 = 64, r: 7*2 = 14) = 156 -> 448; 2 layers x 20 tokens
    assert b["activations"] == 448 * 2 * 20
    fp32_compute = estimate_memory(toy_plan(weight_dtype="bf16", lora_rank=2, compute_dtype="fp32"))
    # a = 4: always 2*4*8 + 4*3*4 + 4*4*2*4 + 4*10 + 3*4*16 = 64+48+128+40+192 = 472, + 4*78
    assert fp32_compute.breakdown["activations"] == (472 + 4 * 78) * 2 * 20


def test_quantized_weights_by_hand():
    # 1152 projection params quantized; the other 2008 - 1152 = 856 stay fp16 (1712 B)
    four = estimate_memory(toy_plan(quant="4bit", lora_rank=2)).breakdown["weights"]
    eight = estimate_memory(toy_plan(quant="8bit", lora_rank=2)).breakdown["weights"]
    assert four == 1152 * 9 // 16 + 1712  # 4.5 bits = 0.5625 B/param -> 648
    assert eight == 1152 + 1712


def test_optimizer_variants_by_hand():
    lora = 512
    eight_bit = estimate_memory(toy_plan(lora_rank=2, optimizer="adamw_8bit")).breakdown
    assert eight_bit["optimizer_states"] == lora * 2 * (1 + 4 / 256)  # uint8 x2 + fp32 / 256
    assert estimate_memory(toy_plan(optimizer="sgd")).breakdown["optimizer_states"] == 0


def test_kv_cache_by_hand():
    # G=8 completions of 384 prompt + 128 completion = 512 tokens, bf16
    rl = dict(num_generations=8, max_prompt_len=384, max_completion_len=128,
              generation_batch_size=8, weight_dtype="bf16", seq_len=None)
    # 2 (K,V) x 2 layers x 1 kv head x 4 head_dim x 2 B = 32 B per token per sequence
    assert kv_cache_bytes(toy_plan(**rl)) == 32 * 8 * 512
    qwen = toy_plan(model=MODEL_SPECS["Qwen/Qwen3-0.6B"], **rl)
    # 2 x 28 x 8 x 128 x 2 = 114688 B per token -> 448 MiB for 8 x 512 tokens
    assert kv_cache_bytes(qwen) == 114688 * 8 * 512 == 448 * 2**20
    # TRL default generation batch: per_device_train_batch_size x gradient_accumulation_steps
    default = toy_plan(**{**rl, "generation_batch_size": None}, batch_size=4,
                       gradient_accumulation_steps=4)
    assert kv_cache_bytes(default) == 32 * 16 * 512


def test_peak_counts_generation_or_training_not_both():
    plan = toy_plan(weight_dtype="bf16", batch_size=1, seq_len=None, num_generations=8,
                    max_prompt_len=384, max_completion_len=128, generation_batch_size=256)
    est = estimate_memory(plan)
    b = est.breakdown
    assert b["kv_cache"] == 32 * 256 * 512
    assert b["logits"] == 1 * 128 * 100 * 10  # RL: logits for completion tokens only
    assert b["kv_cache"] > b["activations"] + b["logits"]
    static = b["weights"] + b["gradients"] + b["optimizer_states"] + CUDA_OVERHEAD_BYTES
    assert est.total_bytes == static + b["kv_cache"]


def test_reference_reward_and_value_models():
    reward = dataclasses.replace(TOY, tie_embeddings=False)  # 2808 params as a causal LM
    full = estimate_memory(toy_plan(ref_model=True, reward_model=reward, value_model=True))
    b = full.breakdown
    assert b["reference_model"] == b["weights"] == 2008 * 2
    assert b["reward_model"] == (2008 + 8) * 2  # a one-output classifier: score head, no lm_head
    # loaded like the policy: a 4-bit policy has a 4-bit reward model (1152 projection params)
    quantized = estimate_memory(toy_plan(quant="4bit", lora_rank=2, reward_model=reward)).breakdown
    assert quantized["reward_model"] == 1152 * 9 // 16 + (2016 - 1152) * 2
    assert b["value_model"] == (b["weights"] + b["gradients"] + b["optimizer_states"]
                                + b["activations"])
    # with LoRA the reference is the base with adapters disabled: free
    assert estimate_memory(toy_plan(lora_rank=2, ref_model=True)).breakdown["reference_model"] == 0


def test_layer_formula_matches_tensors_saved_by_autograd():
    """The per-layer formula against what autograd really saves in transformers' Qwen3."""
    from peft import LoraConfig, get_peft_model

    dims = dict(vocab_size=1000, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, intermediate_size=192, tie_word_embeddings=True, use_cache=False)
    batch, seq = 4, 128

    def saved_bytes_per_token(layers: int, lora: bool) -> float:
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=layers, **dims)).to(torch.bfloat16)
        if lora:
            model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor):
            if tensor.untyped_storage().data_ptr() not in params:
                saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        ids = torch.randint(0, 1000, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, :5] = 0  # left padding, as in a real batch
        # autocast, as TRL's default bf16=True does (it matters only for the fp32 LoRA adapters)
        with (torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
              torch.autocast("cpu", dtype=torch.bfloat16)):
            model(input_ids=ids, attention_mask=mask, labels=ids)
        return sum(saved.values()) / (batch * seq)

    spec = ModelSpec.from_config(Qwen3Config(num_hidden_layers=1, **dims))
    for lora in (False, True):
        measured = (saved_bytes_per_token(3, lora) - saved_bytes_per_token(1, lora)) / 2
        plan = TrainPlan(spec, lora_rank=8 if lora else None, seq_len=seq)
        assert layer_activation_bytes(plan) == pytest.approx(measured, rel=0.03)


# ---------------------------------------------------------------- budgets and fixes

def test_t4_full_finetune_is_refused_with_a_fix_that_fits():
    plan = TrainPlan(MODEL_SPECS["Qwen/Qwen3-1.7B"], weight_dtype="fp16", batch_size=8,
                     seq_len=1024)
    with pytest.raises(MemoryBudgetError) as info:
        check_fits(plan, T4_VRAM)
    message = str(info.value)
    assert "peak total" in message and "14.90 GiB VRAM" in message  # table and budget
    assert "set per_device_train_batch_size=2 and gradient_accumulation_steps=4" in message
    assert "4-bit" in message and "LoraConfig(r=16" in message

    fixed, text = suggest_fix(plan, T4_VRAM)
    assert text in message
    assert (fixed.batch_size, fixed.gradient_accumulation_steps) == (2, 4)  # same effective batch
    assert (fixed.quant, fixed.lora_rank) == ("4bit", 16)
    assert estimate_memory(fixed).fits(T4_VRAM)
    assert check_fits(fixed, T4_VRAM) == estimate_memory(fixed)


def test_first_single_change_is_preferred():
    # Qwen3-0.6B LoRA, batch 4 x 1024 tokens: ~18.4 GiB; checkpointing alone brings it to ~8.
    plan = TrainPlan(MODEL_SPECS["Qwen/Qwen3-0.6B"], lora_rank=16, batch_size=4, seq_len=1024)
    with pytest.raises(MemoryBudgetError, match=r"To fit: set gradient_checkpointing=True \("):
        check_fits(plan, T4_VRAM)


def test_batch_is_lowered_with_matching_accumulation():
    plan = TrainPlan(MODEL_SPECS["Qwen/Qwen3-0.6B"], lora_rank=16, batch_size=16, seq_len=1024,
                     gradient_checkpointing=True)
    fixed, text = suggest_fix(plan, T4_VRAM)
    assert text == "set per_device_train_batch_size=4 and gradient_accumulation_steps=4"
    assert not estimate_memory(dataclasses.replace(fixed, batch_size=8,
                                                   gradient_accumulation_steps=2)).fits(T4_VRAM)


def test_generation_batch_is_lowered_when_the_kv_cache_is_the_problem():
    plan = TrainPlan(MODEL_SPECS["Qwen/Qwen3-0.6B"], lora_rank=16, batch_size=1,
                     gradient_accumulation_steps=64, gradient_checkpointing=True,
                     num_generations=16, max_prompt_len=512, max_completion_len=4096)
    fixed, text = suggest_fix(plan, T4_VRAM)
    assert text.startswith("set generation_batch_size=")
    assert fixed.generation_batch_size % 16 == 0 and estimate_memory(fixed).fits(T4_VRAM)


def test_fitting_plan_returns_its_estimate():
    plan = TrainPlan(MODEL_SPECS["Qwen/Qwen3-0.6B"], lora_rank=16, batch_size=4, seq_len=512,
                     gradient_checkpointing=True)
    est = check_fits(plan, T4_VRAM)
    assert est == estimate_memory(plan) and est.total_bytes < 0.9 * T4_VRAM
    assert suggest_fix(plan, T4_VRAM) == (plan, "no change needed")


def test_reserved_memory_comes_out_of_the_budget():
    # e.g. a colocated vLLM engine holding 30% of the GPU (TRL's vllm_gpu_memory_utilization)
    plan = TrainPlan(MODEL_SPECS["Qwen/Qwen3-0.6B"], lora_rank=16, batch_size=4, seq_len=512,
                     gradient_checkpointing=True)
    est = estimate_memory(plan)
    vram = int(est.total_bytes / 0.8)  # fits in 90% on its own; 90% - 30% = 60% is too little
    reserved = int(0.3 * vram)
    assert est.fits(vram) and not est.fits(vram, reserved_bytes=reserved)
    assert check_fits(plan, vram) == est
    with pytest.raises(MemoryBudgetError, match=f"reserved = {(0.9 * vram - reserved) / GiB:.2f} GiB"):
        check_fits(plan, vram, reserved_bytes=reserved)
    fixed, _ = suggest_fix(plan, vram, reserved_bytes=reserved)
    assert fixed != plan and estimate_memory(fixed).fits(vram, reserved_bytes=reserved)
    with pytest.raises(ValueError, match="reserved_bytes"):
        est.fits(vram, reserved_bytes=-1)


def test_hopeless_plan_says_so():
    plan = TrainPlan(MODEL_SPECS["Qwen/Qwen3-0.6B"], seq_len=512)
    assert suggest_fix(plan, GiB) is None
    with pytest.raises(MemoryBudgetError, match="No combination"):
        check_fits(plan, GiB)


def test_table_is_aligned_and_skips_free_components():
    table = estimate_memory(TrainPlan(MODEL_SPECS["Qwen/Qwen3-0.6B"], seq_len=512)).table()
    lines = table.splitlines()
    assert lines[0].split() == ["component", "GiB"]
    assert lines[1].split() == ["weights", "1.11"]  # 596_049_920 x 2 B = 1.11 GiB
    assert len({len(line) for line in lines}) == 1  # every row (and the rule) equally wide
    assert "reward_model" not in table and lines[-1].startswith("peak total")


@pytest.mark.parametrize("bad, match", [
    (dict(quant="4bit"), "cannot be fully fine-tuned"),
    (dict(weight_dtype="float16"), "weight_dtype"),
    (dict(lora_rank=8, lora_target_modules=("qkv",)), "lora_target_modules"),
    (dict(optimizer="adam"), "optimizer"),
    (dict(seq_len=None), "seq_len"),
    (dict(max_completion_len=128), "only apply to RL"),
    (dict(num_labels=0), "num_labels"),
    (dict(seq_len=None, num_generations=4, max_prompt_len=8, max_completion_len=8, num_labels=1),
     "does not generate"),
    (dict(seq_len=None, num_generations=4), "max_prompt_len"),
    (dict(seq_len=None, num_generations=4, max_prompt_len=8, max_completion_len=8,
          generation_batch_size=6), "divisible by num_generations"),
])
def test_invalid_plans_are_rejected(bad, match):
    with pytest.raises(TrainPlanError, match=match):
        toy_plan(**bad)


def test_bad_budget_is_rejected():
    with pytest.raises(ValueError, match="headroom"):
        estimate_memory(toy_plan()).fits(T4_VRAM, headroom=1.5)


# ---------------------------------------------------------------- properties

plans = st.builds(
    TrainPlan,
    model=st.sampled_from(list(MODEL_SPECS.values())),
    weight_dtype=st.sampled_from(["bf16", "fp16", "fp32"]),
    batch_size=st.integers(1, 16),
    seq_len=st.integers(16, 4096),
    gradient_checkpointing=st.booleans(),
    optimizer=st.sampled_from(["adamw", "adamw_8bit", "sgd"]),
    ref_model=st.booleans(),
)


def total(plan: TrainPlan, **changes) -> int:
    return estimate_memory(dataclasses.replace(plan, **changes)).total_bytes


@settings(max_examples=60, deadline=None, database=None)
@given(plans)
def test_more_batch_more_memory(plan):
    assert total(plan, batch_size=plan.batch_size + 1) > total(plan)


@settings(max_examples=60, deadline=None, database=None)
@given(plans)
def test_lora_is_cheaper_than_full_finetuning_with_adamw(plan):
    # (with SGD full fine-tuning saves only gradients, and LoRA's extra input copies can win)
    assert total(plan, lora_rank=16, optimizer="adamw") < total(plan, optimizer="adamw")


@settings(max_examples=60, deadline=None, database=None)
@given(plans, st.sampled_from(["bf16", "fp16"]))
def test_4bit_is_cheaper_than_half_precision(plan, dtype):
    lora = dataclasses.replace(plan, lora_rank=16, weight_dtype=dtype)
    assert total(lora, quant="4bit") < total(lora, quant="8bit") < total(lora)


@settings(max_examples=60, deadline=None, database=None)
@given(plans)
def test_checkpointing_saves_memory(plan):
    assert total(plan, gradient_checkpointing=True) < total(plan, gradient_checkpointing=False)


@settings(max_examples=40, deadline=None, database=None)
@given(plans, st.sampled_from([8, 16, 24, 40, 80]))
def test_suggested_fix_always_fits(plan, vram_gb):
    fix = suggest_fix(plan, vram_gb * 10**9)
    if fix is not None:
        assert estimate_memory(fix[0]).fits(vram_gb * 10**9)
