"""Before loading a model: turn a lab into a time plan and refuse it if it will not fit the class.

The memory preflight (labkit.preflight) asks "will it fit the GPU?"; this one asks "will it finish
in the time a class has?". For a lab (the `lab=` a notebook passes to labkit.runtime.setup) it
counts the work of every run the notebook does, plus the stages it needs that are not built yet:

- tokens generated: sequences x max_new_tokens. A batched generate call runs until its longest
  sample stops, and at temperature 1 one of 32 samples usually runs to the budget, so every call
  is counted at full length (conservative);
- tokens trained: through forward + backward (SFT, reward model, DPO, the RL updates);
- forward-only tokens: scoring with a reward model, reference log-probs, prompt prefill.

Wall time comes from a small table of rates per GPU kind x model x precision/quant (RATES, each
with its source), to be replaced by measurements: `python -m labkit.gpucheck` writes
$LABKIT_CACHE/gpucheck.json, which this module reads when it was measured on the same GPU kind.

    python -m labkit.timeplan --profile t4          # every lab's plan on a T4
    python -m labkit.timeplan --profile 24gb --lab grpo --detail
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from labkit.hardware import Hardware
from labkit.profiles import PROFILES, Profile, get_profile, notebook_params

# ---------------------------------------------------------------- budgets and labs

# Minutes a lab may take, stage builds included: a 90-minute class leaves half for teaching on a
# T4; a 4090 should leave most of the class; an A100/H100 session is paid by the hour.
BUDGET_MIN: dict[str, float] = {"t4": 45.0, "24gb": 20.0, "80gb": 30.0}

# Lab keys (the `lab=` of each notebook's setup call) in course order, with their notebook numbers.
LABS: dict[str, str] = {"env": "00", "sft": "01", "rm": "02", "dpo": "03", "ppo": "04", "grpo": "05",
                        "grpo_compare": "06", "best_of_n": "07", "tools": "08"}
# The stages each notebook loads with get_stage (their own upstream stages are added).
LAB_STAGES: dict[str, tuple[str, ...]] = {
    "env": (), "sft": ("base",), "rm": ("sft",), "dpo": ("sft",), "ppo": ("sft", "rm"),
    "grpo": ("sft",), "grpo_compare": ("sft",), "best_of_n": ("sft", "rm", "grpo"), "tools": ("sft",),
}
# The parameters a refusal may suggest lowering, per lab (names as in the parameters cell).
KNOBS: dict[str, tuple[str, ...]] = {
    "sft": ("MAX_STEPS", "EVAL_LIMIT"), "rm": ("MAX_STEPS", "SAMPLE_QUESTIONS"),
    "dpo": ("MAX_STEPS", "EVAL_LIMIT"), "ppo": ("MAX_STEPS", "EVAL_LIMIT"),
    "grpo": ("MAX_STEPS", "EVAL_LIMIT", "EVAL_SAMPLES"),
    "grpo_compare": ("MAX_STEPS", "EVAL_LIMIT", "EVAL_SAMPLES"),
    "best_of_n": ("HARD_LIMIT", "MAX_N", "OTHER_LIMIT", "GRPO_N"),
    "tools": ("MAX_STEPS", "EVAL_LIMIT"),
}
# Knobs that are profile fields (setup's overrides); the others are notebook parameters, whose
# values per profile are labkit.profiles.NOTEBOOK_PARAMS.
KNOB_FIELDS = {"MAX_STEPS": "max_steps", "EVAL_LIMIT": "eval_limit", "HARD_LIMIT": "eval_limit"}
KNOB_MIN = {"MAX_N": 16}  # lab 07 reads its curves at N = 16

# ---------------------------------------------------------------- token lengths

# Padded lengths (the longest row of a batch, which every row of it costs). GSM8K: the system
# prompt and chat header (~50 tokens) plus a question of ~60-150 tokens (Qwen splits every digit);
# SFT adds a solution of ~60-190 tokens. Preference pairs (argilla/distilabel-math-preference-dpo):
# explanations of ~150-500 tokens per side. Rounded up; capped by the profile's max_length.
PROMPT_TOKENS = {"kit": 40, "gsm8k": 192}
SFT_TOKENS = {"kit": 80, "gsm8k": 384}
PAIR_TOKENS = {"kit": 96, "hub": 640}  # one side (prompt + response) of a pair
HUB_PAIRS = 2418            # rows of argilla/distilabel-math-preference-dpo (labkit.profiles.MATH_PREFS)
PROBE_TRIES = 3             # lab 05's probe samples a group until one disagrees (<= 20; ~1-2 usually)
DYNAMIC_SAMPLING_FACTOR = 2.0  # DAPO's dynamic sampling regenerates dead groups (<= 3 rounds)
DOWNLOAD_MB_S = 30.0        # hub download speed assumed for a base model that is not cached


class TimeBudgetError(RuntimeError):
    """The lab's time plan exceeds the budget; the message names the change that fits."""


