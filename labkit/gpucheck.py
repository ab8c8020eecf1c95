"""GPU check: train real-size, randomly initialised Qwen3 models the way each profile and lab would.

    python -m labkit.gpucheck                          # every GPU profile this GPU can hold
    python -m labkit.gpucheck --profiles t4 --plans sft grpo --out /tmp/gpucheck.json
    python -m labkit.gpucheck --tiny                   # same code on a shrunken model (CPU, tests)

For each (profile, plan) the check builds a Qwen3 of the profile's real architecture
(labkit.memory.MODEL_SPECS) with random weights (no hub needed), saves it to a temporary folder and
loads it back through labkit's own loaders, so precision, NF4 4-bit quantization (t4) and LoRA are
exactly what the labs get. It then runs the plan's work on random token ids, at the sizes
labkit.preflight.train_plan gives the plan:

    sft   causal-LM loss                         rm    Bradley-Terry loss on a score head
    dpo   DPO loss, reference = adapter off      grpo  timed generate, then policy-gradient steps
    ppo   timed generate, one no-grad rollout micro-batch (policy, reference, reward model),
          then policy + value steps (labkit.ppo's PolicyWithValue)

Training steps run under autocast in the profile's dtype with fp32 trainable parameters; fp16 steps
also go through torch.amp.GradScaler, whose scale is recorded after every step.

Measured per record: peak torch.cuda.max_memory_allocated (reset per record) against
labkit.memory.estimate_memory(plan).total (`memory_ratio`; the estimate includes 0.75 GiB of CUDA
context that the allocator never sees), training and generation tokens/s, and seconds. On a CPU
nothing is measured in memory: those fields are None. A record that fails (out of memory, ...) keeps
its error and the check goes on.

The run is bounded by --budget-s (default 400 s): a record starts only with MIN_RECORD_S left, and a
generate call stops at min(GEN_CAP_S, what is left) through transformers' max_time.

The JSON report (default $LABKIT_CACHE/gpucheck.json) is what labkit.timeplan reads:
    {"device": ..., "rates": {"<profile>": {"generate_tokens_per_s": x, "train_tokens_per_s": y}},
     "memory_ratios": {"<profile>": {"<plan>": r}}, "records": [...], ...}
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

import torch

from labkit.hardware import GiB, Hardware, compute_device, detect
from labkit.memory import ModelSpec, TrainPlan, estimate_memory
from labkit.preflight import train_plan
from labkit.profiles import PROFILES, Profile, get_profile

GPU_PROFILES = ("t4", "24gb", "80gb")
PLANS = ("sft", "rm", "dpo", "grpo", "ppo")

# --tiny: the real config shrunk to 2 layers (and the profile's sizes to a few short sequences).
TINY_MODEL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                  num_kv_heads=1, head_dim=32)
TINY_SIZES = dict(batch_size=2, grad_accum=1, max_length=32, max_new_tokens=8, num_generations=2,
                  rollout_batch_size=2)

DEFAULT_BUDGET_S = 400.0  # the whole check; with imports and the last record, under 8 minutes
MIN_RECORD_S = 30.0       # a record starts only with this much of the budget left
GEN_CAP_S = 60.0          # no generate call runs longer (transformers' max_time)
VALUE_COEF = 0.1          # PPO: weight of the value loss, as labkit.ppo's vf_coef

# Which plan's rate stands for a profile in `rates` (the first one measured wins).
TRAIN_RATE_PLANS = ("sft", "dpo", "rm", "grpo", "ppo")
GENERATE_RATE_PLANS = ("grpo", "ppo")


@dataclass
class Record:
    """One (profile, plan) measurement. None means not measured (or not applicable)."""

    profile: str
    plan: str
    model: str | None = None
    dtype: str | None = None
    quant: str | None = None
    lora_rank: int | None = None
    gradient_checkpointing: bool | None = None
    batch_size: int | None = None            # sequences per training step (pairs count twice)
    seq_len: int | None = None               # tokens per training sequence
    gen_batch_size: int | None = None        # sequences per generate call (RL plans)
    max_new_tokens: int | None = None
    linear4bit_layers: int | None = None     # bitsandbytes Linear4bit modules in the model
    steps: int | None = None                 # training steps run (the first one is a warm-up)
    grad_scales: list[float] | None = None   # fp16: GradScaler's scale after each step
    skipped_steps: int | None = None         # fp16: steps GradScaler skipped (inf/nan gradients)
    scaler_ok: bool | None = None            # fp16: scale finite and not every step skipped
    train_seconds: float | None = None       # the timed steps (all but the warm-up)
    train_tokens_per_s: float | None = None
    generated_tokens: int | None = None      # new tokens per sequence actually generated
    generate_truncated: bool | None = None   # generate stopped by the time cap
    generate_seconds: float | None = None
    generate_tokens_per_s: float | None = None
    estimated_bytes: int | None = None       # labkit.memory.estimate_memory(plan).total_bytes
    peak_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated
    peak_reserved_bytes: int | None = None   # torch.cuda.max_memory_reserved
    memory_ratio: float | None = None        # peak_allocated_bytes / estimated_bytes
    seconds: float | None = None             # wall time of the record, loading included
    error: str | None = None


@dataclass(frozen=True)
class Settings:
    """How much work a check does."""

    steps: int = 3
    tiny: bool = False
    budget_s: float = DEFAULT_BUDGET_S


# ------------------------------------------------------------------ profiles, plans, models


def default_profiles(hw: Hardware) -> list[str]:
    """GPU profiles whose memory floor this GPU meets (bf16 ones only with bf16); all on a CPU."""
    if hw.device != "cuda":
        return list(GPU_PROFILES)
    def fits(profile: Profile) -> bool:
        return hw.vram_total_gb >= profile.min_vram_gb and (hw.bf16 or profile.dtype != "bf16")

    return [name for name in GPU_PROFILES if fits(PROFILES[name])]


def resolve(profile_name: str, lab: str, tiny: bool) -> tuple[Profile, TrainPlan]:
    """The profile with the lab's overrides, and its memory plan (both shrunk when `tiny`)."""
    if lab not in PLANS:
        raise ValueError(f"unknown plan {lab!r}; choose from {PLANS}")
    profile = get_profile(profile_name, lab=lab, **(TINY_SIZES if tiny else {}))
    if not profile.lora_rank:
        raise ValueError(f"profile {profile_name!r} trains {lab} without LoRA; "
                         "gpucheck measures LoRA plans only")
    plan = train_plan(profile, lab)
    if tiny:
        plan = replace(plan, model=replace(plan.model, name=f"{plan.model.name} (tiny)", **TINY_MODEL))
    return profile, plan


