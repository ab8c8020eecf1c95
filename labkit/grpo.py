"""GRPO with TRL: the config and rewards labs 05-06 teach, the lab-06 variants, DAPO's dynamic
sampling (TRL only logs zero-variance groups; this trainer replaces them), and the GRPO stage.

Batch sizes: one RL step samples `rollout_batch_size` prompts x `num_generations` (G)
completions. TRL counts completions: per_device_train_batch_size = profile.batch_size
completions per micro-step, and the step's completions are split over
gradient_accumulation_steps = rollout_batch_size * G / batch_size micro-steps.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from labkit.memory import GiB, estimate_memory
from labkit.preflight import train_plan
from labkit.profiles import Profile
from labkit.rewards import accuracy_reward, format_reward, overlong_penalty
from labkit.trainer_args import common_args

# 0.5 is exact in binary: a group of identical rewards then has a std of exactly 0, which TRL's
# zero-std check (torch.isclose, atol 1e-8) needs. With 0.2, float32 rounding leaves ~1.5e-8.
FORMAT_WEIGHT = 0.5
# Prompts RL trains on: the tiny SFT model already solves levels 1-2 (~0.9), so on the kit's
# data RL trains on level 3, where it has headroom. GSM8K: all problems.
TRAIN_LEVELS: dict[str, tuple[int, ...] | None] = {"kit": (3,), "gsm8k": None}
# The GRPO stage (lab 05's recipe) keeps a small KL term, as DeepSeekMath's GRPO (TRL: beta=0).
GRPO_STAGE_BETA = 0.04
ZERO_STD_TOL = 1e-6  # rewards closer than this count as equal
# Colocated vLLM (TRL's vllm_mode="colocate", its default) takes this share of the GPU's memory
# for its own weights and KV cache: TRL 1.16's vllm_gpu_memory_utilization default, set explicitly.
VLLM_GPU_MEMORY_UTILIZATION = 0.3
# The vLLM releases TRL 1.16 supports (trl.import_utils.is_vllm_available; it only warns outside).
VLLM_SUPPORTED = (Version("0.22.0"), Version("0.31.0"))


class GRPOSetupError(ValueError):
    """A GRPO batch layout or variant that cannot work, with the field to change."""


def rl_dataset(profile: Profile, split: str = "rl", levels: tuple[int, ...] | None = None,
               limit: int | None = None):
    """Prompt rows for GRPOTrainer: `prompt` (conversation) plus id, lang, level and `answer`
    (TRL passes `answer` to the reward functions). levels default to TRAIN_LEVELS."""
    from labkit.data import load_problems, prompt_messages, to_dataset

    if levels is None:
        levels = TRAIN_LEVELS.get(profile.dataset)
    rows = load_problems(profile.dataset, split, levels=levels, limit=limit)
    return to_dataset(rows, lambda r: {"prompt": prompt_messages(r, profile.system_prompt)})


def reward_setup(profile: Profile, overlong_fraction: float | None = None,
                 wrong_length: bool = False) -> tuple[list, list[float]]:
    """(reward_funcs, reward_weights): format (weight 0.5) + accuracy (1.0), plus DAPO's soft
    overlong penalty over the last `overlong_fraction` of the generation budget when given
    (CPU: 48 tokens, 1/3 -> the penalty starts after 32). wrong_length=True adds
    `wrong_answer_length` with weight 0: it changes no reward, TRL just logs its mean each step."""
    funcs: list = [format_reward, accuracy_reward]
    weights = [FORMAT_WEIGHT, 1.0]
    if overlong_fraction:
        cache = max(1, int(profile.max_new_tokens * overlong_fraction))
        funcs.append(overlong_penalty(profile.max_new_tokens, cache))
        weights.append(1.0)
    if wrong_length:
        funcs.append(wrong_answer_length)
        weights.append(0.0)
    return funcs, weights


def wrong_answer_length(completions: list, answer: list, completion_ids: list | None = None,
                        **_: Any) -> list[float | None]:
    """A logging-only "reward": the token length of each wrong answer, None for a right one (TRL
    averages with nanmean, so `rewards/wrong_answer_length/mean` is the mean length of the wrong
    answers in the step). Give it weight 0."""
    correct = accuracy_reward(completions, answer=answer)
    lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [0] * len(completions)
    return [None if ok else float(n) for ok, n in zip(correct, lengths)]


def accumulation_steps(profile: Profile) -> int:
    """Micro-steps per RL step: rollout_batch_size * num_generations / batch_size completions."""
    completions = profile.rollout_batch_size * profile.num_generations
    if profile.num_generations < 2:
        raise GRPOSetupError(f"num_generations must be >= 2 (a group needs a baseline); got {profile.num_generations}")
    if completions % profile.batch_size:
        raise GRPOSetupError(
            f"rollout_batch_size x num_generations = {profile.rollout_batch_size} x {profile.num_generations}"
            f" = {completions} completions do not split into micro-batches of batch_size={profile.batch_size}; "
            "choose a batch_size that divides it."
        )
    return completions // profile.batch_size


def _vllm_version() -> Version | None:
    """The installed vLLM release (local tags such as +cu129 dropped), None if not installed."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        return Version(Version(importlib.metadata.version("vllm")).base_version)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_vram_gb() -> float:
    """Total memory of the first CUDA device in GiB."""
    return torch.cuda.get_device_properties(0).total_memory / GiB


