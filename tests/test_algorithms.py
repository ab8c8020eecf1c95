"""Tests for labkit.algorithms: hand-worked numbers, then numerical checks against TRL 1.16.

The TRL checks call TRL's own code wherever it can run without a full trainer: the functions in
trl.trainer.utils directly, and the loss methods of GRPOTrainer / DPOTrainer / RewardTrainer
as unbound functions on a stand-in `self` (see `_FakeAccelerator` and the `*_trainer_self`
helpers). Only the advantage formulas, which sit in the middle of TRL's generation method, are
reproduced line for line (file and line cited at each).
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.reward_trainer import RewardTrainer
from trl.trainer.sft_trainer import SFTTrainer
from trl.trainer.utils import add_fused_lm_head, entropy_from_logits, nanstd, selective_log_softmax

from labkit.algorithms import (
    AlgorithmInputError,
    aggregate_loss,
    batch_normalize,
    bradley_terry_loss,
    dpo_loss,
    gae,
    group_advantages,
    kl_k1,
    kl_k3,
    grpo_microbatch_step,
    masked_mean,
    masked_sum,
    masked_sum_over_constant,
    masked_var,
    masked_whiten,
    pad_right,
    pg_loss_by_kind,
    policy_gradient_loss,
    response_logprobs,
    rloo_advantages,
    sft_microbatch_step,
    shift_for_causal_lm,
    shift_mask,
    token_entropy,
    token_logprobs,
    tokenize_prompt_response,
)

LN2 = math.log(2)


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, float("nan")]])
M = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_masked_sum_and_mean_by_hand():
    close(masked_sum(X, M), 10.0)  # 1 + 2 + 3 + 4; the 100 and the NaN are masked out
    close(masked_mean(X, M), 2.5)  # 10 / 4
    close(masked_sum(X, M, dim=1), [6.0, 4.0])
    close(masked_mean(X, M, dim=1), [2.0, 4.0])  # 6 / 3, 4 / 1
    close(masked_mean(X, M.bool()), 2.5)  # bool masks work too


def test_masked_mean_rejects_empty_mask_and_non_binary_mask():
    with pytest.raises(AlgorithmInputError, match="all zeros"):
        masked_mean(X, torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=1)
    with pytest.raises(AlgorithmInputError, match="0/1"):
        masked_mean(X, M * 2)
    with pytest.raises(AlgorithmInputError, match="same shape"):
        masked_sum(X, M[:, :2])


def test_masked_mean_over_each_dim_and_masked_sum_over_constant_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 7.0, 9.0]])
    m = torch.tensor([[1, 0, 1], [1, 1, 0]])
    close(masked_mean(x, m, dim=None), 16 / 4)  # 1 + 3 + 5 + 7 over 4 kept entries
    close(masked_mean(x, m, dim=1), [4 / 2, 12 / 2])  # per row: (1 + 3) / 2, (5 + 7) / 2
    close(masked_mean(x, m, dim=0), [6 / 2, 7 / 1, 3 / 1])  # per column: (1 + 5) / 2, 7 / 1, 3 / 1
    # the divisor is fixed: it does not change with how many entries the mask keeps
    close(masked_sum_over_constant(x, m, 8.0), 16 / 8)
    close(masked_sum_over_constant(x, m, 4.0, dim=1), [4 / 4, 12 / 4])
    close(masked_sum_over_constant(x, m, 2.0, dim=0), [6 / 2, 7 / 2, 3 / 2])
    with pytest.raises(AlgorithmInputError, match="positive constant"):
        masked_sum_over_constant(x, m, 0)
    with pytest.raises(AlgorithmInputError, match="positive constant"):
        masked_sum_over_constant(x, m, -3.0)


def test_masked_var_and_whiten_by_hand():
    # masked entries 1, 2, 3, 4: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5
    close(masked_var(X, M, unbiased=False), 5 / 4)
    close(masked_var(X, M), 5 / 3)  # unbiased: divide by n - 1 = 3 (TRL's PPO convention)
    # whiten: (x - 2.5) / sqrt(5/3) = (x - 2.5) * 0.7745967
    expected = torch.tensor([[-1.1618950, -0.3872983, 0.3872983], [1.1618950, 0.0, 0.0]])
    close(masked_whiten(X, M), expected)
    # shift_mean=False keeps the mean: add 2.5 back on the masked entries
    close(masked_whiten(X, M, shift_mean=False), (expected + 2.5) * M)


def test_masked_whiten_matches_unbiased_torch_var_convention():
    # TRL's (pre-1.0) PPO masked_whiten: (x - mean) * rsqrt(var + 1e-8) with Bessel-corrected var.
    # TRL 1.16 no longer ships it, so check the same convention with torch.var(unbiased=True).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g) * 3 + 1
    mask = torch.rand(4, 7, generator=g) > 0.3
    kept = x[mask]
    reference = (kept - kept.mean()) * torch.rsqrt(kept.var(unbiased=True) + 1e-8)
    close(masked_whiten(x, mask)[mask], reference)
    assert bool((masked_whiten(x, mask)[~mask] == 0).all())
    single = torch.zeros_like(mask)
    single[0, 0] = True  # one masked entry: the unbiased variance is undefined
    with pytest.raises(AlgorithmInputError, match="at least 2"):
        masked_whiten(x, single)


# ---------------------------------------------------------------------------------------------
# Token log-probs, entropy, shift
# ---------------------------------------------------------------------------------------------


def test_token_logprobs_and_entropy_by_hand():
    # logits [0, ln 2] -> p = [1/3, 2/3]; logits all equal over 4 classes -> p = 1/4 each
    logits = torch.tensor([[[0.0, LN2, -1e9, -1e9], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 3]])
    close(token_logprobs(logits, labels), [[math.log(2 / 3), -math.log(4)]])  # [-0.405465, -1.386294]
    # H = 1/3 ln 3 + 2/3 ln 1.5 = 0.366204 + 0.270310 = 0.636514; uniform over 4: ln 4
    close(token_entropy(logits), [[0.636514, math.log(4)]])


def test_token_logprobs_rejects_ignore_index():
    with pytest.raises(AlgorithmInputError, match="-100"):
        token_logprobs(torch.zeros(1, 2, 5), torch.tensor([[1, -100]]))


def test_token_logprobs_and_entropy_match_trl_utils():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    close(token_logprobs(logits, labels), selective_log_softmax(logits, labels))
    close(token_entropy(logits), entropy_from_logits(logits))


class BigramModel:
    """A stand-in causal LM: from token x it puts logit 2 on token (x + 1) % V and 0 elsewhere."""

    vocab_size = 4

    def __call__(self, input_ids, attention_mask):
        next_token = (input_ids + 1) % self.vocab_size
        return SimpleNamespace(logits=2.0 * torch.nn.functional.one_hot(next_token, self.vocab_size).float())


def test_shift_for_causal_lm_pairs_position_t_logits_with_token_t_plus_1():
    logits = torch.arange(12.0).view(1, 3, 4)
    ids = torch.tensor([[7, 8, 9]])
    shifted_logits, targets = shift_for_causal_lm(logits, ids)
    assert shifted_logits.tolist() == logits[:, :2].tolist()
    assert targets.tolist() == [[8, 9]]


def test_response_logprobs_by_hand_with_bigram_model():
    # P(hit) = e^2 / (e^2 + 3) = 7.389 / 10.389 -> log = -0.340753; P(miss) = 1 / 10.389 -> -2.340753
    hit, miss = -0.3407530, -2.3407530
    input_ids = torch.tensor([[0, 1, 2, 0], [3, 0, 1, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # row 2 is right-padded
    response_mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    out = response_logprobs(BigramModel(), input_ids, attention_mask, response_mask)
    # row 1: token 2 after 1 is a hit; token 0 after 2 is a miss (the model expects 3)
    # row 2: token 0 after 3 is a hit ((3 + 1) % 4 = 0); token 1 after 0 is a hit
    close(out, [[0.0, 0.0, hit, miss], [0.0, hit, hit, 0.0]])


def test_response_logprobs_rejects_response_on_first_token():
    ids = torch.tensor([[1, 2]])
    with pytest.raises(AlgorithmInputError, match="non-empty prompt"):
        response_logprobs(BigramModel(), ids, torch.ones_like(ids), torch.tensor([[1, 1]]))


def test_response_logprobs_match_prefix_forward_passes_of_a_real_model():
    # Independent check of the shift and of right padding: log p(token t | tokens < t) from a
    # separate forward pass over the unpadded prefix only, for every response token.
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval()
    examples = [
        {"input_ids": [3, 5, 7, 9, 2], "attention_mask": [1] * 5, "response_mask": [0, 0, 1, 1, 1]},
        {"input_ids": [4, 6, 8], "attention_mask": [1] * 3, "response_mask": [0, 1, 1]},
    ]
    batch = pad_right(examples, pad_token_id=0)
    assert batch["input_ids"].tolist()[1] == [4, 6, 8, 0, 0]
    with torch.no_grad():
        out = response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        for b, ex in enumerate(examples):
            for t, is_response in enumerate(ex["response_mask"]):
                if not is_response:
                    assert out[b, t] == 0
                    continue
                prefix = torch.tensor([ex["input_ids"][:t]])
                last_logits = model(input_ids=prefix).logits[0, -1]
                expected = torch.log_softmax(last_logits, -1)[ex["input_ids"][t]]
                close(out[b, t], expected, atol=1e-4)


def test_shift_mask_pairs_the_mask_with_the_shifted_labels():
    # The two alignments of one batch: with the inputs ([B, T], response_logprobs) and with the
    # shifted labels ([B, T-1], token_logprobs of shift_for_causal_lm). Same tokens, same sums.
    model = _tiny_qwen3()
    batch = pad_right([{"input_ids": [3, 5, 7, 9, 2], "attention_mask": [1] * 5, "response_mask": [0, 0, 1, 1, 1]},
                       {"input_ids": [4, 6, 8], "attention_mask": [1] * 3, "response_mask": [0, 1, 1]}], 0)
    ids, attention, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
        shifted = token_logprobs(*shift_for_causal_lm(logits, ids))
        aligned = response_logprobs(model, ids, attention, mask)
    assert shift_mask(mask).tolist() == [[0, 1, 1, 1], [1, 1, 0, 0]]
    assert shifted.shape == shift_mask(mask).shape == (2, 4) and aligned.shape == mask.shape == (2, 5)
    close(masked_sum(shifted, shift_mask(mask), dim=1), masked_sum(aligned, mask, dim=1), atol=1e-6)
    close(masked_sum(shifted, shift_mask(mask)), masked_sum(aligned, mask), atol=1e-6)
    with pytest.raises(AlgorithmInputError, match="first token"):
        shift_mask(torch.tensor([[1, 1, 0]]))


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------


def boundary_merging_tokenizer() -> PreTrainedTokenizerFast:
    """A character BPE with one merge, "=" + "3" -> "=3", that fires across a prompt/response boundary."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    for ch in "0123456789+=? ":
        vocab[ch] = len(vocab)
    vocab["=3"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("=", "3")]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def test_tokenize_prompt_response_keeps_the_boundary():
    tokenizer = boundary_merging_tokenizer()
    # Tokenizing the concatenation fuses "=" and "3": no token boundary where the response starts.
    fused = tokenizer("1+2=3", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(fused) == ["1", "+", "2", "=3"]

    out = tokenize_prompt_response(tokenizer, "1+2=", "3")
    assert tokenizer.convert_ids_to_tokens(out["input_ids"]) == ["1", "+", "2", "=", "3", "<eos>"]
    assert out["response_mask"] == [0, 0, 0, 0, 1, 1]
    assert out["attention_mask"] == [1] * 6
    response_ids = [i for i, m in zip(out["input_ids"], out["response_mask"]) if m]
    assert tokenizer.convert_ids_to_tokens(response_ids) == ["3", "<eos>"]

    no_eos = tokenize_prompt_response(tokenizer, "1+2=", "3", add_eos=False)
    assert no_eos["response_mask"] == [0, 0, 0, 0, 1]
    with pytest.raises(AlgorithmInputError, match="prompt is empty"):
        tokenize_prompt_response(tokenizer, "", "3")


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.5773503
    #          A = +-0.5 / (0.5773503 + 1e-4) = +-0.8658754
    # group 2: all equal -> std 0 -> A = 0 / (0 + 1e-4) = 0
    a = 0.8658754
    close(group_advantages(rewards, 4), [a, -a, -a, a, 0, 0, 0, 0])
    close(group_advantages(rewards, 4, scale_std=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_rloo_and_batch_normalize_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # baseline of a 1: (1 + 0 + 0) / 3 = 1/3 -> A = 2/3; of a 0: (1 + 0 + 1) / 3 = 2/3 -> A = -2/3
    close(rloo_advantages(rewards, 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # [1, 2, 3, 4]: mean 2.5, unbiased std sqrt(5/3) = 1.2909944; (x - 2.5) / (1.2909944 + 1e-4)
    close(batch_normalize(torch.tensor([1.0, 2.0, 3.0, 4.0])), [-1.1618050, -0.3872683, 0.3872683, 1.1618050])


def test_advantages_reject_bad_groups():
    with pytest.raises(AlgorithmInputError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(AlgorithmInputError, match="at least 2"):
        rloo_advantages(torch.zeros(4), 1)


def test_group_advantages_match_trl_grpo_formula():
    # TRL 1.16 trl/trainer/grpo_trainer.py:2765-2787 (scale_rewards="group"), with TRL's own nanstd:
    #   mean = nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
    #   std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    #   advantages = (rewards - mean) / (std + 1e-4)
    g = torch.Generator().manual_seed(2)
    rewards, G = torch.randn(24, generator=g), 6
    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
    std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    close(group_advantages(rewards, G), (rewards - mean) / (std + 1e-4))
    close(group_advantages(rewards, G, scale_std=False), rewards - mean)  # scale_rewards="none"


def test_rloo_and_batch_normalize_match_trl_rloo_formula():
    # TRL 1.16 trl/trainer/rloo_trainer.py:1685-1696:
    #   baselines = (grouped_sum - grouped_rewards) / (count - 1); advantages = rewards - baselines
    #   normalize_advantages: (advantages - nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    g = torch.Generator().manual_seed(3)
    rewards, G = torch.randn(20, generator=g), 5
    grouped = rewards.view(-1, G)
    trl_adv = rewards - ((grouped.sum(1, keepdim=True) - grouped) / (G - 1)).view(-1)
    close(rloo_advantages(rewards, G), trl_adv)
    close(batch_normalize(trl_adv), (trl_adv - torch.nanmean(trl_adv)) / (nanstd(trl_adv) + 1e-4))


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 2: 2 tokens, the 5.0 / 9.0 are padding
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 1 (V after the last token = 0):
    #   t=2: delta = 1 + 0 - 0.7 = 0.3;          A2 = 0.3
    #   t=1: delta = 0 + 0.7 - 0.6 = 0.1;        A1 = 0.1 + 0.95 * 0.3 = 0.385
    #   t=0: delta = 0 + 0.6 - 0.5 = 0.1;        A0 = 0.1 + 0.95 * 0.385 = 0.46575
    #   returns = A + V = 0.96575, 0.985, 1.0
    # row 2: t=1: delta = 2 + 0 - 0.5 = 1.5; t=0: delta = 0 + 0.5 - 1 = -0.5, A0 = -0.5 + 0.95 * 1.5 = 0.925
    close(adv, [[0.46575, 0.385, 0.3], [0.925, 1.5, 0.0]])
    close(ret, [[0.96575, 0.985, 1.0], [1.925, 2.0, 0.0]])
    # gamma = 0.9, lam = 0.5 on rewards [0, 1], values [0.2, 0.4]:
    #   t=1: delta = 1 + 0 - 0.4 = 0.6;           A1 = 0.6
    #   t=0: delta = 0 + 0.9 * 0.4 - 0.2 = 0.16;  A0 = 0.16 + 0.9 * 0.5 * 0.6 = 0.43
    adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.4]]), torch.ones(1, 2), gamma=0.9, lam=0.5)
    close(adv, [[0.43, 0.6]])
    close(ret, [[0.63, 1.0]])


def test_gae_limits_monte_carlo_and_td():
    g = torch.Generator().manual_seed(4)
    rewards, values = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])  # a prompt position, then the response
    m = mask.float()
    # lam = 1, gamma = 1: returns are the reward-to-go sum_{k >= t} r_k (Monte Carlo)
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = (rewards * m).flip(1).cumsum(1).flip(1) * m
    close(ret, reward_to_go)
    # lam = 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 after the response
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_v = torch.cat([(values * m)[:, 1:], torch.zeros(2, 1)], dim=1)
    close(adv, (rewards + 0.9 * next_v - values) * m)
    with pytest.raises(AlgorithmInputError, match="contiguous"):
        gae(rewards, values, torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1]]))