def qwen3_config(spec: ModelSpec):
    """A Qwen3Config with the spec's sizes. The last id is pad and eos; random inputs never use it."""
    from transformers import Qwen3Config

    last = spec.vocab_size - 1
    return Qwen3Config(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                       intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
                       max_window_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                       num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                       tie_word_embeddings=spec.tie_embeddings, max_position_embeddings=40960,
                       pad_token_id=last, eos_token_id=last, bos_token_id=None)


def write_random_model(spec: ModelSpec, dtype: str, out: Path, device: str) -> Path:
    """Save a randomly initialised Qwen3ForCausalLM of `spec`, in `dtype`, to the folder `out`."""
    from transformers import AutoModelForCausalLM

    from labkit.models import DTYPES, free_memory

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: a CPU init of 1.7B parameters is slow
        model = AutoModelForCausalLM.from_config(qwen3_config(spec), dtype=DTYPES[dtype])
    model.save_pretrained(out)
    del model
    free_memory()
    return out


class ModelFolders:
    """Random checkpoints in a temporary folder, written once per (architecture, dtype)."""

    def __init__(self, root: Path, device: str):
        self.root, self.device = root, device
        self.paths: dict[tuple[ModelSpec, str], Path] = {}

    def get(self, spec: ModelSpec, dtype: str) -> Path:
        key = (spec, dtype)
        if key not in self.paths:
            out = self.root / f"model-{len(self.paths)}"
            self.paths[key] = write_random_model(spec, dtype, out, self.device)
        return self.paths[key]