def use_vllm(profile: Profile, vram_gb: float | None = None) -> tuple[bool, str]:
    """Whether GRPO/RLOO generate with colocated vLLM, and a one-line reason.

    On only with a CUDA GPU that torch can use, an unquantized model (vLLM cannot load the
    bitsandbytes QLoRA setup), a vLLM release TRL supports, and a memory plan (labkit.preflight)
    that still fits once vLLM's share, VLLM_GPU_MEMORY_UTILIZATION x `vram_gb`, is taken out of
    the budget. `vram_gb` defaults to the first CUDA device's total memory. The plan still counts
    transformers' KV cache, which vLLM makes unnecessary, so the memory test errs toward off.
    """
    if profile.device != "cuda" or not torch.cuda.is_available():
        return False, "vLLM off: no CUDA GPU, completions come from transformers' generate"
    if profile.quant is not None:
        return False, f"vLLM off: the {profile.quant} quantized model (QLoRA) generates with transformers"
    version = _vllm_version()
    if version is None:
        return False, "vLLM off: vllm is not installed"
    low, high = VLLM_SUPPORTED
    if not low <= version <= high:
        return False, f"vLLM off: vllm {version} is outside the releases TRL supports ({low} to {high})"
    vram_gb = _cuda_vram_gb() if vram_gb is None else vram_gb
    vram, reserved = int(vram_gb * GiB), int(VLLM_GPU_MEMORY_UTILIZATION * vram_gb * GiB)
    estimate = estimate_memory(train_plan(profile, "grpo"))
    share = f"vLLM's {VLLM_GPU_MEMORY_UTILIZATION:.0%} of {vram_gb:.1f} GiB ({reserved / GiB:.1f} GiB)"
    if not estimate.fits(vram, reserved_bytes=reserved):
        return False, (f"vLLM off: training ({estimate.total_bytes / GiB:.1f} GiB) does not fit next "
                       f"to {share}")
    return True, (f"vLLM {version} on (colocated): training ({estimate.total_bytes / GiB:.1f} GiB) "
                  f"fits next to {share}")


def _rl_args(profile: Profile, output_dir: str | Path, max_steps: int | None, seed: int) -> dict[str, Any]:
    """Arguments GRPOConfig and RLOOConfig share: batches, sampling and generation backend."""
    args = common_args(profile, output_dir, max_steps=max_steps, seed=seed)
    args.update(
        gradient_accumulation_steps=accumulation_steps(profile),
        logging_steps=1,                       # RL curves are noisy: keep every step
        lr_scheduler_type="constant_with_warmup",
        num_generations=profile.num_generations,
        max_completion_length=profile.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0,   # plain sampling, as labkit.evaluate samples
        beta=0.0,                              # no KL term: TRL's default, see lab 05
        # vLLM generation where it works and fits (colocated: same process, same GPU), see use_vllm
        use_vllm=use_vllm(profile)[0],
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=VLLM_GPU_MEMORY_UTILIZATION,
    )
    return args


