"""Hardware profiles: one flat record of every size and switch a lab needs.

A profile fixes the model, precision, quantization, LoRA and the batch / generation sizes.
Labs may adjust a few fields (`LAB_OVERRIDES`), and a notebook's `parameters` cell may
override any field by name. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from labkit.hardware import Hardware

SYSTEM_PROMPT = ("Solve the math problem. Think step by step inside <think>...</think>, "
                 "then give only the final number after </think>.")

# A public math preference set (2,418 pairs: instruction, chosen_response, rejected_response).
MATH_PREFS = "argilla/distilabel-math-preference-dpo"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str                      # "cpu" or "cuda"
    min_vram_gb: float               # the smallest GPU this profile is meant for
    model_id: str                    # "tiny" = the kit's own model; else a hub id or local path
    dtype: str                       # "fp32" | "fp16" | "bf16"
    quant: str | None                # None | "4bit" (QLoRA through bitsandbytes)
    dataset: str                     # "kit" (data/) or "gsm8k"
    system_prompt: str | None        # prepended to every prompt (None: the tiny model has none)
    pref_dataset: str = "kit"        # preference pairs: "kit" (data/prefs.jsonl), a hub id or a path
    lora_rank: int = 16              # 0 = full fine-tuning (no LoRA)
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj")
    batch_size: int = 8              # per-device micro-batch
    grad_accum: int = 1
    max_steps: int = 100
    learning_rate: float = 2e-4
    max_length: int = 512            # prompt + response tokens for training
    max_new_tokens: int = 256        # generation budget at evaluation / rollout time
    num_generations: int = 8         # G completions per prompt in RL labs
    rollout_batch_size: int = 64     # prompts sampled per RL step (PPO: one response each)
    eval_limit: int = 200            # held-out problems evaluated
    eval_batch_size: int = 32
    gradient_checkpointing: bool = False
    beta: float = 0.1                # DPO's beta (strength of the pull toward the reference)
    data_dir: str | None = None      # folder of hub repos downloaded by hand (labkit.hub), absolute

    def table(self, hardware: Hardware | None = None) -> str:
        """A two-column text table of the hardware (if given) and every profile field."""
        rows = hardware.rows() if hardware else []
        rows += [(f.name, str(getattr(self, f.name))) for f in fields(self)]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def summary(self, hardware: Hardware | None = None) -> str:
        """Three lines for a notebook's first output: machine, model and training budget.
        `profile.table(hardware)` prints every field."""
        machine = f"{hardware.name}" + (f", {hardware.vram_total_gb:.0f} GiB" if hardware and hardware.device == "cuda"
                                        else "") if hardware else self.device
        tuning = f"LoRA r={self.lora_rank}" if self.lora_rank else "full fine-tuning"
        quant = f", {self.quant}" if self.quant else ""
        return "\n".join([
            f"profile '{self.name}' on {machine}: {self.description}",
            f"model {self.model_id} ({self.dtype}{quant}, {tuning}); data {self.dataset}; "
            f"batch {self.batch_size}x{self.grad_accum}, {self.max_steps} steps, lr {self.learning_rate:g}, "
            f"up to {self.max_new_tokens} new tokens",
            "every setting: print(profile.table())",
        ])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu", description="CPU only, offline: the kit's tiny model and data (CI, laptops)",
        device="cpu", min_vram_gb=0, model_id="tiny", dtype="fp32", quant=None, dataset="kit",
        system_prompt=None, lora_rank=16, lora_alpha=32, batch_size=32, max_steps=200,
        learning_rate=5e-3, max_length=128, max_new_tokens=48, num_generations=8,
        eval_limit=300, eval_batch_size=100,
    ),
    "t4": Profile(
        name="t4", description="16 GB, no bf16 (Colab T4): Qwen3-0.6B, fp16 compute, 4-bit + LoRA",
        device="cuda", min_vram_gb=14, model_id="Qwen/Qwen3-0.6B", dtype="fp16", quant="4bit",
        dataset="gsm8k", pref_dataset=MATH_PREFS, system_prompt=SYSTEM_PROMPT, batch_size=4,
        grad_accum=4, max_steps=200, learning_rate=2e-4, max_length=768, max_new_tokens=256,
        num_generations=4, eval_limit=200, eval_batch_size=64, gradient_checkpointing=True,
    ),
    "24gb": Profile(
        name="24gb", description="24 GB (RTX 3090/4090): Qwen3-1.7B-Base, bf16, LoRA",
        device="cuda", min_vram_gb=22, model_id="Qwen/Qwen3-1.7B-Base", dtype="bf16",
        quant=None, dataset="gsm8k", pref_dataset=MATH_PREFS, system_prompt=SYSTEM_PROMPT,
        batch_size=4, grad_accum=4, max_steps=300, learning_rate=1e-4, max_length=1024,
        max_new_tokens=384, num_generations=8, eval_limit=300, eval_batch_size=64,
        gradient_checkpointing=True,
    ),
    "80gb": Profile(
        name="80gb", description="40-80 GB (A100/H100): Qwen3-1.7B-Base, bf16, LoRA, larger groups",
        device="cuda", min_vram_gb=38, model_id="Qwen/Qwen3-1.7B-Base", dtype="bf16",
        quant=None, dataset="gsm8k", pref_dataset=MATH_PREFS, system_prompt=SYSTEM_PROMPT,
        lora_rank=64, lora_alpha=128, batch_size=16, grad_accum=1, max_steps=500,
        learning_rate=1e-4, max_length=1024, max_new_tokens=512, num_generations=16,
        eval_limit=500, eval_batch_size=128, gradient_checkpointing=True,
    ),
}

# Per-lab adjustments on top of a profile (fields not named keep the profile's value).
# GPU entries: sized so that each lab, with the stages it builds when they are not cached yet, is
# planned within labkit.timeplan.BUDGET_MIN (45 min on a T4, 20 on a 4090, 30 on an A100); see
# `python -m labkit.timeplan --profile t4`. On a T4 and a 4090 the RL runs are demonstrations
# (a few steps); TIME_BUDGET_MIN and MAX_STEPS in a notebook's parameters cell run longer.
LAB_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    # 100 steps teach the tiny base the format on every seed measured (format rate 1.0) and leave the
    # SFT model short of perfect on level 3 (sampled accuracy about 0.63-0.74 over 3 seeds), so the RL
    # and test-time-compute labs have something to improve; 200 steps left level 3 at about 0.9.
    # GPU: the SFT stage is built by every later lab that finds it missing, so it stays short.
    "sft": {"cpu": {"max_steps": 100}, "t4": {"grad_accum": 2, "max_steps": 90},
            "24gb": {"max_steps": 45}, "80gb": {"max_steps": 100}},
    # The tiny reward model is fully fine-tuned: it must learn to compare numbers, which
    # LoRA on a 128-wide model learns far more slowly. GPU profiles keep LoRA.
    "rm": {"cpu": {"lora_rank": 0, "batch_size": 16, "max_steps": 400, "learning_rate": 1.5e-3},
           "t4": {"grad_accum": 1, "max_steps": 50, "max_length": 512},
           "24gb": {"grad_accum": 2, "max_steps": 28},
           "80gb": {"batch_size": 8, "max_steps": 60}},
    # PPO (labkit.ppo): max_steps = PPO steps, batch_size x grad_accum = minibatch. labkit.ppo keeps
    # all activations (no checkpointing), so the GPU micro-batches are smaller than for SFT.
    "ppo": {"cpu": {"batch_size": 16, "max_steps": 36, "learning_rate": 5e-4, "rollout_batch_size": 64},
            "t4": {"learning_rate": 2e-5, "rollout_batch_size": 16, "max_steps": 18, "eval_limit": 64},
            "24gb": {"learning_rate": 2e-5, "rollout_batch_size": 16, "batch_size": 2, "grad_accum": 8,
                     "max_steps": 14, "eval_limit": 64},
            "80gb": {"learning_rate": 2e-5, "rollout_batch_size": 32, "batch_size": 4, "grad_accum": 4,
                     "max_steps": 20, "eval_limit": 128}},
    # GRPO (labkit.grpo): max_steps = RL steps of rollout_batch_size prompts x num_generations;
    # batch_size = completions per micro-step. The tiny policy is fully fine-tuned (on CPU LoRA
    # learned too slowly from the RL signal), at a small learning rate: noisy RL gradients at
    # 1e-3 and above made it collapse. GPU profiles: LoRA on the SFT model.
    "grpo": {"cpu": {"lora_rank": 0, "batch_size": 128, "max_steps": 64, "learning_rate": 1e-4,
                     "rollout_batch_size": 16},
             "t4": {"learning_rate": 2e-5, "rollout_batch_size": 4, "max_steps": 12, "eval_limit": 64},
             "24gb": {"learning_rate": 2e-5, "rollout_batch_size": 4, "max_steps": 5, "eval_limit": 64},
             "80gb": {"learning_rate": 2e-5, "rollout_batch_size": 4, "max_steps": 10, "eval_limit": 128}},
    # Lab 06 trains four variants on one budget: fewer steps each (CPU: 8 prompts x 8 per step).
    "grpo_compare": {"cpu": {"lora_rank": 0, "batch_size": 64, "max_steps": 30, "learning_rate": 1e-4,
                             "rollout_batch_size": 8},
                     "t4": {"learning_rate": 2e-5, "rollout_batch_size": 4, "max_steps": 8,
                            "eval_limit": 64},
                     "24gb": {"learning_rate": 2e-5, "rollout_batch_size": 4, "max_steps": 4,
                              "eval_limit": 64},
                     "80gb": {"learning_rate": 2e-5, "rollout_batch_size": 4, "max_steps": 6,
                              "eval_limit": 128}},
    # Lab 07 (test-time compute) trains nothing: eval_limit = questions of the hard level, each
    # sampled MAX_N times (NOTEBOOK_PARAMS), so the GPU profiles sample few questions, in large
    # generate batches (eval_batch_size counts completions: 128 = 8 questions x 16).
    "best_of_n": {"cpu": {}, "t4": {"eval_limit": 32, "eval_batch_size": 128},
                  "24gb": {"eval_limit": 32, "eval_batch_size": 128},
                  "80gb": {"eval_limit": 64, "eval_batch_size": 256}},
    "dpo": {"cpu": {"batch_size": 16, "max_steps": 40, "learning_rate": 2e-3},
            "t4": {"batch_size": 2, "grad_accum": 2, "learning_rate": 5e-5, "max_steps": 30,
                   "max_length": 512, "eval_limit": 64},
            "24gb": {"batch_size": 2, "grad_accum": 4, "learning_rate": 5e-5, "max_steps": 18,
                     "eval_limit": 64},
            "80gb": {"batch_size": 8, "grad_accum": 2, "learning_rate": 5e-5, "max_steps": 28,
                     "eval_limit": 128}},
}
# Lab 08 trains DPO, KTO and ORPO on lab 03's budget (and runs its GRPO DDP demo on the CPU's tiny model).
LAB_OVERRIDES["tools"] = {name: dict(sizes) for name, sizes in LAB_OVERRIDES["dpo"].items()}


# Notebook parameters that are not profile fields (lab 07's MAX_N, ...): "default" holds the
# notebooks' own values; a GPU profile's entry the smaller ones that keep its labs within
# labkit.timeplan.BUDGET_MIN. A parameters cell that leaves one None gets the profile's value
# through notebook_params (and labkit.timeplan counts the same values).
NOTEBOOK_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "rm": {"default": {"SAMPLE_QUESTIONS": 150, "SAMPLES_PER_QUESTION": 4}},
    # Lab 03: GPU profiles skip the beta sweep by default; step 6's mild run takes its time
    # (SWEEP_BETAS = (0.5,) adds the same-learning-rate run back, ~10 min on a T4)
    "dpo": {"default": {"SWEEP_BETAS": (0.03, 0.5)},
            **{gpu: {"SWEEP_BETAS": ()} for gpu in ("t4", "24gb", "80gb")}},
    "ppo": {"default": {"NUM_PPO_EPOCHS": 2}},
    # Lab 05 on cpu: 8 samples per held-out question (less sampling noise in its gain over SFT);
    # GPU profiles sample 4 to stay within their time plan.
    "grpo": {"default": {"EVAL_SAMPLES": 8, "BETA": 0.04},
             **{gpu: {"EVAL_SAMPLES": 4} for gpu in ("t4", "24gb", "80gb")}},
    # Lab 06: the whole ablation (labkit.grpo.VARIANTS) on the CPU; GPU profiles train four of them
    # by default to stay within their time plan (VARIANTS in the parameters cell runs more).
    "grpo_compare": {"default": {"EVAL_SAMPLES": 2, "VARIANTS": (
                         "grpo", "clip_higher", "dynamic", "token_level", "dapo", "dr_grpo", "rloo",
                         "reinforce_pp", "gspo", "cispo", "sapo")},
                     **{gpu: {"VARIANTS": ("grpo", "dapo", "dr_grpo", "rloo")} for gpu in ("t4", "24gb", "80gb")}},
    "best_of_n": {"default": {"MAX_N": 32, "OTHER_LIMIT": 64, "GRPO_N": 16},
                  "t4": {"MAX_N": 16, "OTHER_LIMIT": 16, "GRPO_N": 8},
                  "24gb": {"MAX_N": 16, "OTHER_LIMIT": 16, "GRPO_N": 8},
                  "80gb": {"MAX_N": 16, "OTHER_LIMIT": 32, "GRPO_N": 16}},
}


# The lab names get_profile knows (the `lab=` of labkit.runtime.setup, and the stage names): a typo
# such as "gpro" must not quietly get another lab's sizes and memory plan.
LABS = ("env", "base", "sft", "rm", "dpo", "ppo", "grpo", "grpo_compare", "best_of_n", "tools")


class ProfileError(ValueError):
    """An unknown profile or field, or a profile that does not match the hardware."""


def choose_profile(hw: Hardware) -> str:
    """The largest profile whose memory floor the detected GPU meets; "cpu" without a GPU.

    A GPU without bf16 (T4, V100) always gets "t4": its fp16 + 4-bit recipe is the one that works there.
    A GPU that nvidia-smi sees but torch cannot use is an error (with the fix), not "cpu".
    """
    if hw.device != "cuda":
        if hw.unusable_gpu:  # never fall back to the cpu profile quietly on a GPU machine
            raise ProfileError(hw.unusable_gpu)
        return "cpu"
    for name in ("80gb", "24gb", "t4") if hw.bf16 else ("t4",):
        if hw.vram_total_gb >= PROFILES[name].min_vram_gb:
            return name
    raise ProfileError(
        f"{hw.name} has {hw.vram_total_gb:.1f} GiB; the smallest GPU profile needs "
        f"{PROFILES['t4'].min_vram_gb} GiB. Use PROFILE = 'cpu' in the parameters cell."
    )


def get_profile(name: str = "auto", lab: str | None = None, hardware: Hardware | None = None,
                **overrides: Any) -> Profile:
    """Resolve `name` ("auto" picks from `hardware`), apply the lab's and the caller's overrides.

    Overrides whose value is None are ignored, so a parameters cell can say `MAX_STEPS = None`
    to mean "the profile's default". In a stand-in run (labkit.standin) GPU profiles get its
    SMOKE sizes before the caller's overrides. The result is checked (check_profile) before
    anything loads: a bad value raises ProfileError naming the field and a value that works.
    """
    from labkit.standin import SMOKE, world

    if name == "auto":
        if hardware is None:
            from labkit.hardware import detect
            hardware = detect()
        name = choose_profile(hardware)
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} or 'auto'")
    profile = PROFILES[name]
    if hardware is not None and profile.device == "cuda" and hardware.device != "cuda":
        raise ProfileError(f"profile {name!r} needs a CUDA GPU but none was found; use 'cpu'")
    valid = {f.name for f in fields(Profile)}
    if lab is not None and lab not in LABS and lab not in LAB_OVERRIDES:
        raise ProfileError(f"unknown lab {lab!r}; known labs: {', '.join(LABS)}")
    changes = dict(LAB_OVERRIDES.get(lab or "", {}).get(name, {}))
    if world() is not None and profile.device == "cuda":
        changes.update(SMOKE)
    changes.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(changes.get("model_id"), str) and os.path.isdir(os.path.expanduser(changes["model_id"])):
        # A local folder: stored absolute, because stages and kernels resolve it from other folders.
        changes["model_id"] = os.path.abspath(os.path.expanduser(changes["model_id"]))
    if changes.get("data_dir") is not None:
        # Where the data came from, not what it is: stored absolute, and in no stage key.
        given = changes["data_dir"]
        changes["data_dir"] = os.path.abspath(os.path.expanduser(os.fspath(given)))
        if not os.path.isdir(changes["data_dir"]):
            raise ProfileError(f"data_dir {os.fspath(given)!r} is not an existing folder "
                               "(DATA_DIR: the folder holding the repos you downloaded by hand)")
    unknown = sorted(set(changes) - valid)
    if unknown:
        raise ProfileError(f"unknown profile field(s) {unknown}; valid fields: {sorted(valid)}")
    if isinstance(changes.get("lora_targets"), list):
        changes["lora_targets"] = tuple(changes["lora_targets"])
    for key, value in changes.items():  # numpy integers (np.int64(8)) become plain ints for TRL
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
            changes[key] = int(value)
    defaults = replace(profile, **{k: v for k, v in LAB_OVERRIDES.get(lab or "", {}).get(name, {}).items()
                                   if k in valid})
    resolved = replace(profile, **changes)
    check_profile(resolved, lab, defaults)
    return resolved


# ---------------------------------------------------------------- field checks
# Every field a student may set is checked here, before any model loads: the error names the field,
# what it must be, and a value that works (the profile's own value for this lab).


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: type(v) is int and v >= low), f"an integer >= {low}"


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "device": (lambda v: v in ("cpu", "cuda"), "'cpu' or 'cuda'"),
    "min_vram_gb": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                    "a number >= 0"),
    "model_id": (lambda v: isinstance(v, str) and v.strip() != "",
                 "'tiny', a hub id such as 'Qwen/Qwen3-0.6B', or a local folder"),
    "dtype": (lambda v: v in ("fp32", "fp16", "bf16"), "'fp32', 'fp16' or 'bf16'"),
    "quant": (lambda v: v is None or v == "4bit", "None or '4bit'"),
    "dataset": (lambda v: v in ("kit", "gsm8k"), "'kit' or 'gsm8k'"),
    "system_prompt": (lambda v: v is None or isinstance(v, str), "None or a string"),
    "pref_dataset": (lambda v: isinstance(v, str) and v.strip() != "", "'kit', a hub id or a path"),
    "lora_rank": _int_at_least(0),
    "lora_alpha": (_positive_number, "a number > 0"),
    "lora_dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                     "a number in [0, 1)"),
    "lora_targets": (lambda v: isinstance(v, tuple) and len(v) > 0 and all(isinstance(t, str) and t for t in v),
                     "a non-empty tuple of module names such as ('q_proj', 'v_proj')"),
    "batch_size": _int_at_least(1),
    "grad_accum": _int_at_least(1),
    "max_steps": _int_at_least(1),
    "learning_rate": (_positive_number, "a number > 0"),
    "max_length": _int_at_least(1),
    "max_new_tokens": _int_at_least(1),
    "num_generations": _int_at_least(1),
    "rollout_batch_size": _int_at_least(1),
    "eval_limit": _int_at_least(1),
    "eval_batch_size": _int_at_least(1),
    "gradient_checkpointing": (lambda v: isinstance(v, bool), "True or False"),
    "beta": (_positive_number, "a number > 0"),
    "data_dir": (lambda v: v is None or isinstance(v, str), "None or an existing folder"),
}
RL_LAB_NAMES = ("ppo", "grpo", "grpo_compare")  # labs whose sequences are a prompt plus a generated response


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def check_profile(profile: Profile, lab: str | None = None, defaults: Profile | None = None) -> None:
    """Raise ProfileError unless every field of `profile` has a usable value for `lab`.

    The message names the field a student sets, what it must be, and a value that works: the
    value in `defaults` (the profile before the caller's overrides) where that one is valid.
    """
    for f in fields(Profile):
        check, must = FIELD_RULES[f.name]
        value = getattr(profile, f.name)
        if not check(value):
            hint = ""
            if defaults is not None and check(getattr(defaults, f.name)):
                hint = f"; e.g. {f.name}={getattr(defaults, f.name)!r} (this profile's value)"
            raise ProfileError(f"profile field {f.name} must be {must}, got {value!r}{hint}")
    if profile.quant == "4bit" and profile.lora_rank == 0:
        raise ProfileError("quant='4bit' trains LoRA adapters on the frozen 4-bit weights: set lora_rank >= 1 "
                           "(e.g. lora_rank=16), or quant=None for full fine-tuning")
    if lab in RL_LAB_NAMES and profile.max_new_tokens >= profile.max_length:
        room = (defaults.max_length - defaults.max_new_tokens) if defaults else 64
        raise ProfileError(
            f"max_length ({profile.max_length}) counts prompt + response tokens, so max_new_tokens "
            f"({profile.max_new_tokens}) must be smaller: e.g. max_length={profile.max_new_tokens + max(room, 1)}, "
            f"or a smaller max_new_tokens")
    if lab in ("grpo", "grpo_compare"):
        if profile.num_generations < 2:
            works = defaults.num_generations if defaults and defaults.num_generations >= 2 else 4
            raise ProfileError(f"GRPO compares the num_generations completions of a prompt, so "
                               f"num_generations must be >= 2, got {profile.num_generations}; "
                               f"e.g. num_generations={works}")
        completions = profile.rollout_batch_size * profile.num_generations
        if completions % profile.batch_size:
            raise ProfileError(
                f"each GRPO step trains rollout_batch_size x num_generations = {profile.rollout_batch_size} x "
                f"{profile.num_generations} = {completions} completions in micro-batches of batch_size, which must "
                f"divide it; got batch_size={profile.batch_size}: e.g. batch_size="
                f"{_largest_divisor(completions, profile.batch_size)}")
    if lab == "ppo":
        minibatch = profile.batch_size * profile.grad_accum
        if profile.rollout_batch_size % minibatch:
            raise ProfileError(
                f"PPO splits rollout_batch_size={profile.rollout_batch_size} responses into minibatches of "
                f"batch_size x grad_accum = {minibatch}, which must divide it: e.g. rollout_batch_size="
                f"{max(1, profile.rollout_batch_size // minibatch) * minibatch}, or a batch_size / grad_accum "
                f"whose product divides {profile.rollout_batch_size}")


def notebook_params(profile: str, lab: str, **given: Any) -> dict[str, Any]:
    """Lab `lab`'s notebook parameters on `profile`: the given values, and for each one given as
    None (or not given) the profile's value from NOTEBOOK_PARAMS, else the notebooks' default."""
    table = NOTEBOOK_PARAMS.get(lab, {})
    return {**table.get("default", {}), **table.get(profile, {}),
            **{k: v for k, v in given.items() if v is not None}}