def load_trainable(lab: str, folder: Path, profile: Profile, plan: TrainPlan) -> torch.nn.Module:
    """The lab's trainable model from `folder`, loaded by labkit (dtype, 4-bit), with LoRA on it.

    ppo: labkit.ppo.load_policy (policy + value head, no checkpointing); rm: a one-output classifier
    with a SEQ_CLS adapter; others: a causal LM. Trainable parameters are made fp32.
    """
    from peft import get_peft_model

    from labkit.models import load_model, lora_config, upcast_trainable
    from labkit.trainer_args import checkpointing_arg

    if lab == "ppo":
        from labkit.ppo import load_policy

        return upcast_trainable(load_policy(folder, profile))
    if lab == "rm":
        from labkit.reward_model import load_reward_model, rm_lora_config

        base, config = load_reward_model(folder, profile, pad_token(plan)), rm_lora_config(profile)
    else:
        base, config = load_model(folder, profile), lora_config(profile)
    if plan.gradient_checkpointing:
        # What the Trainer does with checkpointing on, under the name this transformers uses.
        getattr(base, f"{checkpointing_arg()}_enable")()
    return upcast_trainable(get_peft_model(base, config))


def pad_token(plan: TrainPlan) -> SimpleNamespace:
    """What load_reward_model needs of a tokenizer: the pad id (the last id, see qwen3_config)."""
    return SimpleNamespace(pad_token_id=plan.model.vocab_size - 1)


def count_linear4bit(model: torch.nn.Module) -> int:
    """How many bitsandbytes 4-bit linear layers the model holds (0 without bitsandbytes)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    return sum(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The language model inside `model` (PPO's PolicyWithValue wraps one in .policy)."""
    return getattr(model, "policy", model)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def random_ids(rows: int, length: int, plan: TrainPlan, device: torch.device) -> torch.Tensor:
    """Random token ids below the pad/eos id."""
    return torch.randint(0, plan.model.vocab_size - 1, (rows, length), device=device)


def sync(device: torch.device) -> None:
    """Wait for the GPU, so that wall-clock timings cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ losses (one per plan)


def sft_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over every token."""
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss


def rm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss: the first half of the rows are chosen answers, the second half rejected."""
    from labkit.algorithms import bradley_terry_loss

    scores = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 0].float()
    half = len(ids) // 2
    return bradley_terry_loss(scores[:half], scores[half:])


def sequence_logps(model, ids: torch.Tensor) -> torch.Tensor:
    """[B] summed log-probability of each row's tokens after the first."""
    from labkit.algorithms import token_logprobs

    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
    return token_logprobs(logits, ids[:, 1:]).sum(-1)


def dpo_step_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """DPO loss (first half chosen, second half rejected); the reference is the adapter switched off."""
    from labkit.algorithms import dpo_loss

    logps = sequence_logps(model, ids)
    with torch.no_grad(), model.disable_adapter():
        ref = sequence_logps(model, ids)
    half = len(ids) // 2
    losses, _, _ = dpo_loss(logps[:half], logps[half:], ref[:half], ref[half:], beta=0.1)
    return losses.mean()


def grpo_loss(model, ids: torch.Tensor, completion_len: int) -> torch.Tensor:
    """Policy gradient on the completion tokens with random advantages. As in TRL, logits are
    computed for the completion only (logits_to_keep)."""
    from labkit.algorithms import token_logprobs

    mask = torch.ones_like(ids)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=completion_len + 1).logits
    logp = token_logprobs(logits[:, :-1], ids[:, -completion_len:])
    advantages = torch.randn(len(ids), 1, device=ids.device)
    return -(advantages * logp).mean()


