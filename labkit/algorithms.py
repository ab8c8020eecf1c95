"""From-scratch reference implementations of the post-training algorithms in the course.

Each function is a few lines of plain torch with its formula in the docstring; the notebooks
build the same quantities step by step and check them against these. Where TRL 1.16 computes
the same quantity, the function matches TRL's convention (tests/test_algorithms.py checks it).

Shapes: batch-first. `B` = batch size, `T` = sequence length, `V` = vocabulary size.
`mask` is a 0/1 (or bool) tensor of shape [B, T], 1 on the tokens that count (response tokens).

Two alignments of per-token quantities appear, and a response mask exists for each:
  - with the inputs, [B, T]: position t holds log p(input_ids[t] | input_ids[:t]); this is what
    `response_logprobs` returns and what `response_mask` (from `tokenize_prompt_response`) marks;
  - with the shifted labels, [B, T-1]: position t holds log p(input_ids[t+1] | input_ids[:t+1]),
    i.e. `token_logprobs(*shift_for_causal_lm(logits, input_ids))`, TRL's and HF's layout;
    `shift_mask(response_mask)` is the matching mask.
The microbatch steps at the end (`sft_microbatch_step`, `grpo_microbatch_step`) put the pieces
together: log-probs and response mask -> normalized loss -> / grad_accum_steps -> backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

Norm = Literal["token", "sequence", "constant"]
PGKind = Literal["reinforce", "reinforce_baseline", "clipped"]
PG_KINDS: tuple[str, ...] = ("reinforce", "reinforce_baseline", "clipped")
DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]


class AlgorithmInputError(ValueError):
    """Raised when an algorithm gets inputs of the wrong shape, range or kind."""


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise AlgorithmInputError(f"These tensors must have the same shape, got {shapes}.")


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """0/1 mask as `like`'s float dtype; rejects values other than 0 and 1."""
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise AlgorithmInputError("mask must contain only 0/1 (or False/True) values.")
    return mask.to(like.dtype)


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i * x_i over `dim` (all dims when None). x, mask: same shape, e.g. [B, T].

    Masked-out entries are replaced by 0 (not multiplied by 0), so padding holding inf/NaN,
    e.g. log-probs of pad tokens, cannot leak into the sum.
    """
    _check_same_shape(x=x, mask=mask)
    m = _float_mask(mask, x)
    kept = torch.where(m.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i x_i / sum_i m_i over `dim` (all dims when None). Every slice needs a 1 in mask."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    if bool((count == 0).any()):
        raise AlgorithmInputError("masked_mean: the mask is all zeros (in some row); nothing to average.")
    return masked_sum(x, mask, dim) / count


def masked_sum_over_constant(
    x: torch.Tensor, mask: torch.Tensor, constant: float, dim: int | None = None
) -> torch.Tensor:
    """sum_i m_i x_i / C over `dim` (all dims when None), with C a fixed positive number.

    Unlike `masked_mean`, the divisor does not depend on how many entries the mask keeps. Dr. GRPO
    uses C = B * max_len (batch size times the generation budget), so a long response's tokens
    weigh as much as a short one's; TRL divides by `num_items_in_batch` (the loss tokens of a whole
    gradient-accumulation window) the same way, so the microbatch losses add up to one token mean.
    """
    if not constant > 0:
        raise AlgorithmInputError(f"masked_sum_over_constant needs a positive constant; got {constant}.")
    return masked_sum(x, mask, dim) / constant


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked entries: var = sum_i m_i (x_i - mean)^2 / (n - 1), n = sum_i m_i.

    `unbiased=True` applies Bessel's correction n / (n - 1), like TRL's historical PPO
    `masked_var` (trl/core.py, later trl/trainer/utils.py, default unbiased=True).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = masked_sum(torch.ones_like(x), mask)
        if n < 2:
            raise AlgorithmInputError("masked_var: the unbiased variance needs at least 2 masked entries.")
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalize the masked entries of x to zero mean and unit variance.

        x_hat = (x - mean) / sqrt(var + eps)        (shift_mean=True)
        x_hat = (x - mean) / sqrt(var + eps) + mean (shift_mean=False: rescale only, keep the mean)

    mean and var are taken over all masked entries of the whole tensor; var is unbiased (divides by
    n - 1), and eps sits inside the square root: the convention of TRL's PPO `masked_whiten`
    (`(values - mean) * torch.rsqrt(var + 1e-8)` with unbiased `masked_var`; TRL 1.16 no longer
    ships it). Unlike TRL, entries outside the mask are returned as 0. x, mask: [B, T] (any shape).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(_float_mask(mask, x).bool(), whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------------------------
# Token log-probs, entropy, tokenization
# ---------------------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token log-probability of `labels`: out[b, t] = log softmax(logits[b, t])[labels[b, t]].

    logits: [B, T, V], labels: [B, T] (long) -> [B, T] float32.
    The logits must already be aligned with the labels: logits[b, t] is the distribution that
    predicts labels[b, t]. For a causal LM that means logits[:, :-1] with input_ids[:, 1:]
    (see `shift_for_causal_lm`). Rows are processed one at a time (log_softmax + gather in
    float32), so only one [T, V] float32 copy exists at a time instead of a full [B, T, V] one.
    Labels must be real token ids: replace -100 by any valid id and use a mask instead.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise AlgorithmInputError(
            f"token_logprobs needs logits [B, T, V] and labels [B, T]; got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    if bool((labels < 0).any()) or bool((labels >= logits.shape[-1]).any()):
        raise AlgorithmInputError(
            "labels must be token ids in [0, V); replace ignore values such as -100 with a valid id "
            "(e.g. the pad id) and mask those positions instead."
        )
    rows = []
    for row_logits, row_labels in zip(logits, labels):
        row_logp = torch.log_softmax(row_logits.float(), dim=-1)
        rows.append(row_logp.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: H[b, t] = -sum_v p_v log p_v, p = softmax(logits[b, t]).

    logits: [B, T, V] -> [B, T] float32 (nats). Processed row by row like `token_logprobs`.
    """
    if logits.dim() != 3:
        raise AlgorithmInputError(f"token_entropy needs logits [B, T, V]; got {tuple(logits.shape)}.")
    rows = []
    for row_logits in logits:
        logp = torch.log_softmax(row_logits.float(), dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)