# ---------------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5), math.log(0.3)]), torch.tensor([math.log(0.25), math.log(0.3)])
    close(kl_k1(logp, ref), [LN2, 0.0])  # ln 0.5 - ln 0.25 = ln 2
    # d = ln 0.25 - ln 0.5 = -ln 2: k3 = e^{-ln 2} + ln 2 - 1 = 0.5 + 0.693147 - 1 = 0.193147; equal probs -> 0
    close(kl_k3(logp, ref), [0.5 + LN2 - 1, 0.0])
    assert bool((kl_k3(torch.randn(50), torch.randn(50)) >= 0).all())


# ---------------------------------------------------------------------------------------------
# Policy-gradient loss
# ---------------------------------------------------------------------------------------------


def _logp_with_ratios(ratios):
    old = torch.full((1, len(ratios)), -1.0)
    logp = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    return logp, old


def test_clipped_loss_values_gradients_and_stats_by_hand():
    logp, old = _logp_with_ratios([1.5, 0.5, 0.5, 1.5])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_gradient_loss(logp, old, adv, mask, clip_low=0.2)
    # t0: rho 1.5, A+1: -min(1.5, 1.2) = -1.2   clipped   -> no gradient
    # t1: rho 0.5, A+1: -min(0.5, 0.8) = -0.5   unclipped -> dL/dlogp = -A rho / 4 = -0.125
    # t2: rho 0.5, A-1: -min(-0.5, -0.8) = 0.8  clipped   -> no gradient
    # t3: rho 1.5, A-1: -min(-1.5, -1.2) = 1.5  unclipped -> dL/dlogp = -A rho / 4 = +0.375
    # token mean: (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15
    close(loss, 0.15)
    (grad,) = torch.autograd.grad(loss, logp)
    close(grad, [[0.0, -0.125, 0.0, 0.375]])
    # where not clipped, the ascent direction -grad has the sign of the advantage
    assert torch.equal(torch.sign(-grad[0, [1, 3]]), adv[0, [1, 3]])
    # clip fractions: low = (rho < 0.8 and A < 0) = t2; high = (rho > 1.2 and A > 0) = t0
    assert stats["clip_frac_low"] == pytest.approx(0.25)
    assert stats["clip_frac_high"] == pytest.approx(0.25)
    assert stats["clip_frac"] == pytest.approx(0.5)
    # approx KL = mean((rho - 1) - ln rho): 1.5 -> 0.094535, 0.5 -> 0.193147; mean = 0.143841
    assert stats["approx_kl"] == pytest.approx(0.143841, abs=1e-5)