def ppo_loss(model, ids: torch.Tensor, completion_len: int) -> torch.Tensor:
    """Policy gradient + value loss on the completion tokens, random advantages and returns."""
    logprobs, values, _ = model(ids, torch.ones_like(ids))
    response = slice(-completion_len, None)
    advantages = torch.randn(len(ids), 1, device=ids.device)
    returns = torch.randn(len(ids), completion_len, device=ids.device)
    policy_loss = -(advantages * logprobs[:, response]).mean()
    return policy_loss + VALUE_COEF * ((values[:, response] - returns) ** 2).mean()


def loss_function(lab: str, model, ids: torch.Tensor, plan: TrainPlan) -> Callable[[], torch.Tensor]:
    """The plan's loss on the batch `ids`, as a function of nothing (called once per step)."""
    if lab in ("grpo", "ppo"):
        step = grpo_loss if lab == "grpo" else ppo_loss
        return lambda: step(model, ids, plan.max_completion_len)
    step = {"sft": sft_loss, "rm": rm_loss, "dpo": dpo_step_loss}[lab]
    return lambda: step(model, ids)


# ------------------------------------------------------------------ training and generation


@dataclass
class StepStats:
    """Per-step wall times and, in fp16, GradScaler's scale after each step."""

    seconds: list[float]
    scales: list[float] | None
    skipped: int | None


def optimizer_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor],
                   optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One step as a trainer runs it: forward under autocast to the model's half dtype, backward
    of the (fp16: scaled) loss, unscale, clip, step (GradScaler skips it on inf/nan gradients)."""
    from labkit.models import autocast

    with autocast(causal_lm(model)):
        loss = loss_fn()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train_steps(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], steps: int) -> StepStats:
    """`steps` AdamW steps on the trainable parameters, timed one by one. In fp16 a GradScaler
    scales the loss; a skipped step halves its scale, which is how skips are counted here."""
    from labkit.models import compute_dtype

    device = model_device(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=compute_dtype(causal_lm(model)) == torch.float16)
    model.train()
    seconds, scales, skipped = [], [], 0
    for _ in range(steps):
        start, before = time.perf_counter(), scaler.get_scale() if scaler.is_enabled() else 0.0
        optimizer_step(model, loss_fn, optimizer, scaler)
        sync(device)
        seconds.append(time.perf_counter() - start)
        if scaler.is_enabled():
            scales.append(scaler.get_scale())
            skipped += int(scales[-1] < before)
    if not scaler.is_enabled():
        return StepStats(seconds, None, None)
    return StepStats(seconds, scales, skipped)


@torch.no_grad()
def timed_generate(model: torch.nn.Module, plan: TrainPlan, max_time: float) -> tuple[int, float]:
    """Sample the plan's generation batch from random prompts; returns (new tokens per row, seconds).

    min_new_tokens = max_new_tokens keeps eos from ending any row early, so every row uses the
    whole budget unless max_time stops the call first.
    """
    lm, device = causal_lm(model), model_device(model)
    prompts = random_ids(plan.gen_batch_size, plan.max_prompt_len, plan, device)
    eos = plan.model.vocab_size - 1
    lm.eval()
    sync(device)
    start = time.perf_counter()
    out = lm.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                      max_new_tokens=plan.max_completion_len, min_new_tokens=plan.max_completion_len,
                      do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=eos,
                      eos_token_id=eos, max_time=max_time)
    sync(device)
    seconds = time.perf_counter() - start
    lm.train()
    return out.shape[1] - plan.max_prompt_len, seconds


def load_frozen_reward_model(folder: Path, profile: Profile, plan: TrainPlan) -> torch.nn.Module:
    """PPO's reward model: a one-output classifier of the policy's size, loaded like it, frozen."""
    from labkit.reward_model import load_reward_model

    return load_reward_model(folder, profile, pad_token(plan)).requires_grad_(False).eval()


@torch.no_grad()
def ppo_rollout_micro_batch(policy, reward_model, plan: TrainPlan) -> None:
    """One micro-batch of labkit.ppo's no-grad rollout passes: the policy (log-probs and values),
    the reference (adapter off) and the reward model."""
    from labkit.models import autocast

    ids = random_ids(plan.batch_size, plan.train_seq_len, plan, model_device(policy))
    mask = torch.ones_like(ids)
    with autocast(policy.policy):
        policy(ids, mask)
        policy.ref_logprobs(ids, mask)
        reward_model(input_ids=ids, attention_mask=mask)


def check_generation(record: Record, model, plan: TrainPlan, deadline: float) -> None:
    """Time one generate call of the plan's batch and budget; fill the generation fields."""
    max_time = max(1.0, min(GEN_CAP_S, deadline - time.monotonic() - MIN_RECORD_S / 2))
    new_tokens, seconds = timed_generate(model, plan, max_time)
    record.generated_tokens = new_tokens
    record.generate_truncated = new_tokens < plan.max_completion_len
    record.generate_seconds = round(seconds, 3)
    record.generate_tokens_per_s = round(plan.gen_batch_size * new_tokens / seconds, 1)


