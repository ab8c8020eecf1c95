"""Tests for labkit.reward_model: scoring, pair accuracy, oracle agreement and configs."""

from __future__ import annotations

import math

import pytest
import torch

from labkit import tiny
from labkit.data import load_split
from labkit.profiles import get_profile
from labkit.reward_model import (load_reward_model, oracle_agreement, pair_accuracy, reward_config,
                                 rm_lora_config, score)


def test_oracle_agreement_counts_right_over_wrong_pairs_within_a_question():
    # question a: right 2.0 vs wrong 1.0 (win), right 2.0 vs wrong 3.0 (loss); b: a tie (half)
    scores = [2.0, 1.0, 3.0, 0.5, 0.5, 9.0]
    correct = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    groups = ["a", "a", "a", "b", "b", "c"]
    agreement, pairs = oracle_agreement(scores, correct, groups)
    assert pairs == 3
    assert agreement == pytest.approx((1 + 0 + 0.5) / 3)


def test_oracle_agreement_ignores_pairs_across_questions_and_reports_none():
    agreement, pairs = oracle_agreement([5.0, 0.0], [1.0, 0.0], ["a", "b"])
    assert pairs == 0 and math.isnan(agreement)
    with pytest.raises(ValueError, match="differ in length"):
        oracle_agreement([1.0], [1.0, 0.0], ["a"])


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """An untrained tiny causal LM saved to disk, loaded back as a reward model."""
    rows = load_split("pretrain", limit=200)
    tok = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
    folder = tmp_path_factory.mktemp("tiny_lm")
    tiny.build_model(tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    model = load_reward_model(folder, get_profile("cpu"), tok)
    return model, tok


def test_load_reward_model_adds_one_output_head(tiny_rm):
    model, _ = tiny_rm
    assert model.config.num_labels == 1
    assert tuple(model.score.weight.shape) == (1, tiny.TINY_MODEL["hidden_size"])


def test_score_reads_the_last_real_token_and_ignores_padding(tiny_rm):
    model, tok = tiny_rm
    tok.padding_side = "right"
    convs = [[{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>1+1=2</think>2"}],
             [{"role": "user", "content": "Tom has 12 apples and buys 30 more. How many?"},
              {"role": "assistant", "content": "42"}]]
    batched = score(model, tok, convs, batch_size=2)
    alone = [score(model, tok, [c], batch_size=1)[0] for c in convs]
    assert batched == pytest.approx(alone, abs=1e-5)
    ids = tok.apply_chat_template(convs[0], tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**ids).last_hidden_state[0, -1]
    assert batched[0] == pytest.approx((hidden @ model.score.weight[0]).item(), abs=1e-5)


def test_pair_accuracy_groups_by_rejected_kind(tiny_rm):
    model, tok = tiny_rm
    rows = load_split("prefs", limit=12)
    result = pair_accuracy(model, tok, rows, batch_size=8)
    wins = [float(c > r) for c, r in zip(result.chosen, result.rejected)]
    assert result.accuracy == pytest.approx(sum(wins) / len(wins))
    assert set(result.by_group) == {r["rejected_kind"] for r in rows}
    hub_rows = [{"question": r["question"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    assert set(pair_accuracy(model, tok, hub_rows, batch_size=8).by_group) == {"all"}


def test_reward_config_follows_the_profile():
    cpu = get_profile("cpu", lab="rm")
    args = reward_config(cpu, "/tmp/unused")
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate) == (
        cpu.max_steps, cpu.batch_size, cpu.learning_rate)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert args.lr_scheduler_type.value == "constant_with_warmup"
    assert rm_lora_config(cpu) is None                      # lora_rank 0: full fine-tuning
    lora = rm_lora_config(get_profile("t4", lab="rm"))
    assert lora.task_type == "SEQ_CLS" and lora.r == 16