def test_asymmetric_clip_and_unclipped_loss_by_hand():
    logp, old = _logp_with_ratios([1.5, 0.5, 0.5, 1.5])
    adv, mask = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(1, 4), torch.ones(1, 4)
    # clip_high = 0.6: t0 (rho 1.5 < 1.6) is no longer clipped: -1.5 instead of -1.2
    loss, stats = policy_gradient_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.6)
    close(loss, (-1.5 - 0.5 + 0.8 + 1.5) / 4)
    assert stats["clip_frac_high"] == 0.0
    # clipped=False: L = -rho A = [-1.5, -0.5, 0.5, 1.5], mean 0; gradient -A rho everywhere
    loss, _ = policy_gradient_loss(logp, old, adv, mask, clipped=False)
    close(loss, 0.0)
    (grad,) = torch.autograd.grad(loss, logp)
    close(grad, [[-1.5 / 4, -0.5 / 4, 0.5 / 4, 1.5 / 4]])


def test_three_normalizations_on_sequences_of_different_length():
    # sequence 1 has 1 token with A = 2, sequence 2 has 3 tokens with A = 1; on-policy (rho = 1),
    # unclipped, so each token's loss is -A: [-2], [-1, -1, -1].
    logp = torch.zeros(2, 4, requires_grad=True)
    old = torch.zeros(2, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    adv = torch.tensor([2.0, 1.0])  # per-sequence advantages, broadcast over tokens
    expected = {
        # token:    (-2 - 1 - 1 - 1) / 4 tokens                  = -1.25; weight per token 1/4
        "token": (-1.25, [[-0.5, 0, 0, 0], [-0.25, -0.25, -0.25, 0]]),
        # sequence: (-2/1 + -3/3) / 2                            = -1.5;  weights 1/2 vs 1/6
        "sequence": (-1.5, [[-1.0, 0, 0, 0], [-1 / 6, -1 / 6, -1 / 6, 0]]),
        # constant: -5 / (B * max_len) = -5 / (2 * 4)            = -0.625; weight 1/8 each
        "constant": (-0.625, [[-0.25, 0, 0, 0], [-0.125, -0.125, -0.125, 0]]),
    }
    for norm, (value, grad_expected) in expected.items():
        loss, _ = policy_gradient_loss(logp, old, adv, mask, clipped=False, norm=norm, max_len=4)
        close(loss, value)
        (grad,) = torch.autograd.grad(loss, logp)
        close(grad, grad_expected)
    # "sequence" weighs a token of the short sequence 3x more than one of the long sequence
    loss, _ = policy_gradient_loss(logp, old, torch.ones(2), mask, clipped=False, norm="sequence")
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 0] / grad[1, 0] == pytest.approx(3.0)
    with pytest.raises(AlgorithmInputError, match="max_len"):
        policy_gradient_loss(logp, old, adv, mask, norm="constant")