def check_training(record: Record, lab: str, model, plan: TrainPlan, steps: int) -> None:
    """Run `steps` training steps on a random batch; fill the training and GradScaler fields."""
    ids = random_ids(plan.batch_size, plan.train_seq_len, plan, model_device(model))
    stats = train_steps(model, loss_function(lab, model, ids, plan), steps)
    timed = stats.seconds[1:] or stats.seconds  # the first step warms kernels and the allocator up
    record.steps = steps
    record.train_seconds = round(sum(timed), 3)
    record.train_tokens_per_s = round(ids.numel() * len(timed) / sum(timed), 1)
    if stats.scales is not None:
        record.grad_scales = stats.scales
        record.skipped_steps = stats.skipped
        record.scaler_ok = all(math.isfinite(s) and s > 0 for s in stats.scales) and stats.skipped < steps


def run_plan(record: Record, lab: str, profile: Profile, plan: TrainPlan, folder: Path,
             settings: Settings, deadline: float) -> None:
    """Load the lab's model(s), generate first (RL plans), then train; fills `record`."""
    model = load_trainable(lab, folder, profile, plan)
    record.linear4bit_layers = count_linear4bit(model)
    reward_model = load_frozen_reward_model(folder, profile, plan) if lab == "ppo" else None
    if plan.generates:
        check_generation(record, model, plan, deadline)
    if reward_model is not None:
        ppo_rollout_micro_batch(model, reward_model, plan)
    check_training(record, lab, model, plan, settings.steps)


# ------------------------------------------------------------------ one record, the whole check


def describe(record: Record, profile: Profile, plan: TrainPlan) -> None:
    """Fill the record's description of the plan and labkit's memory estimate."""
    record.model, record.dtype, record.quant = plan.model.name, plan.weight_dtype, plan.quant
    record.lora_rank, record.gradient_checkpointing = plan.lora_rank, plan.gradient_checkpointing
    record.batch_size, record.seq_len = plan.batch_size, plan.train_seq_len
    if plan.generates:
        record.gen_batch_size, record.max_new_tokens = plan.gen_batch_size, plan.max_completion_len
    record.estimated_bytes = estimate_memory(plan).total_bytes


def measure_memory(record: Record) -> None:
    """Peak CUDA memory since the last reset, and its ratio to labkit's estimate."""
    record.peak_allocated_bytes = torch.cuda.max_memory_allocated()
    record.peak_reserved_bytes = torch.cuda.max_memory_reserved()
    if record.estimated_bytes:
        record.memory_ratio = round(record.peak_allocated_bytes / record.estimated_bytes, 3)