def shift_for_causal_lm(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's outputs with the tokens they predict.

    The logits at position t are the model's prediction for token t + 1, so
        (logits[:, :-1], input_ids[:, 1:])   shapes [B, T-1, V] and [B, T-1].
    The first token is never predicted (it has no log-prob).
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise AlgorithmInputError(
            f"shift_for_causal_lm needs logits [B, T, V] and input_ids [B, T]; got {tuple(logits.shape)} "
            f"and {tuple(input_ids.shape)}."
        )
    return logits[:, :-1], input_ids[:, 1:]


def shift_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """The response mask aligned with the shifted labels of `shift_for_causal_lm`: response_mask[:, 1:].

        aligned with the inputs:         response_mask        [B, T]    1 where input_ids[b, t] is a response token
        aligned with the shifted labels: response_mask[:, 1:] [B, T-1]  1 where input_ids[b, t+1] is one

    so masked_sum(token_logprobs(*shift_for_causal_lm(logits, ids)), shift_mask(m)) equals
    masked_sum(response_logprobs(...), m). The first token has no log-prob, so a mask with a 1
    in column 0 is refused (it would silently lose that token).
    """
    if response_mask.dim() != 2:
        raise AlgorithmInputError(f"shift_mask needs a [B, T] mask; got shape {tuple(response_mask.shape)}.")
    if bool(response_mask[:, 0].bool().any()):
        raise AlgorithmInputError(
            "response_mask is 1 on the first token, which has no log-prob; every response needs a "
            "non-empty prompt before it."
        )
    return response_mask[:, 1:]


def aligned_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[b, t] | input_ids[b, :t]) at every position t, from a causal LM's logits.

    logits: [B, T, V], input_ids: [B, T] -> [B, T]. logits[:, t-1] predicts token t (the one-token
    shift), so the shifted [B, T-1] log-probs are written back at positions 1..T-1 and position 0,
    which nothing predicts, gets 0.
    """
    shifted_logits, targets = shift_for_causal_lm(logits, input_ids)
    return F.pad(token_logprobs(shifted_logits, targets), (1, 0), value=0.0)


def response_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response token, aligned with `response_mask`.

    input_ids, attention_mask, response_mask: [B, T] (prompt then response, right-padded)
    -> [B, T] with out[b, t] = log p(input_ids[b, t] | input_ids[b, :t]) where response_mask is 1,
    and 0 elsewhere (see `aligned_logprobs` for the one-token shift).
    Hence sum_t out[b, t] = log pi(response_b | prompt_b), i.e. `masked_sum(out, response_mask, 1)`.
    Use right padding: HF models number positions 0, 1, ... from the left edge of the row.
    """
    _check_same_shape(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask)
    if bool(response_mask[:, 0].bool().any()):
        raise AlgorithmInputError(
            "response_mask is 1 on the first token, which has no log-prob; every response needs a "
            "non-empty prompt before it."
        )
    if bool((response_mask.bool() & ~attention_mask.bool()).any()):
        raise AlgorithmInputError("response_mask is 1 on a padding token (attention_mask 0); fix the masks.")
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = aligned_logprobs(logits, input_ids)
    return torch.where(response_mask.bool(), logps, torch.zeros_like(logps))


