"""PPO for a language model, in one file: rollout, reward shaping, GAE, clipped losses, KL control.

TRL removed its PPOTrainer (absent from TRL >= 1.13), so lab 04 trains with this loop. One PPO step:

  1. rollout   sample one response per prompt from the current policy; record, for every response
               token, the policy's log-prob, the reference's log-prob and the value; score each
               response (reward model or rule).
  2. shaping   r_t = -kl_coef * (log pi - log pi_ref)_t on every response token, + score on the last.
  3. GAE       advantages and returns from r_t and V_t (`labkit.algorithms.gae`), advantages whitened.
  4. update    num_ppo_epochs passes over the rollout in minibatches, minimizing
               clipped policy loss + vf_coef * clipped value loss.

Value function: a linear head on the policy's last hidden state (one shared network, like TRL's
former AutoModelForCausalLMWithValueHead), not a separate value model. A separate model would add
a second trainable copy of the weights with its own gradients and optimizer states (the
`value_model` row of `labkit.memory`); the price of sharing is that value-loss gradients also move
the policy's network, which `vf_coef` keeps small.

Reference model: with LoRA it is the same weights with the adapter switched off (no copy); with
full fine-tuning it is a frozen copy.

Precision: trainable parameters (LoRA, value head) are fp32; on fp16 / bf16 profiles the forward
passes run under autocast, and fp16 losses are scaled (torch.amp.GradScaler) so small gradients do
not underflow to zero, as the Trainer does for TRL's trainers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import trange

from labkit.algorithms import (aligned_logprobs, gae, kl_k1, masked_mean, masked_sum, masked_whiten,
                               pad_right, policy_gradient_loss, token_entropy)
from labkit.evaluate import chat_prompts, generate_batch, generated_lengths
from labkit.models import autocast, compute_dtype, upcast_trainable
from labkit.profiles import Profile
from labkit.rewards import accuracy_reward, format_reward

ScoreFn = Callable[[list[dict], list[str]], list[float]]  # (problem rows, responses) -> scores


class PPOConfigError(ValueError):
    """A PPO setting that cannot work (e.g. a rollout that does not split into minibatches)."""


@dataclass
class PPOConfig:
    """The knobs of one PPO run; names follow TRL's former PPOConfig where it had one."""

    total_steps: int = 30               # PPO steps; each = one rollout + its update
    rollout_batch_size: int = 64        # prompts per step, one sampled response each
    mini_batch_size: int = 16           # responses per optimizer step
    micro_batch_size: int | None = None  # responses per forward/backward (None: mini_batch_size)
    num_ppo_epochs: int = 2             # passes over each rollout
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    cliprange: float = 0.2              # policy ratio clip: [1 - eps, 1 + eps]
    cliprange_value: float = 0.2        # value clip: V_old +- this
    vf_coef: float = 0.1                # weight of the value loss
    kl_coef: float = 0.05               # beta of the per-token KL penalty (start value if adaptive)
    kl_target: float | None = None      # adaptive KL: target summed KL per response; None = fixed
    kl_horizon: int = 10_000            # adaptive KL: responses over which kl_coef adapts
    gamma: float = 1.0                  # discount
    lam: float = 0.95                   # GAE lambda
    whiten_advantages: bool = True
    normalize_scores: bool = True       # shift/scale scores by the first rollout's mean and std
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of a response cut off
    response_length: int = 48          # max new tokens per response
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("total_steps", "rollout_batch_size", "mini_batch_size", "num_ppo_epochs",
                     "response_length", "kl_horizon"):
            if getattr(self, name) < 1:
                raise PPOConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_batch_size % self.mini_batch_size:
            raise PPOConfigError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple "
                                 f"of mini_batch_size ({self.mini_batch_size})")
        micro = self.micro
        if micro < 1 or self.mini_batch_size % micro:
            raise PPOConfigError(f"mini_batch_size ({self.mini_batch_size}) must be a multiple of "
                                 f"micro_batch_size ({micro})")
        if not 0 < self.cliprange < 1 or self.cliprange_value <= 0:
            raise PPOConfigError("cliprange must be in (0, 1) and cliprange_value > 0")
        if self.kl_coef < 0 or self.vf_coef < 0 or self.temperature <= 0:
            raise PPOConfigError("kl_coef and vf_coef must be >= 0 and temperature > 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise PPOConfigError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise PPOConfigError("kl_target must be > 0 (or None for a fixed kl_coef)")

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.mini_batch_size


def ppo_config(profile: Profile, **overrides) -> PPOConfig:
    """PPOConfig from a profile (steps, batches, learning rate, generation length); `overrides`
    set any PPOConfig field by name (None values are ignored)."""
    values = dict(total_steps=profile.max_steps, rollout_batch_size=profile.rollout_batch_size,
                  mini_batch_size=profile.batch_size * profile.grad_accum,
                  micro_batch_size=profile.batch_size, learning_rate=profile.learning_rate,
                  response_length=profile.max_new_tokens)
    known = {f.name for f in fields(PPOConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PPOConfigError(f"unknown PPOConfig field(s) {unknown}; valid: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PPOConfig(**values)


# ---------------------------------------------------------------------------------------------
# The pieces: shaping, value loss, KL controllers
# ---------------------------------------------------------------------------------------------


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[B] index of the last 1 in each row of a [B, T] 0/1 mask (the response's final token)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
    if bool((last < 0).any()):
        raise PPOConfigError("a response mask row is all zeros: every response needs >= 1 token")
    return last


def shape_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: r_t = -kl_coef * kl_t on every response token, plus the score on the last.

        kl_t = log pi(y_t) - log pi_ref(y_t)        (k1 estimate, 0 outside the mask)
    scores: [B]; logprobs, ref_logprobs, mask: [B, T]. Returns (rewards, kl), both [B, T].
    """
    kl = torch.where(mask.bool(), kl_k1(logprobs, ref_logprobs), torch.zeros_like(logprobs))
    rewards = -kl_coef * kl
    rows = torch.arange(len(scores), device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, float]:
    """Clipped value loss: 0.5 * mean_t max((V - R)^2, (V_clip - R)^2), where
    V_clip = V_old + clip(V - V_old, -c, c) keeps the new value near the rollout's.
    Returns (loss, fraction of tokens where the clipped term was the larger one)."""
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_err, clipped_err = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_err, clipped_err), mask)
    clip_frac = float(masked_mean((clipped_err > unclipped_err).float(), mask))
    return loss, clip_frac


class KLController:
    """kl_coef for the next step. Fixed (target None), or adaptive (Ziegler et al. 2019):
    e = clip(KL / target - 1, -0.2, 0.2),  kl_coef <- kl_coef * (1 + e * n / horizon),
    so kl_coef grows while the policy drifts further from the reference than the target."""

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10_000):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n_responses: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_responses / self.horizon


# ---------------------------------------------------------------------------------------------
# Policy with a value head
# ---------------------------------------------------------------------------------------------


class PolicyWithValue(nn.Module):
    """A causal LM plus a linear value head on its last hidden state.

    forward(input_ids, attention_mask) -> (logprobs, values, entropy), [B, T] and aligned with the
    tokens: logprobs[b, t] = log pi(x_t | x_<t) and values[b, t] = V(x_<t), the value of the
    state just before token t (read from the hidden state at t - 1); position 0 gets 0.
    """

    def __init__(self, policy: nn.Module, ref_policy: nn.Module | None = None, temperature: float = 1.0):
        super().__init__()
        self.policy = policy
        self.ref_policy = ref_policy
        self.temperature = temperature
        self.value_head = nn.Linear(policy.config.hidden_size, 1, device=policy.device)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: no made-up baseline
        nn.init.zeros_(self.value_head.bias)
        if ref_policy is not None:
            ref_policy.requires_grad_(False).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_entropy: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logprobs, values, entropy) of every token; entropy ([B, T] nats, no gradient) only
        when `with_entropy`, else None."""
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        logits = out.logits / self.temperature
        logprobs = aligned_logprobs(logits, input_ids)
        values = F.pad(self.value_head(out.hidden_states[-1][:, :-1].float()).squeeze(-1).float(), (1, 0))
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = F.pad(token_entropy(logits[:, :-1]), (1, 0))
        return logprobs, values, entropy

    @torch.no_grad()
    def ref_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] log pi_ref(x_t | x_<t), aligned like `forward`'s logprobs."""
        model, context = self.reference()
        with context:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return aligned_logprobs(logits / self.temperature, input_ids)

    def reference(self) -> tuple[nn.Module, object]:
        """(model, context manager) that computes the reference policy."""
        if self.ref_policy is not None:
            return self.ref_policy, nullcontext()
        if hasattr(self.policy, "disable_adapter"):
            return self.policy, self.policy.disable_adapter()
        raise PPOConfigError("no reference policy: pass ref_policy, or wrap the policy with LoRA")


def load_policy(path: str | Path, profile: Profile, temperature: float = 1.0) -> PolicyWithValue:
    """The SFT model at `path` as a PPO policy with a value head and a reference (see module doc)."""
    from peft import get_peft_model

    from labkit.models import load_model, lora_config

    model = load_model(path, profile)
    if profile.lora_rank == 0:
        return PolicyWithValue(model, ref_policy=load_model(path, profile), temperature=temperature)
    return PolicyWithValue(get_peft_model(model, lora_config(profile)), temperature=temperature)


# ---------------------------------------------------------------------------------------------
# Rollout and the training loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One step's samples. Tensors are [B, T] (prompt + response, right-padded) unless noted."""

    rows: list[dict]
    responses: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor         # policy at sampling time ("old" log-probs)
    ref_logprobs: torch.Tensor
    values: torch.Tensor           # V at sampling time ("old" values)
    entropy: torch.Tensor          # policy entropy at sampling time (nats per token)
    raw_scores: torch.Tensor       # [B] score_fn's output
    scores: torch.Tensor           # [B] normalized, minus missing_eos_penalty: what enters the reward
    rewards: torch.Tensor          # shaped per-token rewards
    kl: torch.Tensor               # per-token k1 KL
    advantages: torch.Tensor
    returns: torch.Tensor


def chunks(n: int, size: int) -> list[slice]:
    """Slices that cut range(n) into consecutive pieces of at most `size`."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class PPOTrainer:
    """Runs PPO steps on `model` (a PolicyWithValue). score_fn(rows, responses) scores responses."""

    def __init__(self, model: PolicyWithValue, tokenizer, score_fn: ScoreFn, config: PPOConfig,
                 system_prompt: str | None = None):
        self.model, self.tokenizer, self.score_fn, self.config = model, tokenizer, score_fn, config
        self.system_prompt = system_prompt
        self.kl_ctl = KLController(config.kl_coef, config.kl_target, config.kl_horizon)
        upcast_trainable(model)  # fp32 trainable parameters, whatever the weights' dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise PPOConfigError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate)
        # Mixed precision: autocast to the weights' half dtype (see autocast); fp16 also needs loss scaling.
        self.amp_dtype = compute_dtype(model.policy)
        self.scaler = torch.amp.GradScaler(model.policy.device.type, enabled=self.amp_dtype == torch.float16)
        # Score normalization: set from the first rollout (None until then), or the identity.
        self.score_mean: float | None = None if config.normalize_scores else 0.0
        self.score_std: float | None = None if config.normalize_scores else 1.0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[dict] = []

    # -- 1. rollout ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, rows: list[dict]) -> tuple[dict[str, torch.Tensor], list[str], list[bool]]:
        """Sample one response per row (one generate call). Returns right-padded prompt+response
        tensors, the response texts and whether each ended with EOS (False: cut off)."""
        tok, policy, cfg = self.tokenizer, self.model.policy, self.config
        prompts = chat_prompts(tok, rows, self.system_prompt)
        batch, new_tokens = generate_batch(policy, tok, prompts, max_new_tokens=cfg.response_length,
                                           do_sample=True, temperature=cfg.temperature)
        lengths = generated_lengths(new_tokens, tok.eos_token_id)  # keep EOS, drop what follows
        examples, texts, ended = [], [], []
        for prompt_ids, prompt_mask, new, length in zip(batch["input_ids"], batch["attention_mask"], new_tokens,
                                                        lengths):
            prompt = prompt_ids[prompt_mask.bool()].tolist()  # drop the left padding
            response = new[:length].tolist()
            ended.append(response[-1] == tok.eos_token_id)
            texts.append(tok.decode(response, skip_special_tokens=True))
            examples.append({"input_ids": prompt + response, "attention_mask": [1] * (len(prompt) + len(response)),
                             "response_mask": [0] * len(prompt) + [1] * len(response)})
        return {k: v.to(policy.device) for k, v in pad_right(examples, tok.pad_token_id).items()}, texts, ended

    @torch.no_grad()
    def rollout(self, rows: list[dict]) -> Rollout:
        """Sample, score, shape and estimate advantages for one batch of prompts."""
        cfg = self.config
        batch, texts, ended = self.generate(rows)
        self.model.eval()
        logprobs, values, entropy, ref_logprobs = [], [], [], []
        for part in chunks(len(rows), cfg.micro):
            ids, att = batch["input_ids"][part], batch["attention_mask"][part]
            with self.autocast():
                lp, v, ent = self.model(ids, att, with_entropy=True)
                ref_logprobs.append(self.model.ref_logprobs(ids, att))
            logprobs.append(lp)
            values.append(v)
            entropy.append(ent)
        logprobs, values, entropy, ref_logprobs = (torch.cat(x) for x in (logprobs, values, entropy, ref_logprobs))
        mask = batch["response_mask"]

        raw = torch.tensor(self.score_fn(rows, texts), dtype=torch.float32, device=mask.device)
        if self.score_mean is None:
            self.score_mean, self.score_std = float(raw.mean()), float(raw.std().clamp(min=1e-6))
        scores = (raw - self.score_mean) / self.score_std
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~torch.tensor(ended, device=mask.device)).float()

        rewards, kl = shape_rewards(scores, logprobs, ref_logprobs, mask, self.kl_ctl.value)
        advantages, returns = gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Rollout(rows, texts, batch["input_ids"], batch["attention_mask"], mask, logprobs,
                       ref_logprobs, values, entropy, raw, scores, rewards, kl, advantages, returns)

    # -- 2. update -----------------------------------------------------------------------------

    def loss(self, ro: Rollout, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO loss on the responses `idx` of a rollout: clipped policy loss + vf_coef * value loss."""
        cfg = self.config
        mask = ro.response_mask[idx]
        with self.autocast():
            logprobs, values, _ = self.model(ro.input_ids[idx], ro.attention_mask[idx])
        pg_loss, stats = policy_gradient_loss(logprobs, ro.logprobs[idx], ro.advantages[idx], mask,
                                              clip_low=cfg.cliprange, norm="token")
        vf_loss, vf_clip = value_loss(values, ro.values[idx], ro.returns[idx], mask, cfg.cliprange_value)
        stats.update(policy_loss=pg_loss.item(), value_loss=vf_loss.item(), value_clip_frac=vf_clip)
        return pg_loss + cfg.vf_coef * vf_loss, stats

    def update(self, ro: Rollout) -> dict[str, float]:
        """num_ppo_epochs passes over the rollout, one optimizer step per shuffled minibatch."""
        cfg = self.config
        self.model.train()
        n = len(ro.rows)
        collected: dict[str, list[float]] = {}
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(n, generator=self.generator)
            for mb in chunks(n, cfg.mini_batch_size):
                self.optimizer.zero_grad()
                mb_idx = order[mb]
                for micro in chunks(len(mb_idx), cfg.micro):
                    idx = mb_idx[micro].to(ro.input_ids.device)
                    loss, stats = self.loss(ro, idx)
                    self.scaler.scale(loss * len(idx) / len(mb_idx)).backward()
                    for key, value in stats.items():
                        collected.setdefault(key, []).append(value)
                self.scaler.unscale_(self.optimizer)  # true gradients before clipping (no-op in fp32/bf16)
                nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.scaler.step(self.optimizer)      # skips the step if fp16 gradients overflowed
                self.scaler.update()
        return {key: sum(v) / len(v) for key, v in collected.items()}

    def autocast(self):
        """Autocast to the weights' half dtype (fp16 / bf16 profiles); nothing on fp32."""
        return autocast(self.model.policy)

    # -- 3. the loop ---------------------------------------------------------------------------

    def step(self, rows: list[dict]) -> dict[str, float]:
        """One PPO step: rollout, update, adapt kl_coef. Returns the step's statistics."""
        kl_coef = self.kl_ctl.value
        ro = self.rollout(rows)
        stats = rollout_stats(ro, kl_coef)
        stats.update(self.update(ro))
        self.kl_ctl.update(stats["kl"], len(rows))
        return stats

    def train(self, rows: list[dict], desc: str = "PPO") -> list[dict]:
        """total_steps PPO steps over `rows` (reshuffled each pass); returns the log history
        (one dict per step, with a "step" key, ready for labkit.plotting.plot_metrics)."""
        cfg = self.config
        if len(rows) < cfg.rollout_batch_size:
            raise PPOConfigError(f"{len(rows)} prompts < rollout_batch_size {cfg.rollout_batch_size}")
        rng = random.Random(cfg.seed)
        order: list[int] = []
        for step in trange(1, cfg.total_steps + 1, desc=desc):
            if len(order) < cfg.rollout_batch_size:
                order = rng.sample(range(len(rows)), len(rows))
            batch, order = order[:cfg.rollout_batch_size], order[cfg.rollout_batch_size:]
            self.history.append({"step": step, **self.step([rows[i] for i in batch])})
        return self.history


def rollout_stats(ro: Rollout, kl_coef: float) -> dict[str, float]:
    """What a healthy PPO run is read from: score, KL penalty, their sum, length, exact accuracy."""
    mask = ro.response_mask
    non_score = masked_sum(ro.rewards, mask, dim=1) - ro.scores  # = -kl_coef * summed KL
    stats = {
        "score": float(ro.raw_scores.mean()),
        "non_score_reward": float(non_score.mean()),
        "total_reward": float((ro.scores + non_score).mean()),
        "kl": float(masked_sum(ro.kl, mask, dim=1).mean()),
        "kl_coef": kl_coef,
        "response_length": float(mask.sum(dim=1).float().mean()),
        "value_mean": float(masked_mean(ro.values, mask)),
        "entropy": float(masked_mean(ro.entropy, mask)),
    }
    if all("answer" in r for r in ro.rows):
        stats["accuracy"] = sum(accuracy_reward(ro.responses, answer=[r["answer"] for r in ro.rows])) / len(ro.rows)
        stats["format"] = sum(format_reward(ro.responses)) / len(ro.rows)
    return stats