def check_plan(profile_name: str, lab: str, settings: Settings, folders: ModelFolders,
               deadline: float) -> Record:
    """Measure one (profile, plan). Any failure (out of memory, ...) is recorded, never raised."""
    from labkit.models import free_memory

    record = Record(profile=profile_name, plan=lab)
    start, measuring = time.perf_counter(), False
    try:
        profile, plan = resolve(profile_name, lab, settings.tiny)
        describe(record, profile, plan)
        if deadline - time.monotonic() < MIN_RECORD_S:
            raise TimeoutError(f"skipped: less than {MIN_RECORD_S:.0f} s of the time budget left")
        folder = folders.get(plan.model, profile.dtype)
        free_memory()
        if folders.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            measuring = True
        run_plan(record, lab, profile, plan, folder, settings, deadline)
    except Exception as exc:  # noqa: BLE001 - a check reports every failure and goes on
        record.error = f"{type(exc).__name__}: {exc}"[:600]
    if measuring:  # also after a failure: the peak an out-of-memory error reached is worth knowing
        measure_memory(record)
    free_memory()
    record.seconds = round(time.perf_counter() - start, 2)
    return record


def run_check(profiles: list[str], plans: list[str], settings: Settings,
              progress: Callable[[Record], None] | None = None) -> dict:
    """Measure every (profile, plan) within the time budget; returns the report (see the module doc)."""
    hw, device = detect(), compute_device()
    torch.manual_seed(0)
    start = time.monotonic()
    deadline = start + settings.budget_s
    records = []
    with tempfile.TemporaryDirectory(prefix="labkit-gpucheck-") as tmp:
        folders = ModelFolders(Path(tmp), device)
        for name in profiles:
            for lab in plans:
                records.append(check_plan(name, lab, settings, folders, deadline))
                if progress:
                    progress(records[-1])
    return build_report(hw, settings, records, time.monotonic() - start)


# ------------------------------------------------------------------ the report


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def first_measured(records: list[Record], field: str, plans: tuple[str, ...]) -> float | None:
    """The `field` of the first plan in `plans` that measured it, else of any record that did."""
    values = {r.plan: getattr(r, field) for r in records if getattr(r, field) is not None}
    for plan in plans:
        if plan in values:
            return values[plan]
    return next(iter(values.values()), None)


def rates(records: list[Record]) -> dict[str, dict[str, float | None]]:
    """Per profile: the tokens/s labkit.timeplan reads (training from sft, generation from grpo)."""
    by_profile: dict[str, list[Record]] = {}
    for record in records:
        by_profile.setdefault(record.profile, []).append(record)
    return {name: {"generate_tokens_per_s": first_measured(group, "generate_tokens_per_s",
                                                           GENERATE_RATE_PLANS),
                   "train_tokens_per_s": first_measured(group, "train_tokens_per_s", TRAIN_RATE_PLANS)}
            for name, group in by_profile.items()}


def memory_ratios(records: list[Record]) -> dict[str, dict[str, float | None]]:
    """Per profile and plan: measured peak / labkit's estimate (None where not measured)."""
    out: dict[str, dict[str, float | None]] = {}
    for record in records:
        out.setdefault(record.profile, {})[record.plan] = record.memory_ratio
    return out