# ---------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rates:
    """How fast one GPU kind runs one model setup (HF transformers, no vLLM)."""

    gpu: str                      # GPU kind: "t4", "rtx3090", "rtx4090", "a100", "h100"
    model_id: str
    dtype: str
    quant: str | None
    decode_step_ms: float         # one decode step of `generate`, whatever the batch (Python, launches)
    generate_tokens_per_s: float  # the batch ceiling: a decode step also costs batch / this
    train_tokens_per_s: float     # forward + backward, LoRA, as the profile sets checkpointing
    forward_tokens_per_s: float   # forward only: scoring, reference log-probs, prefill
    load_s: float                 # loading (and quantizing) the model once
    source: str = "table"

    def decode_s(self, batch: int) -> float:
        """Seconds of one decode step of a generate call holding `batch` sequences."""
        return self.decode_step_ms / 1000 + batch / self.generate_tokens_per_s

    def generate_rate(self, batch: int) -> float:
        """New tokens per second of a generate call holding `batch` sequences."""
        return batch / self.decode_s(batch)


# Conservative until calibrated by `python -m labkit.gpucheck`. Sources:
# [qwen-speed] qwen.readthedocs.io/en/v2.0/benchmark/speed_benchmark.html: Qwen2-0.5B-Instruct,
#   transformers, batch 1, A100: 49.9 tokens/s, i.e. ~20 ms per decode step for a 24-layer model
#   that moves only ~1 GB per step: HF generate's per-step cost is Python and kernel launches,
#   so a batch of sequences costs little more than one. 28 layers, PEFT LoRA wrappers (and
#   bitsandbytes 4-bit layers on a T4) and Colab's slow host CPU add to it: 35 / 80 ms below.
# [bnb-0.40] github.com/bitsandbytes-foundation/bitsandbytes/releases/tag/0.40.0: batch > 1
#   4-bit matmuls dequantize the weights on every call; the fast 4-bit kernel is batch 1 only.
# [trl-grpo-t4] github.com/huggingface/trl examples/notebooks/grpo_trl_lora_qlora.ipynb: GRPO,
#   Qwen2-7B QLoRA on a Colab T4, 500 steps x 8 completions x <= 256 tokens "takes around 13
#   hours" (0.01 it/s): <= 22 generated tokens/s for a 7B model.
# [trl-sft-t4] same folder, sft_trl_lora_qlora.ipynb: Qwen3-14B QLoRA on a T4, 30 steps x 4 x
#   <= 1024 tokens in 4250 s: <= 29 tokens/s, ~2.4 TFLOP/s at 6N FLOPs per token (LoRA with
#   checkpointing); the same efficiency gives ~670 tokens/s for Qwen3-0.6B.
# [lora-4060] arxiv.org/abs/2509.12229: Qwen2.5-1.5B LoRA/QLoRA on an RTX 4060: 500-628 tokens/s.
#   An RTX 4090 has ~4x its bandwidth and ~5x its tensor throughput; a 3090 ~0.6x a 4090; an A100
#   ~1.9x a 4090 in bf16; an H100 ~1.7x an A100 at this size.
# Forward-only passes: ~3x the training rate (no backward, no recomputation).
RATES: tuple[Rates, ...] = (
    Rates("t4", "Qwen/Qwen3-0.6B", "fp16", "4bit", decode_step_ms=80, generate_tokens_per_s=2000,
          train_tokens_per_s=600, forward_tokens_per_s=1800, load_s=20),
    Rates("rtx3090", "Qwen/Qwen3-1.7B-Base", "bf16", None, decode_step_ms=35, generate_tokens_per_s=3500,
          train_tokens_per_s=1200, forward_tokens_per_s=3600, load_s=10),
    Rates("rtx4090", "Qwen/Qwen3-1.7B-Base", "bf16", None, decode_step_ms=35, generate_tokens_per_s=5000,
          train_tokens_per_s=2000, forward_tokens_per_s=6000, load_s=10),
    Rates("a100", "Qwen/Qwen3-1.7B-Base", "bf16", None, decode_step_ms=35, generate_tokens_per_s=8000,
          train_tokens_per_s=3500, forward_tokens_per_s=10000, load_s=10),
    Rates("h100", "Qwen/Qwen3-1.7B-Base", "bf16", None, decode_step_ms=30, generate_tokens_per_s=12000,
          train_tokens_per_s=6000, forward_tokens_per_s=18000, load_s=10),
)
GPU_PATTERNS = ((r"\bt4\b", "t4"), (r"3090", "rtx3090"), (r"4090", "rtx4090"), (r"a100|a800", "a100"),
                (r"h100|h200|h800", "h100"))
KINDS = tuple(dict.fromkeys(r.gpu for r in RATES))
REFERENCE_GPU = {"t4": "t4", "24gb": "rtx4090", "80gb": "a100"}  # what each budget is planned for
FALLBACK_GPU = {"t4": "t4", "24gb": "rtx3090", "80gb": "a100"}   # an unknown GPU: the slowest in class
CALIBRATION_ENV = "LABKIT_GPUCHECK"  # a gpucheck report to read instead of $LABKIT_CACHE/gpucheck.json


def gpu_kind(name: str) -> str | None:
    """The RATES kind of a GPU name ("Tesla T4" -> "t4"), None when unknown."""
    for pattern, kind in GPU_PATTERNS:
        if re.search(pattern, name.lower()):
            return kind
    return None


def _params(model_id: str) -> int | None:
    from labkit.memory import MODEL_SPECS

    spec = MODEL_SPECS.get(model_id)
    return spec.num_params() if spec else None


