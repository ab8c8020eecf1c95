"""Tests for labkit.ppo: shaping, GAE on shaped rewards, losses and their gradients, KL control,
the policy's value head and reference, config errors, and a short run on a toy reward."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from labkit import tiny
from labkit.algorithms import gae, masked_whiten, pad_right, policy_gradient_loss, response_logprobs
from labkit.data import load_split
from labkit.ppo import (KLController, PolicyWithValue, PPOConfig, PPOConfigError, PPOTrainer,
                        last_token_index, ppo_config, shape_rewards, value_loss)
from labkit.profiles import get_profile


def close(a, b, atol=1e-5):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                          atol=atol), (a, b)


# ---------------------------------------------------------------------------------------------
# Shaping and GAE by hand
# ---------------------------------------------------------------------------------------------


def test_shape_rewards_by_hand():
    # row 0: prompt (2 tokens) + 3 response tokens; row 1: prompt (1) + 2 response tokens + 2 pad
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    logp = torch.tensor([[0.0, 0.0, -1.0, -2.0, -0.5], [0.0, -3.0, -1.0, 9.0, 9.0]])
    ref = torch.tensor([[0.0, 0.0, -1.5, -1.0, -0.5], [0.0, -2.0, -2.0, 0.0, 0.0]])
    rewards, kl = shape_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    close(kl, [[0, 0, 0.5, -1.0, 0], [0, -1.0, 1.0, 0, 0]])
    # -0.1 * kl on every response token; the score is added on the last response token only
    close(rewards, [[0, 0, -0.05, 0.1, 2.0], [0, 0.1, -0.1 - 1.0, 0, 0]])
    assert last_token_index(mask).tolist() == [4, 2]


def test_last_token_index_rejects_an_empty_response():
    with pytest.raises(PPOConfigError, match="all zeros"):
        last_token_index(torch.tensor([[0, 1], [0, 0]]))


def test_gae_on_shaped_rewards_by_hand():
    # one 3-token response, gamma = 1, lam = 0.5; rewards from shaping: -0.1 kl, score 1 at the end
    mask = torch.tensor([[0, 1, 1, 1]])
    logp, ref = torch.tensor([[0.0, -1.0, -1.0, -1.0]]), torch.tensor([[0.0, -2.0, -1.0, -1.0]])
    rewards, _ = shape_rewards(torch.tensor([1.0]), logp, ref, mask, kl_coef=0.1)
    close(rewards, [[0, -0.1, 0, 1.0]])
    values = torch.tensor([[7.0, 0.5, 0.2, 0.4]])  # position 0 is the prompt: ignored
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # delta_3 = 1.0 + 0 - 0.4 = 0.6;          A_3 = 0.6
    # delta_2 = 0.0 + 0.4 - 0.2 = 0.2;        A_2 = 0.2 + 0.5 * 0.6 = 0.5
    # delta_1 = -0.1 + 0.2 - 0.5 = -0.4;      A_1 = -0.4 + 0.5 * 0.5 = -0.15
    close(adv, [[0, -0.15, 0.5, 0.6]])
    close(ret, [[0, 0.35, 0.7, 1.0]])  # R = A + V
    whitened = masked_whiten(adv, mask)
    close(whitened[0, 1:].mean(), 0.0)


# ---------------------------------------------------------------------------------------------
# Losses: values and gradient signs
# ---------------------------------------------------------------------------------------------


def test_value_loss_by_hand_and_clipping():
    mask = torch.tensor([[1, 1, 0]])
    old = torch.tensor([[0.0, 1.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 1.5, 0.0]], requires_grad=True)
    loss, clip_frac = value_loss(values, old, ret, mask, cliprange_value=0.2)
    # token 0: V 0.5 -> clipped 0.2: max(0.25, 0.64) = 0.64 (clipped is larger)
    # token 1: V 1.5 -> clipped 1.2: max(0.25, 0.04) = 0.25
    close(loss, 0.5 * (0.64 + 0.25) / 2)
    assert clip_frac == pytest.approx(0.5)
    loss.backward()
    # the clipped term has no gradient w.r.t. V (the clamp is saturated); the other pulls V to R
    close(values.grad, [[0.0, 0.5 * 2 * 0.5 / 2, 0.0]])


def test_policy_loss_gradient_raises_good_tokens_and_lowers_bad_ones():
    mask = torch.ones(2, 2)
    old = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    logp = old.clone().requires_grad_(True)
    loss, stats = policy_gradient_loss(logp, old, torch.tensor([1.0, -1.0]), mask, clip_low=0.2)
    loss.backward()
    assert (logp.grad[0] < 0).all() and (logp.grad[1] > 0).all()  # descent: up for A > 0, down for A < 0
    assert stats["clip_frac"] == 0.0


def test_kl_controllers():
    fixed = KLController(0.05)
    fixed.update(kl=100.0, n_responses=64)
    assert fixed.value == 0.05
    adaptive = KLController(0.1, target=2.0, horizon=100)
    adaptive.update(kl=3.0, n_responses=10)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 0.1)
    assert adaptive.value == pytest.approx(0.102)
    adaptive.update(kl=1.8, n_responses=10)  # error -0.1: shrink
    assert adaptive.value == pytest.approx(0.102 * (1 - 0.1 * 0.1))


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(rollout_batch_size=60, mini_batch_size=16), "multiple of mini_batch_size"),
    (dict(mini_batch_size=16, micro_batch_size=5), "multiple of micro_batch_size"),
    (dict(cliprange=1.5), "cliprange"),
    (dict(lam=1.2), "gamma and lam"),
    (dict(kl_target=0.0), "kl_target"),
    (dict(total_steps=0), "total_steps"),
])
def test_config_refuses_settings_that_cannot_work(kwargs, message):
    with pytest.raises(PPOConfigError, match=message):
        PPOConfig(**kwargs)


def test_ppo_config_from_profiles():
    cpu = get_profile("cpu", lab="ppo")
    cfg = ppo_config(cpu)
    assert (cfg.total_steps, cfg.learning_rate, cfg.response_length) == (cpu.max_steps, cpu.learning_rate,
                                                                        cpu.max_new_tokens)
    assert cfg.rollout_batch_size % cfg.mini_batch_size == 0
    for name in ("t4", "24gb", "80gb"):  # gradient accumulation: micro-batches of the profile's batch
        profile = get_profile(name, lab="ppo")
        cfg = ppo_config(profile)
        assert cfg.micro == profile.batch_size and cfg.mini_batch_size == profile.batch_size * profile.grad_accum
    assert ppo_config(cpu, kl_coef=0.2, vf_coef=None).kl_coef == 0.2
    with pytest.raises(PPOConfigError, match="unknown PPOConfig field"):
        ppo_config(cpu, kl_coeff=0.2)


# ---------------------------------------------------------------------------------------------
# Policy with a value head, on the kit's tiny architecture
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    rows = load_split("pretrain", limit=200)
    tok = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
    return tiny.build_model(tok, seed=0), tok


def _batch():
    examples = [{"input_ids": [5, 6, 7, 8, 9], "attention_mask": [1] * 5, "response_mask": [0, 0, 1, 1, 1]},
                {"input_ids": [10, 11, 12], "attention_mask": [1] * 3, "response_mask": [0, 1, 1]}]
    return pad_right(examples, pad_token_id=0)


def test_policy_logprobs_match_algorithms_and_values_start_at_zero(tiny_lm):
    model, _ = tiny_lm
    policy = PolicyWithValue(copy.deepcopy(model), ref_policy=copy.deepcopy(model))
    b = _batch()
    with torch.no_grad():
        logp, values, entropy = policy(b["input_ids"], b["attention_mask"], with_entropy=True)
        expected = response_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"])
    mask = b["response_mask"].bool()
    close(logp[mask], expected[mask], atol=1e-5)
    assert (values == 0).all()  # zero-initialised head
    assert entropy.shape == logp.shape and (entropy[mask] > 0).all()
    # value[t] reads the hidden state at t - 1: changing token t does not change value[t]
    policy.value_head.weight.data.normal_()
    ids2 = b["input_ids"].clone()
    ids2[0, 3] = 20
    with torch.no_grad():
        v1 = policy(b["input_ids"], b["attention_mask"])[1]
        v2 = policy(ids2, b["attention_mask"])[1]
    close(v1[0, :4], v2[0, :4])
    assert not torch.allclose(v1[0, 4], v2[0, 4])


def test_reference_is_the_adapter_switched_off(tiny_lm):
    model, _ = tiny_lm
    b = _batch()
    with torch.no_grad():
        base = response_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"])
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = PolicyWithValue(get_peft_model(copy.deepcopy(model), lora))
    mask = b["response_mask"].bool()
    ref = policy.ref_logprobs(b["input_ids"], b["attention_mask"])
    close(ref[mask], base[mask], atol=1e-5)  # adapter off = the model LoRA was put on
    logp = policy(b["input_ids"], b["attention_mask"])[0]
    assert not torch.allclose(logp[mask], ref[mask])  # the (random) adapter changes the policy



def test_trainer_refuses_a_model_without_trainable_parameters(tiny_lm):
    model, tok = tiny_lm
    frozen = PolicyWithValue(copy.deepcopy(model).requires_grad_(False), ref_policy=copy.deepcopy(model))
    frozen.value_head.requires_grad_(False)
    with pytest.raises(PPOConfigError, match="no trainable parameters"):
        PPOTrainer(frozen, tok, lambda rows, texts: [0.0] * len(rows), PPOConfig())


def test_a_short_run_raises_the_score_on_a_toy_reward(tiny_lm):
    """Reward = share of ASCII letters in the response. An untrained model emits random tokens from
    a vocabulary of Chinese and English pieces; 15 PPO steps must make English clearly more frequent."""
    model, tok = tiny_lm
    torch.manual_seed(0)
    policy = PolicyWithValue(copy.deepcopy(model), ref_policy=copy.deepcopy(model))

    def letter_share(rows, texts):
        return [sum(c.isascii() and c.isalpha() for c in t) / max(1, len(t)) for t in texts]

    cfg = PPOConfig(total_steps=15, rollout_batch_size=32, mini_batch_size=16, num_ppo_epochs=2,
                    learning_rate=3e-3, response_length=8, kl_coef=0.01, seed=0)
    rows = [{"question": f"{i} + {i}?", "answer": str(2 * i)} for i in range(64)]
    history = PPOTrainer(policy, tok, letter_share, cfg).train(rows, desc="toy PPO")
    first = sum(h["score"] for h in history[:3]) / 3
    last = sum(h["score"] for h in history[-3:]) / 3
    assert last > first + 0.15, (first, last)
    assert history[-1]["kl"] > 0 and all(math.isfinite(h["value_loss"]) for h in history)
    assert {"total_reward", "non_score_reward", "clip_frac", "value_clip_frac", "approx_kl", "entropy",
            "response_length", "accuracy", "kl_coef"} <= set(history[0])