def grpo_config(profile: Profile, output_dir: str | Path, *, max_steps: int | None = None,
                seed: int = 0, **overrides: Any) -> GRPOConfig:
    """GRPOConfig for `profile` with the GRPO paper's choices set explicitly (TRL 1.16's defaults
    are DAPO's): loss_type="grpo" (per-sequence mean), scale_rewards="group", epsilon=0.2 on both
    sides, beta=0. `overrides` replace any of them (lab 06's variants do)."""
    args = _rl_args(profile, output_dir, max_steps, seed)
    # use_bias_correction_kl: TRL 1.16's default, stated: the KL term is weighed by the ratio rho.
    args.update(loss_type="grpo", scale_rewards="group", epsilon=0.2, epsilon_high=None,
                use_bias_correction_kl=True)
    args.update(overrides)
    return GRPOConfig(**args)


@dataclass(frozen=True)
class Variant:
    """One algorithm of lab 06, as TRL settings plus labkit's dynamic sampling."""
    name: str
    description: str
    loss_type: str = "grpo"                 # "grpo" | "dapo" | "dr_grpo" | "cispo" | "sapo" (ignored by RLOO)
    scale_rewards: str = "group"            # "group" | "batch" | "none"
    epsilon: float = 0.2                    # lower clipping bound 1 - epsilon
    epsilon_high: float | None = None       # None = symmetric clipping (epsilon on both sides)
    importance_sampling_level: str = "token"  # "sequence": GSPO's one ratio per answer
    overlong_fraction: float | None = None  # soft overlong penalty over this end part of the budget
    dynamic_sampling: bool = False          # replace zero-std groups with fresh prompts
    rloo: bool = False                      # TRL RLOOTrainer instead of GRPOTrainer


# Lab 06's ablation: the first five add DAPO's techniques one at a time (lecture 4.3's table), the
# rest are the other objectives on the same start, prompts and budget.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("grpo", "GRPO: group z-score, per-sequence mean, clip 0.2/0.2"),
    Variant("clip_higher", "+ clip-higher: clip 0.2/0.28", epsilon_high=0.28),
    Variant("dynamic", "+ dynamic sampling: zero-std groups replaced by fresh prompts", epsilon_high=0.28,
            dynamic_sampling=True),
    Variant("token_level", "+ token-level loss: one mean over all tokens of the batch", loss_type="dapo",
            epsilon_high=0.28, dynamic_sampling=True),
    Variant("dapo", "+ soft overlong penalty = DAPO", loss_type="dapo", epsilon_high=0.28,
            overlong_fraction=1 / 3, dynamic_sampling=True),
    Variant("dr_grpo", "Dr. GRPO: no std scaling, sum / (B x max_len)", loss_type="dr_grpo",
            scale_rewards="none"),
    Variant("rloo", "RLOO (TRL RLOOTrainer): leave-one-out baseline, sequence-level ratio", rloo=True),
    Variant("reinforce_pp", "REINFORCE++-baseline: group mean removed, batch std", scale_rewards="batch"),
    Variant("gspo", "GSPO: one length-normalised ratio per answer, clip 3e-4/4e-4",
            importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4),
    Variant("cispo", "CISPO: detached ratio, capped at 5, times the log-prob",
            loss_type="cispo", epsilon_high=5.0),
    Variant("sapo", "SAPO: a soft sigmoid gate on the ratio instead of a hard clip", loss_type="sapo"),
)}
# The lecture's ladder: each adds one technique to the one before.
DAPO_LADDER = ("grpo", "clip_higher", "dynamic", "token_level", "dapo")