def table_rates(kind: str, profile: Profile) -> Rates | None:
    """The RATES entry of this GPU kind and setup; another model's entry scaled by parameter count."""
    same_gpu = [r for r in RATES if r.gpu == kind]
    for rates in same_gpu:
        if (rates.model_id, rates.dtype, rates.quant) == (profile.model_id, profile.dtype, profile.quant):
            return rates
    wanted = _params(profile.model_id)
    for rates in same_gpu:
        known = _params(rates.model_id)
        if wanted and known and rates.quant == profile.quant:
            k = known / wanted
            return replace(rates, model_id=profile.model_id, source=f"table, scaled from {rates.model_id}",
                           generate_tokens_per_s=rates.generate_tokens_per_s * k,
                           train_tokens_per_s=rates.train_tokens_per_s * k,
                           forward_tokens_per_s=rates.forward_tokens_per_s * k)
    return None


def calibration_file() -> Path:
    """$LABKIT_GPUCHECK, else the report `python -m labkit.gpucheck` writes by default."""
    from labkit.runtime import cache_dir

    return Path(os.environ.get(CALIBRATION_ENV) or cache_dir() / "gpucheck.json")


def load_calibration(path: str | Path | None = None) -> dict | None:
    """A gpucheck report (None when absent, unreadable or measured on tiny models)."""
    path = Path(path) if path else calibration_file()
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("tiny"):
        return None
    return {**report, "path": str(path)}


def _decode_fit(rates: Rates, points: list[tuple[int, float]]) -> tuple[float, float]:
    """(step s, s per sequence) of decode_s fitted to measured (batch, tokens/s) points: a line
    through two or more batch sizes, else the table's shape scaled to the one point."""
    times = [(b, b / r) for b, r in points]
    batches = {b for b, _ in times}
    if len(batches) >= 2:
        n, sb, st = len(times), sum(b for b, _ in times), sum(t for _, t in times)
        sbb, sbt = sum(b * b for b, _ in times), sum(b * t for b, t in times)
        slope = (n * sbt - sb * st) / (n * sbb - sb * sb)
        step = (st - slope * sb) / n
        if step > 0 and slope > 0:
            return step, slope
    k = sum(t / rates.decode_s(b) for b, t in times) / len(times)
    return k * rates.decode_step_ms / 1000, k / rates.generate_tokens_per_s


def calibrate(rates: Rates, report: dict, profile_name: str) -> Rates:
    """`rates` with what a gpucheck report measured for `profile_name` (train and decode rates)."""
    measured = (report.get("rates") or {}).get(profile_name) or {}
    records = [r for r in report.get("records") or [] if r.get("profile") == profile_name]
    points = [(r["gen_batch_size"], r["generate_tokens_per_s"]) for r in records
              if r.get("gen_batch_size") and r.get("generate_tokens_per_s")]
    if not points and measured.get("generate_tokens_per_s"):
        grpo = get_profile(profile_name, lab="grpo")  # gpucheck times the GRPO generation batch
        points = [(grpo.rollout_batch_size * grpo.num_generations, measured["generate_tokens_per_s"])]
    if points:
        step, per_seq = _decode_fit(rates, points)
        rates = replace(rates, decode_step_ms=step * 1000, generate_tokens_per_s=1 / per_seq)
    train = measured.get("train_tokens_per_s")
    if train:
        rates = replace(rates, train_tokens_per_s=train,
                        forward_tokens_per_s=rates.forward_tokens_per_s * train / rates.train_tokens_per_s)
    return replace(rates, source=f"gpucheck {report.get('path', '')}".strip())


def rates_for(profile: Profile, kind: str | None, report: dict | None = None) -> tuple[Rates | None, str]:
    """The rates for `profile` on GPU `kind`, and where they come from. An unknown GPU is planned as
    the slowest GPU of its profile (FALLBACK_GPU), an unknown model as the profile's own; a gpucheck
    report measured on this kind, for the profile's own model and precision, replaces the table.
    None for the cpu profile (no plan is checked there)."""
    if profile.device != "cuda":
        return None, "cpu profile: no time budget"
    own = PROFILES.get(profile.name, PROFILES["t4"])
    fallback = FALLBACK_GPU.get(profile.name, "t4")
    for gpu, setup in ((kind, profile), (kind, own), (fallback, profile), (fallback, own)):
        rates = table_rates(gpu, setup) if gpu else None
        if rates is not None:
            break
    notes = [] if rates.gpu == kind else [f"no rates for this GPU ({kind or 'unknown'}): as {rates.gpu}"]
    if setup is own and own.model_id != profile.model_id:
        notes.append(f"no rates for {profile.model_id}: planned as {own.model_id}")
    same_setup = (own.model_id, own.dtype, own.quant) == (profile.model_id, profile.dtype, profile.quant)
    if report and same_setup and gpu_kind(str(report.get("device", ""))) == rates.gpu:
        rates = calibrate(rates, report, profile.name)
    table = "table rates; calibrate: python -m labkit.gpucheck"
    notes.append(rates.source if rates.source != "table" else table)
    return rates, "; ".join(notes)