def test_pg_loss_three_kinds_by_hand():
    # 2 sequences: tokens [-1, -2] and [-0.5] (log-probs; 0 on the padding), token-mean norm (3 tokens)
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards = torch.tensor([1.0, 3.0])
    adv = rewards - rewards.mean()  # baseline = mean reward 2: A = [-1, 1]
    # reinforce: L = -r logp = [1, 2], [1.5]; mean 4.5 / 3 = 1.5; dL/dlogp = -r / 3
    loss, per_token, stats = pg_loss_by_kind(logp, rewards, mask, "reinforce")
    close(loss, 1.5)
    close(per_token, [[1.0, 2.0, 0.0], [1.5, 0.0, 0.0]])
    close(torch.autograd.grad(loss, logp)[0], [[-1 / 3, -1 / 3, 0.0], [-1.0, 0.0, 0.0]])
    assert stats["weight_mean"] == pytest.approx(5 / 3)  # token mean of r: (1 + 1 + 3) / 3
    # reinforce_baseline: L = -A logp = [-1, -2], [0.5]; mean -2.5 / 3; dL/dlogp = -A / 3
    loss, per_token, stats = pg_loss_by_kind(logp, adv, mask, "reinforce_baseline")
    close(loss, -2.5 / 3)
    close(per_token, [[-1.0, -2.0, 0.0], [0.5, 0.0, 0.0]])
    g_baseline = torch.autograd.grad(loss, logp)[0]
    close(g_baseline, [[1 / 3, 1 / 3, 0.0], [-1 / 3, 0.0, 0.0]])
    # clipped, on-policy (rho = 1): L = -A = [1, 1], [-1]; mean 1/3: another value, the same gradient
    loss, per_token, stats = pg_loss_by_kind(logp, adv, mask, "clipped")
    close(loss, 1 / 3)
    close(per_token, [[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    close(torch.autograd.grad(loss, logp)[0], g_baseline)
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == 0.0
    # all rewards equal: raw rewards still push every token up, the baseline gives no gradient
    equal = torch.tensor([2.0, 2.0])
    g_raw = torch.autograd.grad(pg_loss_by_kind(logp, equal, mask, "reinforce")[0], logp)[0]
    g_zero = torch.autograd.grad(pg_loss_by_kind(logp, equal - equal.mean(), mask, "reinforce_baseline")[0], logp)[0]
    close(g_raw, [[-2 / 3, -2 / 3, 0.0], [-2 / 3, 0.0, 0.0]])
    close(g_zero, torch.zeros(2, 3))


def test_pg_loss_reinforce_gradient_equals_on_policy_clipped_gradient():
    g = torch.Generator().manual_seed(8)
    B, T = 4, 6
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0]])
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    for adv in (torch.randn(B, generator=g), torch.randn(B, T, generator=g)):  # per sequence or per token
        for norm in ("token", "sequence", "constant"):
            kw = dict(norm=norm, max_len=T)
            (g_reinforce,) = torch.autograd.grad(pg_loss_by_kind(logp, adv, mask, "reinforce", **kw)[0], logp)
            (g_baseline,) = torch.autograd.grad(pg_loss_by_kind(logp, adv, mask, "reinforce_baseline", **kw)[0], logp)
            (g_clipped,) = torch.autograd.grad(pg_loss_by_kind(logp, adv, mask, "clipped", **kw)[0], logp)
            explicit, _, stats = pg_loss_by_kind(logp, adv, mask, "clipped", old_logp=logp.detach(), clip_low=0.1, **kw)
            (g_explicit,) = torch.autograd.grad(explicit, logp)
            close(g_baseline, g_reinforce, atol=0)
            close(g_clipped, g_reinforce, atol=1e-7)
            close(g_explicit, g_reinforce, atol=1e-7)
            assert stats["clip_frac"] == 0.0
    # off-policy, "clipped" is policy_gradient_loss itself
    old = logp.detach() + torch.randn(B, T, generator=g) * 0.3
    ours, per_token, stats = pg_loss_by_kind(logp, adv, mask, "clipped", old_logp=old, clip_low=0.2, clip_high=0.28)
    reference, reference_stats = policy_gradient_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    close(ours, reference.detach(), atol=0)
    close(aggregate_loss(per_token, mask), reference.detach(), atol=1e-7)
    assert stats["clip_frac"] > 0 and {k: stats[k] for k in reference_stats} == reference_stats