def variant_config(variant: Variant | str, profile: Profile, output_dir: str | Path, *,
                   max_steps: int | None = None, seed: int = 0, wrong_length: bool = False,
                   **overrides: Any) -> GRPOConfig | RLOOConfig:
    """The TRL config one variant trains with (RLOOConfig for RLOO, else GRPOConfig); `overrides`
    are further config fields shared by every variant (e.g. num_iterations=2)."""
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    _, weights = reward_setup(profile, v.overlong_fraction, wrong_length)
    if v.rloo:
        args = _rl_args(profile, output_dir, max_steps, seed)
        args.update(reward_weights=weights, epsilon=v.epsilon, epsilon_high=v.epsilon_high,
                    normalize_advantages=False)
        return RLOOConfig(**{**args, **overrides})
    settings = dict(reward_weights=weights, loss_type=v.loss_type, scale_rewards=v.scale_rewards,
                    epsilon=v.epsilon, epsilon_high=v.epsilon_high,
                    importance_sampling_level=v.importance_sampling_level)
    return grpo_config(profile, output_dir, max_steps=max_steps, seed=seed, **{**settings, **overrides})


def make_trainer(variant: Variant | str, profile: Profile, model, tokenizer, train_dataset,
                 output_dir: str | Path, *, max_steps: int | None = None, seed: int = 0,
                 peft_config=None, wrong_length: bool = False, **overrides: Any):
    """A TRL trainer for one variant on `model` (not trained yet: call .train()), with the config
    of `variant_config`; wrong_length=True logs the mean length of the wrong answers per step
    (see reward_setup)."""
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    funcs, _ = reward_setup(profile, v.overlong_fraction, wrong_length)
    config = variant_config(v, profile, output_dir, max_steps=max_steps, seed=seed, wrong_length=wrong_length,
                            **overrides)
    common = dict(model=model, reward_funcs=funcs, train_dataset=train_dataset,
                  processing_class=tokenizer, peft_config=peft_config)
    if v.rloo:
        return RLOOTrainer(args=config, **common)
    if v.dynamic_sampling:
        return DynamicSamplingGRPOTrainer(args=config, **common)
    return GRPOTrainer(args=config, **common)


# ---------------------------------------------------------------- where a step's time goes


class StepTimer:
    """Times the parts of GRPO/RLOO training on one trainer: generation, reward scoring, the rest of
    building a batch (old / reference log-probs, advantages) and the update (forward, backward,
    optimizer). Wraps the trainer's own methods on the instance; numbers are unchanged.

        timer = StepTimer(trainer); trainer.train(); timer.table()
    """

    PARTS = ("generation", "scoring", "log-probs + advantages", "update (forward + backward + optimizer)")

    def __init__(self, trainer) -> None:
        import time

        self.seconds = dict.fromkeys(("_generate", "_calculate_rewards", "_generate_and_score_completions",
                                      "training_step"), 0.0)
        for name in self.seconds:
            original = getattr(trainer, name)

            def timed(*args: Any, _original=original, _name=name, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_name] += time.perf_counter() - start

            setattr(trainer, name, timed)

    def table(self) -> dict[str, float]:
        """Seconds per part (the four PARTS add up to the time spent in training steps)."""
        t = self.seconds
        batch = t["_generate_and_score_completions"]
        return dict(zip(self.PARTS, (t["_generate"], t["_calculate_rewards"],
                                     batch - t["_generate"] - t["_calculate_rewards"], t["training_step"] - batch)))