# ---------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One piece of a lab's work: generation, training and forward-only passes."""

    name: str
    gen_seqs: int = 0        # sequences generated
    gen_batch: int = 1       # sequences per generate call
    new_tokens: int = 0      # decode steps per call (max_new_tokens: the conservative bound)
    trained: int = 0         # tokens through forward + backward
    forward: int = 0         # tokens through forward passes only
    loads: int = 0           # models loaded
    download_gb: float = 0.0  # hub downloads
    cpu_s: float = 0.0       # CPU-side work that no GPU speeds up (lab 08's DDP demo, engine checks)
    exercise: bool = False   # one attempt at an experiment exercise: listed and timed, outside the budget

    @property
    def generated(self) -> int:
        return self.gen_seqs * self.new_tokens

    def seconds(self, rates: Rates) -> float:
        """Wall time on `rates`' GPU."""
        calls = math.ceil(self.gen_seqs / self.gen_batch) if self.gen_seqs else 0
        generate = calls * self.new_tokens * rates.decode_s(min(self.gen_batch, self.gen_seqs or 1))
        return (generate + self.trained / rates.train_tokens_per_s + self.forward / rates.forward_tokens_per_s
                + self.loads * rates.load_s + self.download_gb * 1024 / DOWNLOAD_MB_S + self.cpu_s)


@dataclass(frozen=True)
class Sizes:
    """Padded token lengths of the profile's data (see PROMPT_TOKENS)."""

    prompt: int
    sft: int
    pair: int
    rl: int          # prompt + completion, what RL trains and scores
    new: int         # max_new_tokens


def sizes(p: Profile) -> Sizes:
    """The padded lengths of `p`'s data, capped by its max_length."""
    data = p.dataset if p.dataset in PROMPT_TOKENS else "gsm8k"
    prompt = min(PROMPT_TOKENS[data], p.max_length)
    pair = PAIR_TOKENS["kit" if p.pref_dataset == "kit" else "hub"]
    return Sizes(prompt=prompt, sft=min(SFT_TOKENS[data], p.max_length), pair=min(pair, p.max_length),
                 rl=prompt + p.max_new_tokens, new=p.max_new_tokens)


def heldout_pairs(p: Profile) -> int:
    """Held-out preference pairs (labkit.preferences' split)."""
    from labkit.preferences import HELDOUT_PAIRS, HUB_HELDOUT_FRACTION

    return HELDOUT_PAIRS if p.pref_dataset == "kit" else max(1, int(HUB_PAIRS * HUB_HELDOUT_FRACTION))


def generate(name: str, p: Profile, seqs: int, batch: int | None = None, loads: int = 0) -> Run:
    """`seqs` completions of max_new_tokens, `batch` per call (default: eval_batch_size)."""
    batch = max(1, min(batch or p.eval_batch_size, seqs or 1))
    return Run(name, gen_seqs=seqs, gen_batch=batch, new_tokens=p.max_new_tokens,
               forward=seqs * sizes(p).prompt, loads=loads)


