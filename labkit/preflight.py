"""Before loading a model: turn a profile into a memory plan and refuse it if it will not fit."""

from __future__ import annotations

from pathlib import Path

from labkit.hardware import GiB, Hardware
from labkit.memory import (
    MODEL_SPECS,
    MemoryBudgetError,
    MemoryEstimate,
    ModelSpec,
    TrainPlan,
    check_fits,
    estimate_memory,
    suggest_fix,
)
from labkit.profiles import Profile

TINY_VOCAB = 1024  # upper bound of the tiny tokenizer's vocabulary, for the estimate only


def model_spec(profile: Profile) -> ModelSpec:
    """The architecture numbers of the profile's model (no download needed): the tiny model's, a known
    hub id's (labkit.memory.MODEL_SPECS), or those in a local folder's config.json."""
    if profile.model_id == "tiny":
        from transformers import Qwen3Config

        from labkit.tiny import TINY_MODEL

        return ModelSpec.from_config(Qwen3Config(vocab_size=TINY_VOCAB, tie_word_embeddings=True,
                                                 **TINY_MODEL))
    if profile.model_id in MODEL_SPECS:
        return MODEL_SPECS[profile.model_id]
    config = Path(profile.model_id).expanduser() / "config.json"
    if config.is_file():  # a local folder (e.g. a model downloaded by hand): read its own numbers
        from transformers import AutoConfig

        return ModelSpec.from_config(AutoConfig.from_pretrained(str(config.parent)))
    raise KeyError(f"no architecture numbers for {profile.model_id!r}: pass a local folder with the "
                   f"model's config.json, or add it to labkit.memory.MODEL_SPECS (known: {sorted(MODEL_SPECS)})")


# Labs whose every example is a (chosen, rejected) pair: each step runs 2 x batch sequences.
PAIRWISE_LABS = ("rm", "dpo")
# Labs that train a sequence classifier with this many outputs (labkit.reward_model: num_labels=1).
CLASSIFIER_LABS = {"rm": 1}
# Labs that generate their training data: PPO (one response per prompt, plus a reward model)
# and GRPO (num_generations responses per prompt, rule rewards).
RL_LABS = ("ppo", "grpo", "grpo_compare")


def train_plan(profile: Profile, lab: str = "sft") -> TrainPlan:
    """The memory plan of training `lab` with `profile` (LoRA, batch, sequence, precision).

    lora_rank 0 means full fine-tuning. Reward-model and DPO batches hold pairs, so they count
    twice the sequences. The reward model is a one-output sequence classifier (`num_labels=1`):
    a score head instead of the lm_head, so no vocabulary-sized logits. DPO, PPO and GRPO
    without LoRA also keep a frozen reference copy of the model (with LoRA the reference is the
    same weights with the adapter switched off). PPO adds a reward model of the policy's size;
    its value function is a head on the policy (labkit.ppo), so `value_model` stays False here,
    and labkit.ppo does not use activation checkpointing, so the PPO plan counts full
    activations whatever the profile says.
    """
    common = dict(model=model_spec(profile), weight_dtype=profile.dtype, quant=profile.quant,
                  lora_rank=profile.lora_rank or None, lora_target_modules=tuple(profile.lora_targets),
                  gradient_accumulation_steps=profile.grad_accum)
    if lab in RL_LABS:
        ppo = lab == "ppo"
        return TrainPlan(**common, batch_size=profile.batch_size, ref_model=not profile.lora_rank,
                         gradient_checkpointing=profile.gradient_checkpointing and not ppo,
                         checkpointing_available=not ppo,
                         reward_model=model_spec(profile) if ppo else None,
                         num_generations=1 if ppo else profile.num_generations,
                         max_prompt_len=profile.max_length - profile.max_new_tokens,
                         max_completion_len=profile.max_new_tokens,
                         generation_batch_size=profile.rollout_batch_size * (1 if ppo else profile.num_generations))
    pairs = 2 if lab in PAIRWISE_LABS else 1
    return TrainPlan(**common, batch_size=profile.batch_size * pairs, seq_len=profile.max_length,
                     gradient_checkpointing=profile.gradient_checkpointing,
                     ref_model=lab == "dpo" and not profile.lora_rank,
                     num_labels=CLASSIFIER_LABS.get(lab), batch_multiple=pairs)


def profile_changes(profile: Profile, lab: str, plan: TrainPlan, fixed: TrainPlan) -> dict[str, object]:
    """The profile fields that turn `plan` (train_plan(profile, lab)) into `fixed` (a suggest_fix result):
    the names a student sets in a parameters cell, not TRL's (batch_size, not per_device_train_batch_size)."""
    changes: dict[str, object] = {}
    if fixed.gradient_checkpointing != plan.gradient_checkpointing:
        changes["gradient_checkpointing"] = fixed.gradient_checkpointing
    if fixed.batch_size != plan.batch_size:
        changes["batch_size"] = fixed.batch_size // (2 if lab in PAIRWISE_LABS else 1)
    if fixed.gradient_accumulation_steps != plan.gradient_accumulation_steps:
        changes["grad_accum"] = fixed.gradient_accumulation_steps
    if plan.generates and fixed.gen_batch_size != plan.gen_batch_size:
        changes["rollout_batch_size"] = fixed.gen_batch_size // (1 if lab == "ppo" else profile.num_generations)
    if plan.generates and fixed.max_completion_len != plan.max_completion_len:
        changes["max_new_tokens"] = fixed.max_completion_len
        changes["max_length"] = (fixed.max_prompt_len or 0) + (fixed.max_completion_len or 0)
    if fixed.quant != plan.quant:
        changes["quant"] = fixed.quant
    if fixed.lora_rank != plan.lora_rank:
        changes["lora_rank"] = fixed.lora_rank or 0
    if fixed.model != plan.model:
        changes["model_id"] = fixed.model.name
    return changes


def preflight(profile: Profile, hardware: Hardware, lab: str = "sft",
              plan: TrainPlan | None = None) -> MemoryEstimate:
    """Estimate peak memory; on a GPU, raise MemoryBudgetError (with the fix) if it won't fit.

    The fix is given twice: in TRL's names (labkit.memory) and as the profile fields to set.
    On the CPU profile there is no VRAM to check: the estimate is returned for display.
    """
    plan = plan or train_plan(profile, lab)
    if hardware.device != "cuda":
        return estimate_memory(plan)
    vram = int(hardware.vram_total_gb * GiB)
    try:
        return check_fits(plan, vram)
    except MemoryBudgetError as error:
        fix = suggest_fix(plan, vram)
        if fix is None:
            raise
        settings = ", ".join(f"{k}={v!r}" for k, v in profile_changes(profile, lab, plan, fix[0]).items())
        raise MemoryBudgetError(f"{error}\nIn the profile's fields (a notebook's parameters cell, or "
                                f"get_profile(..., field=value)): set {settings}.") from None