def test_pg_loss_accepts_the_three_names_only():
    logp, mask, w = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([1.0, -1.0])
    for kind in ("reinforce", "reinforce_baseline", "clipped"):
        loss, per_token, _ = pg_loss_by_kind(logp, w, mask, kind)
        assert loss.shape == () and per_token.shape == (2, 3)
    with pytest.raises(AlgorithmInputError, match="kind must be one of"):
        pg_loss_by_kind(logp, w, mask, "ppo")
    with pytest.raises(AlgorithmInputError, match="no ratio"):
        pg_loss_by_kind(logp, w, mask, "reinforce", old_logp=logp)
    with pytest.raises(AlgorithmInputError, match="weights must be"):
        pg_loss_by_kind(logp, torch.ones(3), mask, "reinforce")


class _FakeAccelerator:
    """Single-process stand-in for accelerate.Accelerator: every collective is the identity."""

    device = torch.device("cpu")
    num_processes = 1
    parallelism_config = None
    sync_gradients = True

    def autocast(self):
        return nullcontext()

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor

    def gather_for_metrics(self, tensor):
        return tensor


def _grpo_trainer_self(loss_type, beta, logp, max_completion_length):
    """The attributes GRPOTrainer._compute_loss (TRL 1.16) reads, with the model forward replaced."""
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)}, accelerator=_FakeAccelerator(),
    )