def sampled(name: str, p: Profile, questions: int, n: int) -> Run:
    """labkit.best_of_n.sample_n: n samples per question, eval_batch_size // n questions per call."""
    return generate(name, p, questions * n, batch=max(1, p.eval_batch_size // n) * n)


def steps_tokens(p: Profile, per_example: int) -> int:
    """Tokens of max_steps optimizer steps of batch_size x grad_accum examples."""
    return p.max_steps * p.batch_size * p.grad_accum * per_example


def sft_train(p: Profile) -> Run:
    return Run(f"SFT training ({p.max_steps} steps)", trained=steps_tokens(p, sizes(p).sft))


def rm_train(p: Profile) -> Run:
    return Run(f"reward-model training ({p.max_steps} steps)", trained=steps_tokens(p, 2 * sizes(p).pair))


def pair_scores(name: str, p: Profile, pairs: int, passes: int = 1) -> Run:
    return Run(name, forward=pairs * 2 * sizes(p).pair * passes)


def grpo_train(name: str, p: Profile, reference: bool, gen_factor: float = 1.0, loads: int = 1) -> Run:
    """max_steps RL steps: one generate call of rollout x G completions, the update on them, and
    (beta > 0) the reference log-probs with the adapter switched off."""
    s, seqs = sizes(p), p.rollout_batch_size * p.num_generations
    return Run(f"{name} ({p.max_steps} steps x {p.rollout_batch_size} prompts x G={p.num_generations})",
               gen_seqs=round(p.max_steps * seqs * gen_factor), gen_batch=seqs, new_tokens=s.new,
               trained=p.max_steps * seqs * s.rl,
               forward=p.max_steps * seqs * (s.prompt + (s.rl if reference else 0)), loads=loads)


def ppo_train(name: str, p: Profile, epochs: int, steps: int | None = None, rollout: int | None = None) -> Run:
    """labkit.ppo: per step a generate call of the rollout, policy + reference + reward-model
    passes over it, then `epochs` passes of updates (no checkpointing)."""
    s, steps, rollout = sizes(p), steps or p.max_steps, rollout or p.rollout_batch_size
    return Run(f"{name} ({steps} steps x {rollout} prompts)", gen_seqs=steps * rollout, gen_batch=rollout,
               new_tokens=s.new, trained=epochs * steps * rollout * s.rl,
               forward=steps * rollout * (3 * s.rl + s.prompt))


# ---------------------------------------------------------------- what each lab runs

# The experiment exercises' sizes (the notebooks' exercise 3 cells)
EXERCISE_SFT_STEPS, EXERCISE_SFT_EVAL = 30, 100   # lab 01: at most 30 steps, scored on 100 problems
EXERCISE_PPO_STEPS = 10                          # lab 04: short_ppo_run's steps
EXERCISE_GRPO_QUESTIONS = 192                    # lab 05: questions sampled at the student's temperature
DPO_MILD_BETA = 0.5                              # lab 03's MILD_BETA (step 6)


def _sft_lab(p: Profile, q: dict) -> list[Run]:
    runs = [Run("load the base model", loads=1),
            generate(f"eval before SFT ({p.eval_limit} questions)", p, p.eval_limit)]
    if p.model_id == "tiny":
        runs.append(generate("plain-text eval of the base model", p, p.eval_limit))
    short = Run(f"exercise 3: short SFT run ({EXERCISE_SFT_STEPS} steps)", loads=1, exercise=True,
                trained=EXERCISE_SFT_STEPS * p.batch_size * p.grad_accum * sizes(p).sft)
    return runs + [sft_train(p), generate("eval after SFT", p, p.eval_limit), short,
                   replace(generate(f"exercise 3: eval of the short run ({EXERCISE_SFT_EVAL} questions)", p,
                                    min(EXERCISE_SFT_EVAL, p.eval_limit)), exercise=True)]


def _rm_lab(p: Profile, q: dict) -> list[Run]:
    n = q["SAMPLE_QUESTIONS"] * q["SAMPLES_PER_QUESTION"]
    return [Run("load the reward model and the SFT policy", loads=2), rm_train(p),
            pair_scores("held-out pair accuracy", p, heldout_pairs(p)),
            generate(f"sample the SFT policy ({q['SAMPLE_QUESTIONS']} x {q['SAMPLES_PER_QUESTION']})", p, n),
            Run("reward-model scores of the samples", forward=n * sizes(p).rl)]


def dpo_run(name: str, p: Profile, variants: int) -> Run:
    """`variants` DPO trainings of max_steps steps, each with its reference pass (adapter off)."""
    tokens = steps_tokens(p, 2 * sizes(p).pair)
    return Run(f"{name} ({variants} x {p.max_steps} steps)", trained=variants * tokens,
               forward=variants * tokens, loads=variants)


def _dpo_lab(p: Profile, q: dict) -> list[Run]:
    # the first run, the beta sweep, IPO and step 6's mild run
    variants, held = 3 + len(q["SWEEP_BETAS"]), heldout_pairs(p)
    # greedy evals: SFT, the first run, the mild run and (when swept) the sweep's run at the mild beta
    runs = 2 + (DPO_MILD_BETA in q["SWEEP_BETAS"])
    return [replace(dpo_run("DPO training", p, variants), loads=variants + 1),
            pair_scores("held-out evaluation (policy + reference)", p, held, passes=2 * variants + 1),
            generate(f"greedy eval of SFT and {runs} DPO runs ({p.eval_limit} questions each)", p,
                     (1 + runs) * p.eval_limit),
            replace(dpo_run("exercise 3: one DPO run", p, 1), exercise=True),
            replace(pair_scores("exercise 3: its held-out pairs", p, held, passes=2), exercise=True),
            replace(generate(f"exercise 3: its greedy eval ({p.eval_limit} questions)", p, p.eval_limit),
                    exercise=True)]


def _ppo_lab(p: Profile, q: dict) -> list[Run]:
    s, epochs = sizes(p), q["NUM_PPO_EPOCHS"]
    return [Run("load the reward model and the policy", loads=2),
            ppo_train("hand-check rollouts", p, epochs, steps=2, rollout=8),
            generate(f"sampled RM score before/after ({p.eval_limit} questions)", p, 2 * p.eval_limit),
            Run("reward-model scores of those samples", forward=2 * p.eval_limit * s.rl),
            generate(f"greedy eval before/after ({p.eval_limit} questions)", p, 2 * p.eval_limit),
            ppo_train("PPO training", p, epochs),
            # exercise 3: kl_coef 0 and the student's, 10 steps each at half the rollout
            replace(ppo_train("exercise 3: 2 short PPO runs", p, epochs, steps=2 * EXERCISE_PPO_STEPS,
                              rollout=max(1, p.rollout_batch_size // 2)), loads=2, exercise=True)]


def _grpo_lab(p: Profile, q: dict) -> list[Run]:
    g, k = p.num_generations, max(1, q["EVAL_SAMPLES"])
    probe = generate("probe groups (hand check)", p, PROBE_TRIES * g, batch=g, loads=1)
    return [replace(probe, forward=probe.forward + 2 * g * sizes(p).rl),
            generate(f"greedy eval before/after ({p.eval_limit} questions)", p, 2 * p.eval_limit, loads=1),
            generate(f"sampled eval before/after ({p.eval_limit} x {k})", p, 2 * p.eval_limit * k),
            grpo_train("GRPO training", p, reference=bool(q["BETA"]), loads=0),
            # exercise 3: one group per question at the student's temperature (cpu also checks 1.0)
            replace(sampled(f"exercise 3: {EXERCISE_GRPO_QUESTIONS} questions x G", p,
                            (2 if p.model_id == "tiny" else 1) * EXERCISE_GRPO_QUESTIONS, g), loads=1,
                    exercise=True)]


def _grpo_compare_lab(p: Profile, q: dict) -> list[Run]:
    from labkit.ablation import NUM_ITERATIONS
    from labkit.grpo import VARIANTS

    names, k = tuple(q["VARIANTS"]), max(1, q["EVAL_SAMPLES"])
    # NUM_ITERATIONS updates per generated batch: one generate call (and one old-log-prob pass) per
    # NUM_ITERATIONS optimizer steps
    one = grpo_train("", p, reference=True, gen_factor=1 / NUM_ITERATIONS)
    one = replace(one, forward=round(one.forward / NUM_ITERATIONS))
    # DAPO's dynamic sampling regenerates the groups whose samples all agree
    dynamic = sum(VARIANTS[name].dynamic_sampling for name in names)
    extra = round(dynamic * one.gen_seqs * (DYNAMIC_SAMPLING_FACTOR - 1))
    train = replace(one, name=f"{len(names)} variants' training{one.name}", loads=len(names),
                    gen_seqs=len(names) * one.gen_seqs + extra, trained=len(names) * one.trained,
                    forward=len(names) * one.forward)
    return [train, generate(f"sampled eval of SFT + {len(names)} variants ({p.eval_limit} x {k})", p,
                            (len(names) + 1) * p.eval_limit * k, loads=1)]


def _best_of_n_lab(p: Profile, q: dict) -> list[Run]:
    hard, n, grpo_n = p.eval_limit, q["MAX_N"], q["GRPO_N"]
    questions = hard + 2 * q["OTHER_LIMIT"]
    return [Run("load the SFT policy, reward model and GRPO policy", loads=3),
            generate("demo: 2 prompts x 4 samples", p, 8, batch=8),
            sampled("demo: 8 questions x 8", p, 8, 8),
            sampled(f"SFT samples ({questions} questions x {n})", p, questions, n),
            Run("reward-model scores of the SFT samples", forward=questions * n * sizes(p).rl),
            sampled(f"GRPO samples ({hard} questions x {grpo_n})", p, hard, grpo_n),
            generate(f"greedy SFT and GRPO ({hard} questions each)", p, 2 * hard),
            replace(sampled(f"exercise 3: SFT samples at the student's temperature ({hard} questions x 8)", p,
                            hard, 8), exercise=True)]


# Lab 08's CPU-side work, measured on 2 shared cores: the single and 2-process GRPO runs of the tiny
# model (started together, ~35 s) and the engine schema checks (~25 s, plus ~30 s to build their
# environment from PyPI the first time).
TOOLS_CPU_S = 90.0


def _tools_lab(p: Profile, q: dict) -> list[Run]:
    tokens, held = steps_tokens(p, 2 * sizes(p).pair), heldout_pairs(p)
    return [Run("DDP demo (tiny model, CPU) and engine schema checks", cpu_s=TOOLS_CPU_S),
            Run(f"DPO, KTO and ORPO training (3 x {p.max_steps} steps)", trained=3 * tokens,
                forward=2 * tokens, loads=4),  # reference passes: DPO and KTO (ORPO has none)
            pair_scores("held-out pairs: SFT + 3 policies, each with the reference", p, held, passes=7),
            generate(f"greedy eval of SFT + 3 policies ({p.eval_limit} questions each)", p, 4 * p.eval_limit)]


LAB_RUNS: dict[str, Callable[[Profile, dict], list[Run]]] = {
    "env": lambda p, q: [], "sft": _sft_lab, "rm": _rm_lab, "dpo": _dpo_lab, "ppo": _ppo_lab,
    "grpo": _grpo_lab, "grpo_compare": _grpo_compare_lab, "best_of_n": _best_of_n_lab, "tools": _tools_lab,
}


def stage_runs(name: str, profile: Profile) -> list[Run]:
    """What building stage `name` runs, with the stage's own (canonical) settings."""
    from labkit.stages import canonical_profile

    p = canonical_profile(name, profile)
    tag = f"stage {name}: "
    if name == "base":
        params = _params(p.model_id)
        return [Run(tag + f"download {p.model_id}", download_gb=params * 2 / 2**30)] if params else []
    if name == "sft":
        train = sft_train(p)
        return [Run(tag + "load", loads=1), replace(train, name=tag + train.name)]
    if name == "rm":
        train = rm_train(p)
        return [Run(tag + "load", loads=1), replace(train, name=tag + train.name),
                pair_scores(tag + "held-out pair accuracy", p, heldout_pairs(p))]
    if name == "grpo":
        from labkit.grpo import GRPO_STAGE_BETA

        return [grpo_train(tag + "GRPO training", p, reference=GRPO_STAGE_BETA > 0)]
    raise KeyError(f"unknown stage {name!r}")


def needed_stages(lab: str) -> list[str]:
    """The stages lab `lab` loads and everything they are built on, each after its dependencies."""
    from labkit.stages import _with_upstream

    return _with_upstream(list(LAB_STAGES[lab]))


def missing_stages(lab: str, profile: Profile) -> list[str]:
    """The stages the lab needs that would be built now (not shipped, not cached)."""
    from labkit.stages import ready_stage

    return [name for name in needed_stages(lab) if ready_stage(name, profile) is None]


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """A lab's runs (and the builds of the stages it misses) on one GPU, against a budget."""

    lab: str
    profile: str
    gpu: str
    runs: tuple[Run, ...]
    stage_runs: tuple[Run, ...] = ()
    rates: Rates | None = None
    rates_note: str = ""
    budget_min: float | None = None
    missing: tuple[str, ...] = ()

    def minutes(self, runs: Iterable[Run]) -> float | None:
        """Wall minutes of `runs` (None without rates: the cpu profile)."""
        return None if self.rates is None else sum(r.seconds(self.rates) for r in runs) / 60

    def _shown_minutes(self, runs: Iterable[Run]) -> str:
        minutes = self.minutes(runs)
        return "-" if minutes is None else f"{minutes:.1f}"

    @property
    def lab_min(self) -> float | None:
        return self.minutes(self.runs)

    @property
    def total_min(self) -> float | None:
        return self.minutes(self.stage_runs + self.runs)

    @property
    def budgeted_min(self) -> float | None:
        """Minutes the budget covers: the stage builds and the lab, without the exercise attempts."""
        return self.minutes(self.stage_runs + tuple(r for r in self.runs if not r.exercise))

    @property
    def exercise_min(self) -> float | None:
        """Minutes of one attempt at each experiment exercise (a student may run several)."""
        return self.minutes(r for r in self.runs if r.exercise)

    @property
    def fits(self) -> bool:
        return self.budget_min is None or self.budgeted_min is None or self.budgeted_min <= self.budget_min

    def totals(self, runs: Iterable[Run] | None = None) -> tuple[int, int, int]:
        """(generated, trained, forward-only) tokens."""
        runs = list(self.stage_runs + self.runs if runs is None else runs)
        return (sum(r.generated for r in runs), sum(r.trained for r in runs), sum(r.forward for r in runs))

    def table(self) -> str:
        """The runs as an aligned text table with a total line."""
        rows = [("run", "generated", "trained", "forward", "min")]
        everything = self.stage_runs + self.runs
        for run in everything:
            tokens = (f"{n:,}" for n in (run.generated, run.trained, run.forward))
            rows.append((run.name, *tokens, self._shown_minutes([run])))
        rows.append(("total", *(f"{n:,}" for n in self.totals()), self._shown_minutes(everything)))
        if any(run.exercise for run in everything):
            budgeted = [run for run in everything if not run.exercise]
            rows.append(("budgeted (without the exercise attempts)", *(f"{n:,}" for n in self.totals(budgeted)),
                         self._shown_minutes(budgeted)))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in rows]
        head = f"time plan: lab {self.lab!r}, profile {self.profile}, {self.gpu} ({self.rates_note})"
        if self.budget_min is not None:
            head += f"; budget {self.budget_min:g} min"
        return "\n".join([head, *lines])


def lab_params(lab: str, profile: Profile, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The notebook parameters lab `lab` runs with (labkit.profiles.notebook_params)."""
    return notebook_params(profile.name, lab, **(params or {}))


def plan_lab(lab: str, profile: Profile, gpu: str | None = None, params: dict[str, Any] | None = None,
             missing: Iterable[str] | None = None, budget_min: float | None = None,
             report: dict | None = None) -> Plan:
    """The time plan of `lab` with `profile` on `gpu`, a GPU name ("Tesla T4") or a RATES kind ("t4");
    None: the GPU the profile's budget is planned for (REFERENCE_GPU).

    missing: the stages to build first (None: those labkit.stages cannot serve now). budget_min
    None: the profile's BUDGET_MIN. report: a gpucheck report (None: no calibration).
    """
    if lab not in LAB_RUNS:
        raise KeyError(f"unknown lab {lab!r}; labs: {list(LAB_RUNS)}")
    missing = tuple(missing_stages(lab, profile) if missing is None else missing)
    kind = REFERENCE_GPU.get(profile.name) if gpu is None else gpu if gpu in KINDS else gpu_kind(gpu)
    rates, note = rates_for(profile, kind, report)
    built = tuple(run for name in missing for run in stage_runs(name, profile))
    budget = BUDGET_MIN.get(profile.name) if budget_min is None else budget_min
    runs = tuple(LAB_RUNS[lab](profile, lab_params(lab, profile, params)))
    return Plan(lab=lab, profile=profile.name, gpu=gpu or kind or "?", runs=runs, stage_runs=built, rates=rates,
                rates_note=note, budget_min=budget if rates else None, missing=missing)


# ---------------------------------------------------------------- refusing, with the fix


def _with_knob(profile: Profile, params: dict, knob: str, value: int) -> tuple[Profile, dict]:
    if knob in KNOB_FIELDS:
        return replace(profile, **{KNOB_FIELDS[knob]: value}), params
    return profile, {**params, knob: value}


def _knob_value(profile: Profile, params: dict, knob: str) -> int:
    return getattr(profile, KNOB_FIELDS[knob]) if knob in KNOB_FIELDS else params[knob]


def _candidates(knob: str, current: int) -> list[int]:
    """Values below `current` a student would type, largest first (powers of 2 for MAX_N)."""
    low = KNOB_MIN.get(knob, 1)
    if knob == "MAX_N":
        return [2 ** i for i in range(int(math.log2(max(current, 1))) - 1, -1, -1) if low <= 2 ** i < current]
    step = 10 if current > 100 else 5 if current > 20 else 1
    return [v for v in range(current - 1, low - 1, -1) if v % step == 0 or v < step]


def fits_with(plan: Plan, profile: Profile, params: dict, knob: str) -> int | None:
    """The largest value of `knob` below the current one that brings `plan` within its budget."""
    values = _candidates(knob, _knob_value(profile, params, knob))
    room = plan.budget_min - (plan.minutes(plan.stage_runs) or 0.0)

    def fits(value: int) -> bool:
        runs = LAB_RUNS[plan.lab](*_with_knob(profile, params, knob, value))
        return plan.minutes(r for r in runs if not r.exercise) <= room

    lo, hi = 0, len(values)  # binary search on the descending list for the first value that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return values[lo] if lo < len(values) else None


def refusal(plan: Plan, profile: Profile, params: dict, passed: set[str], table: bool = True) -> str:
    """Why the plan is refused (with its table) and the parameter changes that fit: profile fields,
    and the notebook parameters in `passed` (those setup can see)."""
    knobs = [k for k in KNOBS.get(plan.lab, ()) if k in KNOB_FIELDS or k in passed]
    fixes = [f"{k} = {v}" for k in knobs if (v := fits_with(plan, profile, params, k)) is not None]
    stages_min = plan.minutes(plan.stage_runs) or 0.0
    lines = [f"lab {plan.lab!r} is planned at about {plan.budgeted_min:.0f} min on {plan.gpu} "
             f"(profile {plan.profile}), over the {plan.budget_min:g}-min budget."]
    lines += [plan.table()] if table else []
    if fixes:
        lines.append(f"To fit, set {' or '.join(fixes)} in the parameters cell.")
    elif knobs:
        lines.append(f"No single parameter fits: lower several of {', '.join(knobs)}.")
    if plan.missing:
        lines.append(f"The stages {', '.join(plan.missing)} are not built yet ({stages_min:.0f} min of the "
                     f"plan): build them before class with `python -m labkit.stages build "
                     f"{' '.join(plan.missing)} --profile {plan.profile}`.")
    lines.append(f"Or accept the longer run: TIME_BUDGET_MIN = {math.ceil(plan.budgeted_min / 5) * 5}.")
    return "\n".join(lines)


def time_preflight(profile: Profile, hardware: Hardware, lab: str | None, budget_min: float | None = None,
                   params: dict[str, Any] | None = None, quiet: bool = False) -> Plan | None:
    """Print the lab's time plan on this GPU; raise TimeBudgetError (with the fix) when it is over
    budget. Nothing on the cpu profile or without a lab; a stand-in run (labkit.standin) is never
    refused (its SMOKE sizes finish in minutes on a CPU)."""
    from labkit.standin import world

    standin = world() is not None
    if profile.device != "cuda" or lab is None or lab not in LAB_RUNS or (quiet and standin):
        return None
    plan = plan_lab(lab, profile, hardware.name, params, budget_min=budget_min,
                    report=load_calibration())
    if not quiet and plan.stage_runs + plan.runs:
        print(plan.table())
    if not plan.fits and not standin:
        merged = lab_params(lab, profile, params)
        raise TimeBudgetError(refusal(plan, profile, merged, set(params or {}), table=quiet))
    return plan


# ---------------------------------------------------------------- every lab, for a profile


def summary(profile_name: str, gpu: str | None = None, report: dict | None = None) -> str:
    """A markdown table of every lab on a profile: its own tokens and minutes, then with the builds
    of every stage it needs (none cached yet)."""
    rows = ["| lab | generated | trained | forward only | min | stages built first | + their generated / "
            "trained | min with stages | fits | + exercise 3 (min per attempt) |",
            "|---|---:|---:|---:|---:|---|---:|---:|---|---:|"]
    for lab, number in LABS.items():
        plan = plan_lab(lab, get_profile(profile_name, lab=lab), gpu, missing=needed_stages(lab), report=report)
        body = [run for run in plan.runs if not run.exercise]
        generated, trained, forward = plan.totals(body)
        stage_gen, stage_trained, _ = plan.totals(plan.stage_runs)
        rows.append(f"| {number} {lab} | {generated:,} | {trained:,} | {forward:,} | {plan.minutes(body) or 0:.1f} | "
                    f"{', '.join(plan.missing) or '-'} | {stage_gen:,} / {stage_trained:,} | "
                    f"{plan.budgeted_min or 0:.1f} | {'yes' if plan.fits else 'NO'} | "
                    f"{plan.exercise_min or 0:.1f} |")
    head = (f"Time plan, profile {profile_name} on {plan.gpu} (budget {plan.budget_min:g} min; "
            f"rates: {plan.rates_note})")
    return "\n".join([head, "", *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.timeplan", description=__doc__.split("\n\n")[0])
    gpu_profiles = [name for name, p in PROFILES.items() if p.device == "cuda"]
    parser.add_argument("--profile", default="t4", choices=gpu_profiles)
    parser.add_argument("--gpu", help=f"GPU kind (default: the profile's, {REFERENCE_GPU})")
    parser.add_argument("--lab", choices=list(LABS), help="one lab's detailed plan (default: every lab)")
    parser.add_argument("--calibration", help="a gpucheck report (default: none; the table's rates)")
    parser.add_argument("--detail", action="store_true", help="also print each lab's runs")
    args = parser.parse_args(argv)
    from labkit.runtime import quiet_known_noise

    quiet_known_noise()
    report = load_calibration(args.calibration) if args.calibration else None
    labs = [args.lab] if args.lab else list(LABS)
    if not args.lab:
        print(summary(args.profile, args.gpu, report))
    if args.lab or args.detail:
        for lab in labs:
            print("\n" + plan_lab(lab, get_profile(args.profile, lab=lab), args.gpu, missing=needed_stages(lab),
                                  report=report).table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