def tokenize_prompt_response(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    add_special_tokens: bool = True,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Token ids of prompt + response with a mask marking the response tokens.

    Returns {"input_ids", "attention_mask", "response_mask"}, three lists of equal length;
    response_mask is 0 on prompt tokens and 1 on response tokens (including the appended EOS).

    Prompt and response are tokenized *separately* and concatenated:
      - at generation time the model saw exactly tokenize(prompt) and then produced response tokens,
        so this reproduces the context it sampled from;
      - tokenizing the concatenated text can merge characters across the boundary (BPE may fuse
        the prompt's last characters with the response's first ones into one token), leaving no
        token boundary where the response starts, so the response mask would be wrong.
    `add_special_tokens` applies to the prompt only (e.g. a BOS token); pass False when the prompt
    already is a rendered chat template. With `add_eos`, the tokenizer's EOS id is appended to the
    response so the model learns to stop.
    """
    if not prompt:
        raise AlgorithmInputError("prompt is empty; the first response token needs a prompt to be predicted from.")
    if not response:
        raise AlgorithmInputError("response is empty; there is nothing to score.")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise AlgorithmInputError("the tokenizer has no eos_token; set one or pass add_eos=False.")
        if not response_ids or response_ids[-1] != tokenizer.eos_token_id:
            response_ids.append(tokenizer.eos_token_id)
    input_ids = prompt_ids + response_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "response_mask": [0] * len(prompt_ids) + [1] * len(response_ids),
    }


def pad_right(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack examples from `tokenize_prompt_response` into right-padded [B, T] long tensors.

    input_ids is padded with `pad_token_id`; the masks are padded with 0.
    """
    if not examples:
        raise AlgorithmInputError("pad_right got no examples.")
    width = max(len(ex["input_ids"]) for ex in examples)
    batch: dict[str, torch.Tensor] = {}
    for key in examples[0]:
        pad = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.tensor([ex[key] + [pad] * (width - len(ex[key])) for ex in examples])
    return batch


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] rewards -> [N / G, G]: consecutive rows are the G samples of one prompt."""
    if rewards.dim() != 1:
        raise AlgorithmInputError(f"rewards must be 1-D [N]; got shape {tuple(rewards.shape)}.")
    if group_size < 2:
        raise AlgorithmInputError("group_size must be at least 2 (a group needs a baseline from other samples).")
    if rewards.numel() % group_size != 0:
        raise AlgorithmInputError(
            f"{rewards.numel()} rewards cannot be split into groups of {group_size}; "
            "pass all samples of each prompt, as consecutive rows."
        )
    if bool(torch.isnan(rewards).any()):
        raise AlgorithmInputError("rewards contain NaN; score every completion first.")
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages: z-score of each reward within its group of `group_size` consecutive rows.

        A_i = (r_i - mean_g) / (std_g + eps)    (scale_std=True)
        A_i =  r_i - mean_g                      (scale_std=False, Dr. GRPO)

    std_g is the unbiased (Bessel, divide by G - 1) standard deviation and eps is added to std,
    outside the square root, exactly as TRL 1.16 GRPOTrainer (scale_rewards="group", `nanstd`,
    `advantages / (std_rewards + 1e-4)`). A group whose rewards are all equal gets A = 0.
    rewards: [N] with N = num_prompts * group_size -> [N].
    """
    grouped = _grouped(rewards, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_std:
        centered = centered / (grouped.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centered.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out: baseline = mean reward of the *other* G - 1 samples of the prompt.

        A_i = r_i - (sum_j r_j - r_i) / (G - 1)  =  G / (G - 1) * (r_i - mean_g)

    Same as TRL 1.16 RLOOTrainer (before its optional `normalize_advantages`).
    rewards: [N] with N = num_prompts * group_size -> [N].
    """
    grouped = _grouped(rewards, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def batch_normalize(adv: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-4) -> torch.Tensor:
    """REINFORCE++-style batch normalization: A_hat = (A - mean) / (std + eps) over the whole batch.

    mean and unbiased std are taken over all entries (or the masked ones for per-token [B, T]
    advantages; masked-out entries come back as 0). This is TRL 1.16 RLOOTrainer's
    `normalize_advantages` formula. REINFORCE++-baseline = batch_normalize(r - group mean).
    adv: [N] or [B, T] -> same shape.
    """
    if mask is None:
        mask = torch.ones_like(adv)
    mean = masked_mean(adv, mask)
    std = masked_var(adv, mask, unbiased=True).sqrt()
    normalized = (adv - mean) / (std + eps)
    return torch.where(_float_mask(mask, adv).bool(), normalized, torch.zeros_like(normalized))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over response tokens.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}       (computed from the last token backwards)
        R_t     = A_t + V_t                              (value-function targets, "returns")

    Bootstrapping: the response ends at its last masked token, so V_{T_end+1} = 0 and
    A_{T_end+1} = 0 (the episode is over; no value after the final token).
    rewards, values, mask: [B, T]; each mask row is one contiguous block of 1s (the response,
    right-padded; leading prompt positions may be 0). Positions outside the mask are ignored.
    Returns (advantages, returns), [B, T] each, 0 outside the mask. The advantages are not
    whitened: apply `masked_whiten` to them if wanted (PPO usually does).
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    m = _float_mask(mask, values)
    block_starts = m[:, 0] + (m[:, 1:] > m[:, :-1]).sum(dim=1)
    if bool((block_starts > 1).any()):
        raise AlgorithmInputError(
            "gae needs one contiguous block of 1s per mask row (the response, e.g. 0 0 1 1 1 0); "
            "found a gap inside a response."
        )
    rewards = torch.where(m.bool(), rewards, torch.zeros_like(rewards))
    values = torch.where(m.bool(), values, torch.zeros_like(values))  # so V = 0 after the last token
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * m[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * m
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 estimator of KL(pi || pi_ref) per token: log pi(y) - log pi_ref(y), y ~ pi. [B, T] -> [B, T].

    Unbiased but high variance, and can be negative for single tokens.
    """
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per token (Schulman): with d = log pi_ref(y) - log pi(y),

        k3 = exp(d) - d - 1  >= 0.

    Unbiased for y ~ pi, always non-negative, low variance; TRL 1.16 GRPOTrainer's `per_token_kl`.
    [B, T] -> [B, T].
    """
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    d = ref_logp - logp
    return torch.exp(d) - d - 1


# ---------------------------------------------------------------------------------------------
# Policy-gradient loss
# ---------------------------------------------------------------------------------------------


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, norm: Norm = "token", max_len: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar. With L_bt the per-token loss, m the mask:

        "token":    sum_bt m L / sum_bt m                         (DAPO; TRL loss_type "bnpo"/"dapo")
        "sequence": 1/B sum_b [ sum_t m L / max(1, sum_t m) ]     (GRPO; TRL loss_type "grpo")
        "constant": sum_bt m L / (B * max_len)                    (Dr. GRPO; TRL "dr_grpo")

    "sequence" gives each sequence equal weight, so each token of a short sequence weighs more
    than a token of a long one; "token" weighs all tokens equally; "constant" divides by a
    fixed number (max_len = the generation budget), so no length bias enters through the norm.
    """
    _check_same_shape(per_token=per_token, mask=mask)
    m = _float_mask(mask, per_token)
    total = masked_sum(per_token, m)
    if norm == "token":
        return total / m.sum().clamp(min=1.0)
    if norm == "sequence":
        per_sequence = masked_sum(per_token, m, dim=1) / m.sum(dim=1).clamp(min=1.0)
        return per_sequence.mean()
    if norm == "constant":
        if max_len is None or max_len < 1:
            raise AlgorithmInputError('norm="constant" needs max_len (the max completion length, e.g. 256).')
        return masked_sum_over_constant(per_token, m, per_token.shape[0] * max_len)
    raise AlgorithmInputError(f'norm must be "token", "sequence" or "constant"; got {norm!r}.')


def _per_token_weights(weights: torch.Tensor, logp: torch.Tensor, name: str = "advantages") -> torch.Tensor:
    """[B] (one per sequence, broadcast over tokens) -> [B, 1]; [B, T] is kept as it is."""
    if weights.dim() == 1 and weights.shape[0] == logp.shape[0]:
        return weights.unsqueeze(1)
    if weights.shape != logp.shape:
        raise AlgorithmInputError(f"{name} must be [B] or [B, T] = {tuple(logp.shape)}; got {tuple(weights.shape)}.")
    return weights


def _clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float | None,
    clipped: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token PPO surrogate loss [B, T] and its clip statistics (see `policy_gradient_loss`)."""
    _check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    advantages = _per_token_weights(advantages, logp)
    if clip_high is None:
        clip_high = clip_low
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    if clipped:
        clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
        per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
    else:
        per_token = -ratio * advantages

    with torch.no_grad():
        low = ((ratio < 1 - clip_low) & (advantages < 0)).float()
        high = ((ratio > 1 + clip_high) & (advantages > 0)).float()
        m = _float_mask(mask, logp).bool()
        count = m.sum().clamp(min=1)
        stats = {
            "clip_frac_low": float(low[m].sum() / count),
            "clip_frac_high": float(high[m].sum() / count),
            "clip_frac": float(torch.maximum(low, high)[m].sum() / count),
            "approx_kl": float(((ratio - 1) - log_ratio)[m].sum() / count),
        }
    return per_token, stats


def policy_gradient_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    clipped: bool = True,
    norm: Norm = "token",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO/GRPO clipped surrogate loss (to minimize). With ratio rho_t = exp(logp_t - old_logp_t):

        clipped=True:  L_t = -min(rho_t A_t, clip(rho_t, 1 - clip_low, 1 + clip_high) A_t)
        clipped=False: L_t = -rho_t A_t   (vanilla policy gradient)

    The unclipped form has gradient -A_t rho_t grad logp_t; on-policy (old_logp = logp.detach(),
    rho = 1) that is exactly the REINFORCE gradient of -A_t logp_t. clip_high=None means
    clip_high = clip_low (symmetric; DAPO's "clip-higher" uses e.g. 0.28). L_t is then reduced
    with `aggregate_loss(L, mask, norm, max_len)`. `pg_loss_by_kind` selects this or REINFORCE by name.

    logp, old_logp, mask: [B, T]; advantages: [B] (one per sequence, broadcast) or [B, T].
    Returns (loss, stats) where stats (floats, over masked tokens) has
      clip_frac_low  = frac(rho < 1 - clip_low and A < 0), clip_frac_high = frac(rho > 1 + clip_high and A > 0),
      clip_frac = either (TRL's clip_ratio/low_mean, high_mean, region_mean), and
      approx_kl = mean((rho - 1) - log rho), the k3 estimate of KL(pi_old || pi).
    """
    per_token, stats = _clipped_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high, clipped)
    return aggregate_loss(per_token, mask, norm, max_len), stats


def pg_loss_by_kind(
    logp: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    kind: PGKind = "clipped",
    *,
    old_logp: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    norm: Norm = "token",
    max_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The course's path from policy gradient to PPO, one per-token loss per step, chosen by name:

        "reinforce":          L_t = -r log pi(y_t)     weights = raw rewards r (no baseline)
        "reinforce_baseline": L_t = -A log pi(y_t)     weights = advantages A, e.g. r - group mean
        "clipped":            L_t = -min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A),
                              rho_t = exp(logp_t - old_logp_t)  (PPO / GRPO, as `policy_gradient_loss`)

    The two REINFORCE losses are one formula; the name says what `weights` holds. They have no
    ratio, so the samples must come from the current policy. Their gradient -w grad log pi(y_t) is
    the score-function estimator: a baseline leaves its expectation unchanged and lowers its
    variance, and with the group mean as baseline a group whose rewards are all equal gives no
    gradient at all (raw rewards still push up every sampled response). "clipped" with
    old_logp=None is on-policy (old_logp = logp.detach(), rho = 1, nothing clipped): its value is
    -A instead of -A log pi, but its gradient equals "reinforce_baseline"'s.

    logp, mask: [B, T]; weights: [B] (one per sequence, broadcast over tokens) or [B, T].
    Returns (loss, per_token, stats): loss = aggregate_loss(per_token, mask, norm, max_len);
    per_token [B, T] is 0 outside the mask; stats has "weight_mean" (the token mean of the weights)
    and, for "clipped", the clip fractions and approx_kl of `policy_gradient_loss`.
    """
    if kind not in PG_KINDS:
        raise AlgorithmInputError(f"kind must be one of {PG_KINDS}; got {kind!r}.")
    _check_same_shape(logp=logp, mask=mask)
    w = _per_token_weights(weights, logp, "weights")
    if kind == "clipped":
        old = logp.detach() if old_logp is None else old_logp
        per_token, stats = _clipped_surrogate(logp, old, weights, mask, clip_low, clip_high, clipped=True)
    else:
        if old_logp is not None:
            raise AlgorithmInputError(f'old_logp is only used by kind="clipped"; {kind!r} has no ratio.')
        per_token, stats = -w * logp, {}
    per_token = torch.where(_float_mask(mask, logp).bool(), per_token, torch.zeros_like(per_token))
    stats["weight_mean"] = float(masked_sum(w.detach().expand_as(logp), mask) / max(1, int(mask.sum())))
    return aggregate_loss(per_token, mask, norm, max_len), per_token, stats


# ---------------------------------------------------------------------------------------------
# Preference losses
# ---------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses, as TRL 1.16 DPOTrainer computes them.

    Inputs are sequence log-probs (sum over response tokens), [B] each. With the log-ratios
    h_w = logp_w - ref_logp_w (chosen), h_l = logp_l - ref_logp_l (rejected), delta = h_w - h_l:

        "sigmoid": -log sigmoid(beta * delta)                                   (DPO)
        "hinge":   max(0, 1 - beta * delta)                                     (SLiC)
        "ipo":     (delta' - 1 / (2 beta))^2, delta' = h_w / n_w - h_l / n_l    (IPO; beta = tau)
        "robust":  [-(1 - eps) log sigmoid(beta delta) + eps log sigmoid(-beta delta)] / (1 - 2 eps)

    eps = label_smoothing (the assumed probability that a label is flipped), used only by
    "robust", like TRL 1.16 (its "sigmoid" ignores label_smoothing; here it is an error).
    For "ipo", TRL divides each log-ratio by its completion length n (token count): pass
    chosen_lengths / rejected_lengths [B] to get that; without them delta' = delta (the paper's
    unnormalized form, or pass length-averaged log-probs). Reference-free variant: pass zeros
    as the reference log-probs.
    Returns (losses [B], chosen_rewards [B], rejected_rewards [B]); the implicit rewards
    beta * h_w and beta * h_l are detached (for logging, like TRL's rewards/chosen).
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    if beta <= 0:
        raise AlgorithmInputError(f"beta must be positive; got {beta}.")
    if label_smoothing != 0.0 and loss_type != "robust":
        raise AlgorithmInputError(
            'label_smoothing is only used by loss_type="robust" (as in TRL 1.16); set it to 0.'
        )
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios

    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if (chosen_lengths is None) != (rejected_lengths is None):
            raise AlgorithmInputError("pass both chosen_lengths and rejected_lengths, or neither.")
        if chosen_lengths is not None and rejected_lengths is not None:
            chosen_avg = chosen_logratios / chosen_lengths.clamp(min=1)
            rejected_avg = rejected_logratios / rejected_lengths.clamp(min=1)
            delta = chosen_avg - rejected_avg
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise AlgorithmInputError(f"robust DPO needs 0 <= label_smoothing < 0.5; got {label_smoothing}.")
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        losses = (clean - flipped) / (1 - 2 * label_smoothing)
    else:
        raise AlgorithmInputError(f'loss_type must be "sigmoid", "ipo", "hinge" or "robust"; got {loss_type!r}.')

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Reward-model loss: mean over pairs of -log sigmoid(s_w - s_l - margin), as TRL 1.16 RewardTrainer.

    chosen_scores, rejected_scores: [B] scalar rewards; margin: optional [B] (TRL's "margin"
    dataset column; the chosen score must beat the rejected one by at least this much).
    center_rewards_coefficient c adds c * mean((s_w + s_l)^2), which pushes rewards toward
    zero mean (TRL's `center_rewards_coefficient`). Returns a scalar.
    """
    _check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    diff = chosen_scores - rejected_scores
    if margin is not None:
        _check_same_shape(chosen_scores=chosen_scores, margin=margin)
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((chosen_scores + rejected_scores) ** 2)
    return loss


# ---------------------------------------------------------------------------------------------
# Microbatch train steps (gradient accumulation)
# ---------------------------------------------------------------------------------------------


def _check_accum_steps(grad_accum_steps: int) -> None:
    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise AlgorithmInputError(f"grad_accum_steps must be a whole number >= 1; got {grad_accum_steps!r}.")


def sft_microbatch_step(
    model: Any, batch: dict[str, torch.Tensor], grad_accum_steps: int = 1, num_items_in_batch: int | None = None
) -> tuple[float, dict[str, float]]:
    """One SFT microbatch: log-probs -> token-mean NLL on the response -> / grad_accum_steps -> backward.

        loss = -sum_bt m_bt log pi(y_bt | y_<bt) / N        N = sum_bt m_bt, this microbatch's response tokens
        (loss / grad_accum_steps).backward()                 grads add up in p.grad; no optimizer step, no zero_grad

    batch: "input_ids", "attention_mask", "response_mask", [B, T] each (`pad_right` of
    `tokenize_prompt_response`). k calls with grad_accum_steps=k give the .grad of one call on all
    k microbatches together only if every microbatch has the same N: a mean of k token means is
    not the token mean of the union. transformers' Trainer (with TRL 1.16's SFTTrainer) avoids that:
    it counts the loss tokens of the whole accumulation window, `num_items_in_batch`, divides each
    microbatch's summed NLL by it and does not divide by the accumulation steps. Pass
    num_items_in_batch to get that (exact for any N): loss = -sum_bt m_bt log pi / num_items_in_batch.
    grad_accum_steps is then not applied: the window's token count already is the divisor.
    Returns (loss before the division by grad_accum_steps, {"num_tokens": N}).
    """
    _check_accum_steps(grad_accum_steps)
    mask = batch["response_mask"]
    logp = response_logprobs(model, batch["input_ids"], batch["attention_mask"], mask)
    if num_items_in_batch is None:
        loss = -masked_mean(logp, mask)                      # token mean over this microbatch
        (loss / grad_accum_steps).backward()
    else:
        loss = -masked_sum_over_constant(logp, mask, num_items_in_batch)   # already a share of the window
        loss.backward()
    return float(loss.detach()), {"num_tokens": float(mask.sum())}


def grpo_microbatch_step(
    model: Any,
    batch: dict[str, torch.Tensor],
    advantages: torch.Tensor,
    grad_accum_steps: int = 1,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    norm: Norm = "sequence",
    max_len: int | None = None,
) -> tuple[float, dict[str, float]]:
    """One GRPO microbatch: log-probs -> clipped loss (+ beta KL) -> / grad_accum_steps -> backward.

        rho_t = exp(logp_t - old_logp_t)                      old_logp=None: on-policy, old = logp.detach()
        L_t   = -min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A) + beta rho_t k3_t
        loss  = aggregate_loss(L, response_mask, norm, max_len);  (loss / grad_accum_steps).backward()

    k3_t = kl_k3(logp, ref_logp) is weighed by rho_t like TRL 1.16's default
    use_bias_correction_kl=True (same value on-policy, different gradient). norm "sequence",
    "token", "constant" = TRL loss_type "grpo", "bnpo", "dr_grpo", which divide by the accumulation
    steps the same way. k calls with grad_accum_steps=k then give the .grad of one call on the
    union if the microbatches hold equal numbers of sequences ("sequence", "constant"), and for
    "token" only if they also hold equal numbers of response tokens (TRL's "dapo" divides by the
    token count of the whole window instead).
    batch: "input_ids", "attention_mask", "response_mask" [B, T]; advantages: [B] or [B, T];
    old_logp, ref_logp: [B, T] aligned with the inputs like `response_logprobs` (0 off the response).
    Returns (loss before the division by grad_accum_steps, stats of `pg_loss_by_kind`, plus "kl" if beta).
    """
    _check_accum_steps(grad_accum_steps)
    mask = batch["response_mask"]
    logp = response_logprobs(model, batch["input_ids"], batch["attention_mask"], mask)
    old = logp.detach() if old_logp is None else old_logp
    loss, _, stats = pg_loss_by_kind(logp, advantages, mask, "clipped", old_logp=old, clip_low=clip_low,
                                     clip_high=clip_high, norm=norm, max_len=max_len)
    if beta != 0.0:
        if ref_logp is None:
            raise AlgorithmInputError("beta != 0 needs ref_logp, the reference model's log-probs.")
        k3 = kl_k3(logp, ref_logp)
        loss = loss + beta * aggregate_loss(torch.exp(logp - old) * k3, mask, norm, max_len)
        stats["kl"] = float(masked_mean(k3.detach(), mask))
    (loss / grad_accum_steps).backward()
    return float(loss.detach()), stats