@pytest.mark.parametrize(
    ("loss_type", "norm"), [("grpo", "sequence"), ("bnpo", "token"), ("dapo", "token"), ("dr_grpo", "constant")]
)
def test_policy_loss_and_k3_match_trl_grpo_compute_loss(loss_type, norm):
    # Calls TRL's GRPOTrainer._compute_loss itself (trl/trainer/grpo_trainer.py:3020) on a stand-in self.
    g = torch.Generator().manual_seed(5)
    B, T, max_len = 4, 6, 8
    old = -torch.rand(B, T, generator=g) * 3
    logp = (old + torch.randn(B, T, generator=g) * 0.3).requires_grad_(True)  # ratios on both sides of the clip
    ref = old + torch.randn(B, T, generator=g) * 0.2
    adv = torch.randn(B, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    inputs = {
        "prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    for beta in (0.0, 0.04):
        fake = _grpo_trainer_self(loss_type, beta, logp, max_len)
        trl_loss = GRPOTrainer._compute_loss(fake, None, inputs)
        ours, stats = policy_gradient_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, norm=norm,
                                           max_len=max_len)
        ours = ours + beta * aggregate_loss(kl_k3(logp, ref), mask, norm, max_len)
        close(ours, trl_loss.detach(), atol=1e-6)
        (g_trl,) = torch.autograd.grad(trl_loss, logp)
        (g_ours,) = torch.autograd.grad(ours, logp)
        close(g_ours, g_trl, atol=1e-6)
        metrics = fake._metrics["train"]
        assert stats["clip_frac_low"] == pytest.approx(metrics["clip_ratio/low_mean"][0])
        assert stats["clip_frac_high"] == pytest.approx(metrics["clip_ratio/high_mean"][0])
        assert stats["clip_frac"] == pytest.approx(metrics["clip_ratio/region_mean"][0])
        if beta:
            assert aggregate_loss(kl_k3(logp, ref), mask).item() == pytest.approx(metrics["kl"][0], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Microbatch train steps, against TRL's losses on a tiny Qwen3
# ---------------------------------------------------------------------------------------------


def _tiny_qwen3(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64)
    return Qwen3ForCausalLM(config).train()


def _grads(model) -> torch.Tensor:
    """All parameter gradients as one vector, then cleared (the next call accumulates from zero)."""
    flat = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=False)
    return flat.clone()


def _sft_batch(lengths, prompt_len=2, seed=9):
    """Right-padded prompt + response rows; `lengths` are the response lengths."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(1, 64, (prompt_len + n,), generator=g).tolist()
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "response_mask": [0] * prompt_len + [1] * n})
    return pad_right(examples, pad_token_id=0)


def _rows(batch, rows):
    return {k: v[rows] for k, v in batch.items()}


def _sft_trainer_self():
    """The attributes SFTTrainer.compute_loss (TRL 1.16) reads."""
    return SimpleNamespace(
        model=SimpleNamespace(training=True), aux_loss_enabled=False, accelerator=_FakeAccelerator(),
        compute_loss_func=None, label_smoother=None,
        args=SimpleNamespace(loss_type="nll", average_tokens_across_devices=False),
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )


def test_sft_microbatch_step_matches_trl_sft_compute_loss():
    # TRL 1.16 SFTTrainer.compute_loss (trl/trainer/sft_trainer.py:1560) with its fused LM head
    # (add_fused_lm_head, as SFTTrainer.__init__ adds it), labels = -100 on prompt and padding.
    model = _tiny_qwen3()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    batch = _sft_batch([4, 2, 5])
    labels = batch["input_ids"].masked_fill(batch["response_mask"] == 0, -100)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    for num_items in (None, 20):  # TRL: sum / count of this batch's labels, or sum / num_items_in_batch
        trl_loss = SFTTrainer.compute_loss(_sft_trainer_self(), model, dict(inputs), num_items_in_batch=num_items)
        trl_loss.backward()
        g_trl = _grads(model)
        ours, stats = sft_microbatch_step(model, batch, num_items_in_batch=num_items)
        assert ours == pytest.approx(trl_loss.item(), abs=1e-6)
        close(_grads(model), g_trl, atol=1e-6)
    assert stats["num_tokens"] == 11
    # and the model's own loss (labels shifted inside, -100 ignored) is the same token mean
    with torch.no_grad():
        own_loss = model(**inputs).loss.item()
    assert own_loss == pytest.approx(sft_microbatch_step(model, batch)[0], abs=1e-6)


def test_sft_microbatch_steps_accumulate_to_the_full_batch_gradient():
    model = _tiny_qwen3()
    equal = _sft_batch([3, 1, 2, 2])  # microbatches [0, 1] and [2, 3] hold 4 response tokens each
    full_loss, _ = sft_microbatch_step(model, equal)
    g_full = _grads(model)
    losses = [sft_microbatch_step(model, _rows(equal, rows), grad_accum_steps=2)[0] for rows in ([0, 1], [2, 3])]
    close(_grads(model), g_full, atol=1e-6)  # gradients added up in place across the two calls
    assert sum(losses) / 2 == pytest.approx(full_loss, abs=1e-6)  # returned losses are not divided by 2

    unequal = _sft_batch([5, 1, 1, 1])  # 6 tokens vs 2: the mean of the two token means is another weighting
    sft_microbatch_step(model, unequal)
    g_full = _grads(model)
    for rows in ([0, 1], [2, 3]):
        sft_microbatch_step(model, _rows(unequal, rows), grad_accum_steps=2)
    assert not torch.allclose(_grads(model), g_full, atol=1e-4)
    # transformers' convention: divide each microbatch's sum by the window's token count (here 8)
    for rows in ([0, 1], [2, 3]):
        sft_microbatch_step(model, _rows(unequal, rows), grad_accum_steps=2, num_items_in_batch=8)
    close(_grads(model), g_full, atol=1e-6)
    with pytest.raises(AlgorithmInputError, match="grad_accum_steps"):
        sft_microbatch_step(model, equal, grad_accum_steps=0)


def _grpo_batch(seed=10):
    """4 completions after equal-length prompts (TRL left-pads prompts; here none is padded)."""
    g = torch.Generator().manual_seed(seed)
    B, P, C = 4, 3, 5
    prompt_ids = torch.randint(1, 64, (B, P), generator=g)
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    completion_ids = torch.randint(1, 64, (B, C), generator=g) * completion_mask
    batch = {"input_ids": torch.cat([prompt_ids, completion_ids], 1),
             "attention_mask": torch.cat([torch.ones(B, P, dtype=torch.long), completion_mask], 1),
             "response_mask": torch.cat([torch.zeros(B, P, dtype=torch.long), completion_mask], 1)}
    trl_inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(B, P, dtype=torch.long),
                  "completion_ids": completion_ids, "completion_mask": completion_mask}
    return batch, trl_inputs, g


@pytest.mark.parametrize(("loss_type", "norm"), [("grpo", "sequence"), ("bnpo", "token"), ("dr_grpo", "constant")])
def test_grpo_microbatch_step_matches_trl_grpo_compute_loss(loss_type, norm):
    # TRL 1.16 GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py:3020) on a stand-in self, with
    # TRL's own log-prob forward (_get_per_token_logps_and_entropies and the fused LM head), in
    # train mode with 2 accumulation steps: TRL returns loss / 2, ours returns loss and backpropagates loss / 2.
    model = _tiny_qwen3()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    batch, inputs, g = _grpo_batch()
    B, C = inputs["completion_ids"].shape
    P = inputs["prompt_ids"].shape[1]
    with torch.no_grad():
        logp = response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])[:, P:]
    mask = inputs["completion_mask"]
    old = (logp + torch.randn(B, C, generator=g) * 0.3) * mask  # off-policy: ratios on both sides of the clip
    ref = (logp + torch.randn(B, C, generator=g) * 0.2) * mask
    adv = torch.randn(B, generator=g)
    inputs.update(advantages=adv, old_per_token_logps=old, ref_per_token_logps=ref, num_items_in_batch=mask.sum())
    for beta in (0.0, 0.04):
        fake = _grpo_trainer_self(loss_type, beta, None, max_completion_length=C)
        fake.args.use_bias_correction_kl = True  # TRL 1.16's default
        fake.current_gradient_accumulation_steps = 2
        forward = GRPOTrainer._get_per_token_logps_and_entropies.__wrapped__  # without TRL's profiling wrapper
        fake._get_per_token_logps_and_entropies = lambda *a, fake=fake, **k: forward(fake, *a, **k)
        trl_loss = GRPOTrainer._compute_loss(fake, model, inputs)
        trl_loss.backward()
        g_trl = _grads(model)
        ours, stats = grpo_microbatch_step(
            model, batch, adv, grad_accum_steps=2, old_logp=F.pad(old, (P, 0)), ref_logp=F.pad(ref, (P, 0)),
            beta=beta, clip_low=0.2, clip_high=0.28, norm=norm, max_len=C)
        assert ours / 2 == pytest.approx(trl_loss.item(), abs=1e-6)
        close(_grads(model), g_trl, atol=1e-6)
        metrics = fake._metrics["train"]
        assert stats["clip_frac"] == pytest.approx(metrics["clip_ratio/region_mean"][0])
        assert stats["clip_frac"] > 0


def test_grpo_microbatch_steps_accumulate_to_the_full_batch_gradient():
    model = _tiny_qwen3()
    batch, _, g = _grpo_batch()
    adv = torch.randn(4, generator=g)
    halves = ([0, 1], [2, 3])  # 2 sequences each; 7 and 5 response tokens
    for norm, exact in (("sequence", True), ("constant", True), ("token", False)):
        grpo_microbatch_step(model, batch, adv, norm=norm, max_len=5)
        g_full = _grads(model)
        for rows in halves:
            grpo_microbatch_step(model, _rows(batch, rows), adv[rows], grad_accum_steps=2, norm=norm, max_len=5)
        assert torch.allclose(_grads(model), g_full, atol=1e-6) == exact, norm
    with pytest.raises(AlgorithmInputError, match="ref_logp"):
        grpo_microbatch_step(model, batch, adv, beta=0.04)


# ---------------------------------------------------------------------------------------------
# Preference losses
# ---------------------------------------------------------------------------------------------


def test_dpo_losses_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    # h_w = -1 - (-2) = 1, h_l = -3 - (-2) = -1, delta = 2
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=0.5)
    close(losses, [0.3132617])  # -log sigmoid(0.5 * 2) = log(1 + e^-1)
    close(chosen_r, [0.5])  # 0.5 * 1
    close(rejected_r, [-0.5])
    close(dpo_loss(pc, pr, rc, rr, beta=0.1)[0], [0.5981389])  # log(1 + e^-0.2)
    close(dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")[0], [0.0])  # relu(1 - 1)
    close(dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="hinge")[0], [0.8])  # relu(1 - 0.2)
    close(dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")[0], [1.0])  # (2 - 1/(2*0.5))^2
    # length-normalized IPO, n_w = 2, n_l = 4: delta' = 1/2 - (-1/4) = 0.75 -> (0.75 - 1)^2 = 0.0625
    ipo = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo",
                   chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))[0]
    close(ipo, [0.0625])
    # robust, eps = 0.1: [0.9 * 0.3132617 - 0.1 * 1.3132617] / 0.8 = (0.2819355 - 0.1313262) / 0.8 = 0.1882617
    close(dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="robust", label_smoothing=0.1)[0], [0.1882617])
    with pytest.raises(AlgorithmInputError, match="robust"):
        dpo_loss(pc, pr, rc, rr, label_smoothing=0.1)
    with pytest.raises(AlgorithmInputError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")


def _dpo_trainer_self(loss_type, beta, label_smoothing):
    """The attributes DPOTrainer._compute_loss (TRL 1.16) reads."""
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_FakeAccelerator(), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )


@pytest.mark.parametrize(
    ("loss_type", "beta", "label_smoothing"),
    [("sigmoid", 0.1, 0.0), ("hinge", 0.3, 0.0), ("ipo", 0.1, 0.0), ("robust", 0.2, 0.2)],
)
def test_dpo_loss_matches_trl_dpo_trainer(loss_type, beta, label_smoothing):
    # Calls TRL's DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py:1285) with a stand-in model
    # that returns fixed per-token log-probs; rows [:B] are the chosen, [B:] the rejected completions.
    g = torch.Generator().manual_seed(6)
    B, T = 3, 7
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for row, length in enumerate([4, 2, 5, 3, 6, 1]):
        completion_mask[row, 2 : 2 + length] = 1  # 2 prompt tokens, then the completion
    shifted = completion_mask[:, 1:]
    token_logps = -torch.rand(2 * B, T - 1, generator=g) * 2 * shifted  # 0 off the completion, like TRL's
    seq_logps = token_logps.sum(1)
    ref_logps = seq_logps + torch.randn(2 * B, generator=g)

    def fake_model(**kwargs):
        zeros = torch.zeros(2 * B, T - 1)
        return SimpleNamespace(log_probs=token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    inputs = {
        "input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
        "completion_mask": completion_mask, "ref_chosen_logps": ref_logps[:B], "ref_rejected_logps": ref_logps[B:],
    }
    trl_loss = DPOTrainer._compute_loss(_dpo_trainer_self(loss_type, beta, label_smoothing), fake_model,
                                        inputs, return_outputs=False)
    lengths = completion_mask.sum(1) if loss_type == "ipo" else None
    losses, chosen_r, rejected_r = dpo_loss(
        seq_logps[:B], seq_logps[B:], ref_logps[:B], ref_logps[B:], beta=beta, loss_type=loss_type,
        label_smoothing=label_smoothing,
        chosen_lengths=None if lengths is None else lengths[:B],
        rejected_lengths=None if lengths is None else lengths[B:],
    )
    close(losses.mean(), trl_loss, atol=1e-6)
    close(chosen_r, beta * (seq_logps[:B] - ref_logps[:B]))


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # diffs [1, -1]: -log sigmoid(1) = 0.3132617, -log sigmoid(-1) = 1.3132617; mean 0.8132617
    close(bradley_terry_loss(chosen, rejected), 0.8132617)
    # margin [0.5, 0]: diffs [0.5, -1]: -log sigmoid(0.5) = 0.4740770; mean (0.4740770 + 1.3132617) / 2
    close(bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.5, 0.0])), 0.8936693)
    # centering: 0.01 * mean([(2 + 1)^2, (0 + 1)^2]) = 0.01 * 5 = 0.05
    close(bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01), 0.8632617)


@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_loss_matches_trl_reward_trainer(with_margin):
    # Calls TRL's RewardTrainer.compute_loss (trl/trainer/reward_trainer.py:778) with a stand-in model.
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(8, 1, generator=g)  # rows [:4] chosen, [4:] rejected
    margin = torch.rand(4, generator=g)
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_FakeAccelerator(), _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(center_rewards_coefficient=0.01), _metrics={"train": defaultdict(list)},
    )
    inputs = {"input_ids": torch.ones(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3)}
    if with_margin:
        inputs["margin"] = margin
    trl_loss = RewardTrainer.compute_loss(fake, lambda **kw: SimpleNamespace(logits=scores), inputs)
    ours = bradley_terry_loss(scores[:4, 0], scores[4:, 0], margin=margin if with_margin else None,
                              center_rewards_coefficient=0.01)
    close(ours, trl_loss, atol=1e-6)