# ---------------------------------------------------------------- dynamic sampling


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """Indices of the groups (consecutive blocks of `group_size` rows) whose rewards are all
    equal, e.g. accuracy all 1 (solved by every sample) or all 0. [N] -> list of group ids."""
    grouped = rewards.detach().view(-1, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return [int(g) for g in torch.nonzero(spread < ZERO_STD_TOL).flatten()]


def sample_group_correctness(model, tokenizer, rows: list[dict], profile: Profile, group_size: int, *,
                             temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """[len(rows), group_size] accuracy (1.0 right, 0.0 wrong) of `group_size` completions sampled
    per question at `temperature` (rows as from labkit.data.load_problems), as GRPO samples a group.

    Seeded on a forked RNG: the same call gives the same numbers, and the caller's random state
    is left as it was (numbers recorded later in a notebook do not move).
    """
    from labkit.evaluate import chat_prompts, generate_batch

    if not rows:
        raise GRPOSetupError("rows is empty: pass questions, e.g. load_problems('kit', 'rl', limit=96)")
    if group_size < 1:
        raise GRPOSetupError(f"group_size must be >= 1 completion per question, got {group_size}")
    if not temperature > 0:
        raise GRPOSetupError(f"temperature must be > 0 (sampling), got {temperature}")
    prompts = chat_prompts(tokenizer, rows, profile.system_prompt)
    per_call = max(1, profile.eval_batch_size // group_size)   # prompts per generate call
    completions: list[str] = []
    with torch.random.fork_rng():   # the CPU and (when present) the CUDA generators
        torch.manual_seed(seed)
        for start in range(0, len(prompts), per_call):
            _, new_tokens = generate_batch(model, tokenizer, prompts[start:start + per_call],
                                           max_new_tokens=profile.max_new_tokens, do_sample=True,
                                           temperature=temperature, num_return_sequences=group_size)
            completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    answers = [row["answer"] for row in rows for _ in range(group_size)]
    return torch.tensor(accuracy_reward(completions, answer=answers), dtype=torch.float32).view(len(rows), group_size)


def zero_std_share(correct: torch.Tensor) -> float:
    """Share of groups (rows of a [questions, G] tensor) whose entries are all equal (all right or
    all wrong): the groups whose GRPO advantages are all 0, TRL's `frac_reward_zero_std`."""
    if correct.dim() != 2 or correct.numel() == 0:
        raise GRPOSetupError(f"correct must be a non-empty [questions, G] tensor, got shape {tuple(correct.shape)}")
    return len(zero_std_groups(correct.flatten(), correct.shape[1])) / correct.shape[0]


def question_se(correct: list[float], samples: int) -> float:
    """Standard error of a mean accuracy whose `samples` answers per question stand one after another
    (EvalResult.correct): the questions are the independent units, so the SE is the standard
    deviation of the per-question accuracies over sqrt(questions). Samples of one question are
    correlated; treating all of them as independent coin flips understates the SE."""
    samples = max(samples, 1)
    if not correct or len(correct) % samples:
        raise GRPOSetupError(f"{len(correct)} answers do not split into questions of {samples} samples each")
    per_question = torch.tensor(correct, dtype=torch.float64).view(-1, samples).mean(dim=1)
    if per_question.numel() < 2:
        raise GRPOSetupError("a standard error needs at least 2 questions")
    return float(per_question.std(unbiased=True)) / math.sqrt(per_question.numel())


# Batch entries GRPOTrainer returns for text-only training: left-padded prompt, right-padded rest.
_LEFT_PADDED = ("prompt_ids", "prompt_mask")
_RIGHT_PADDED = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                 "sampling_per_token_logps")


def _pad_to(x: torch.Tensor, width: int, left: bool, value: float) -> torch.Tensor:
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def replace_groups(batch: dict, slots: list[int], extra: dict, groups: list[int], group_size: int,
                   pad_token_id: int) -> dict:
    """Copy groups `groups` of `extra` into group positions `slots` of `batch` (same keys; the two
    batches may be padded to different widths). Returns the new batch."""
    unknown = set(batch) - set(_LEFT_PADDED) - set(_RIGHT_PADDED) - {"advantages", "num_items_in_batch"}
    if unknown:
        raise GRPOSetupError(f"dynamic sampling supports text-only GRPO batches; found {sorted(unknown)}")
    rows = torch.cat([torch.arange(s * group_size, (s + 1) * group_size) for s in slots])
    src = torch.cat([torch.arange(g * group_size, (g + 1) * group_size) for g in groups])
    out = dict(batch)
    for key in (*_LEFT_PADDED, *_RIGHT_PADDED, "advantages"):
        if key not in batch:
            continue
        a, b = batch[key], extra[key]
        if a.dim() == 2:
            left = key in _LEFT_PADDED
            value = pad_token_id if key.endswith("_ids") else 0
            width = max(a.shape[1], b.shape[1])
            a, b = _pad_to(a, width, left, value), _pad_to(b, width, left, value)
        a = a.clone()
        a[rows.to(a.device)] = b[src.to(b.device)]
        out[key] = a
    out["num_items_in_batch"] = out["completion_mask"].sum()
    return out


class DynamicSamplingGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with DAPO's dynamic sampling.

    As in DAPO, a prompt is kept only if its G samples disagree on accuracy (some right, some
    wrong): groups with accuracy all 1 or all 0 are replaced by groups of freshly drawn prompts
    that do disagree, with up to `max_rounds` extra generate calls per batch; groups still without
    a spread after that stay. TRL's own metrics (reward, frac_reward_zero_std, ...) describe the
    first sample; two more say what the filter did: `dynamic/frac_zero_std_before` and `.._after` (share of groups
    whose accuracy is all equal, as sampled and in the batch trained on) and `dynamic/extra_prompts`.
    """

    def __init__(self, *args: Any, max_rounds: int = 3, filter_on: str = "accuracy_reward",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if filter_on not in self.reward_func_names:
            raise GRPOSetupError(f"filter_on={filter_on!r} is not one of the reward functions "
                                 f"{self.reward_func_names}")
        self.max_rounds = max_rounds
        self._filter_column = self.reward_func_names.index(filter_on)
        self._draws = torch.Generator().manual_seed(self.args.seed + 1)
        self._last_rewards: torch.Tensor | None = None

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._last_rewards = super()._calculate_rewards(*args, **kwargs)  # [N, reward funcs]
        return self._last_rewards

    def _fresh_inputs(self, num_prompts: int) -> list[dict]:
        """`num_prompts` random training prompts, each repeated G times (as TRL's sampler does)."""
        picks = torch.randint(len(self.train_dataset), (num_prompts,), generator=self._draws).tolist()
        return [dict(self.train_dataset[i]) for i in picks for _ in range(self.num_generations)]

    def _sample(self, inputs: list[dict]) -> tuple[dict, list[int]]:
        """TRL's generate-and-score, plus the groups whose filtered reward is all equal."""
        batch = super()._generate_and_score_completions(inputs)
        return batch, zero_std_groups(self._last_rewards[:, self._filter_column], self.num_generations)

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        metrics = self._metrics["train"]
        batch, dead = self._sample(inputs)
        metrics["dynamic/frac_zero_std_before"].append(len(dead) * self.num_generations / len(inputs))
        extra_prompts = 0
        for _ in range(self.max_rounds):
            if not dead:
                break
            logged = {key: len(values) for key, values in metrics.items()}
            extra, extra_dead = self._sample(self._fresh_inputs(len(dead)))
            for key, count in logged.items():  # keep TRL's metrics about the first sample only
                del metrics[key][count:]
            extra_prompts += len(dead)
            extra_dead = set(extra_dead)
            live = [g for g in range(len(dead)) if g not in extra_dead]
            if live:
                batch = replace_groups(batch, dead[:len(live)], extra, live, self.num_generations,
                                       self.processing_class.pad_token_id)
                dead = dead[len(live):]
        metrics["dynamic/frac_zero_std_after"].append(len(dead) * self.num_generations / len(inputs))
        metrics["dynamic/extra_prompts"].append(float(extra_prompts))
        return batch


# ---------------------------------------------------------------- the GRPO stage


def train_grpo(profile: Profile, sft_path: str | Path, out: Path, seed: int = 0) -> dict:
    """Train GRPO from the SFT model at `sft_path` (lab 05's recipe); save the policy to `out`."""
    from labkit.hardware import detect
    from labkit.models import load_model, load_tokenizer, lora_config, save_model
    from labkit.preflight import preflight

    preflight(profile, detect(), lab="grpo")  # refuses a config that won't fit, before loading
    tokenizer = load_tokenizer(sft_path)
    model = load_model(sft_path, profile)
    trainer = make_trainer("grpo", profile, model, tokenizer, rl_dataset(profile), out / "trainer",
                           seed=seed, peft_config=lora_config(profile), beta=GRPO_STAGE_BETA)
    trainer.train()
    save_model(trainer.model, tokenizer, out, sft_path)
    return {"log_history": trainer.state.log_history}