def build_report(hw: Hardware, settings: Settings, records: list[Record], seconds: float) -> dict:
    """The JSON report: device, versions, rates, memory ratios and every record."""
    return {
        "device": hw.name,
        "capability": list(hw.capability) if hw.capability else None,
        "vram_total_gb": round(hw.vram_total_gb, 1),
        "tiny": settings.tiny,
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "peft": package_version("peft"),
        "bitsandbytes": package_version("bitsandbytes"),
        "steps": settings.steps,
        "budget_s": settings.budget_s,
        "seconds": round(seconds, 1),
        "rates": rates(records),
        "memory_ratios": memory_ratios(records),
        "records": [asdict(r) for r in records],
    }


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GiB:.2f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(records: list[dict]) -> str:
    """The records as an aligned text table; errors follow, one line each."""
    header = ("profile", "plan", "quant (layers)", "batch x len", "peak GiB", "est GiB", "ratio",
              "train tok/s", "gen tok/s", "scaler", "s")
    rows = [header]
    for r in records:
        scaler = "-"
        if r["scaler_ok"] is not None:
            scaler = f"{'ok' if r['scaler_ok'] else 'BAD'} {r['skipped_steps']} skip"
        shape = "-" if r["batch_size"] is None else f"{r['batch_size']} x {r['seq_len']}"
        quant = f"{r['quant']} ({r['linear4bit_layers']})" if r["quant"] else "-"
        rows.append((r["profile"], r["plan"] + (" ERROR" if r["error"] else ""), quant, shape,
                     _gib(r["peak_allocated_bytes"]), _gib(r["estimated_bytes"]),
                     _num(r["memory_ratio"], 2), _num(r["train_tokens_per_s"]),
                     _num(r["generate_tokens_per_s"]), scaler, _num(r["seconds"], 1)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += [f"{r['profile']}/{r['plan']}: {r['error']}" for r in records if r["error"]]
    return "\n".join(lines)


def format_calibration(report: dict) -> str:
    """What a reviewer copies: memory ratio per plan, and the rates in labkit.timeplan's format."""
    lines = ["memory: measured peak / labkit.memory estimate"]
    for profile, ratios in report["memory_ratios"].items():
        lines.append(f"  {profile:<5} " + "  ".join(f"{plan} {_num(r, 2)}" for plan, r in ratios.items()))
    lines.append('rates (labkit.timeplan, JSON "rates"):')
    lines.append(json.dumps(report["rates"], indent=1))
    return "\n".join(lines)


def default_out(tiny: bool) -> Path:
    """$LABKIT_CACHE/gpucheck.json; a tiny run writes gpucheck-tiny.json (its rates mean nothing)."""
    from labkit.runtime import cache_dir

    return cache_dir() / ("gpucheck-tiny.json" if tiny else "gpucheck.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m labkit.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", choices=GPU_PROFILES,
                        help="profiles to check (default: those that fit the detected GPU)")
    parser.add_argument("--plans", nargs="+", choices=PLANS, default=list(PLANS))
    parser.add_argument("--steps", type=int, default=Settings.steps, help="training steps per plan (>= 1)")
    parser.add_argument("--tiny", action="store_true",
                        help="shrunken models (automatic without a CUDA GPU)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="time budget of the whole check, in seconds")
    parser.add_argument("--out", type=Path, help="report path (default $LABKIT_CACHE/gpucheck.json)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide load-time noise while the check runs (random weights and fresh score heads are the
    point here); the libraries' settings are restored afterwards."""
    import logging

    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    bnb_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb_level = bnb_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    bnb_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*kernels-community.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        bnb_logger.setLevel(bnb_level)


def print_progress(record: Record) -> None:
    error = f"  ERROR {record.error}" if record.error else ""
    print(f"  {record.profile}/{record.plan}: {record.seconds:.1f} s{error}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the check, write the JSON report, print the table. Exit status: 0 when every record
    passed, 1 when one failed, 2 when torch cannot use the machine's GPU (and --tiny was not given)."""
    args = parse_args(argv)
    hw = detect()
    unusable = getattr(hw, "unusable_gpu", None)  # a GPU that torch cannot use: say so, don't go tiny
    if unusable and not args.tiny:
        print(f"gpucheck: {unusable}\n(--tiny runs the shrunken check on the CPU instead)")
        return 2
    tiny = args.tiny or compute_device() != "cuda"
    settings = Settings(steps=args.steps, tiny=tiny, budget_s=args.budget_s)
    profiles = args.profiles or default_profiles(hw)
    size = " (tiny models)" if tiny else ""
    print(f"gpucheck on {hw.name}{size}: profiles {profiles}, plans {args.plans}")
    with quiet_libraries():
        report = run_check(profiles, args.plans, settings, progress=print_progress)
    out = args.out or default_out(tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(format_table(report["records"]))
    print(format_calibration(report))
    print(f"report: {out} ({report['seconds']:.0f} s)")
    return 1 if any(r["error"] for r in report["records"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
