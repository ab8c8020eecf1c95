"""labkit.dpo additions for lab 03: the learning-rate override, input checks, and DPOOutcome."""

from __future__ import annotations

import pytest

from labkit.dpo import DPOOutcome, dpo_config, dpo_outcome, mean_tokens
from labkit.profiles import get_profile


def test_dpo_config_learning_rate_override(tmp_path):
    profile = get_profile("cpu", lab="dpo")
    assert dpo_config(profile, tmp_path).learning_rate == profile.learning_rate
    args = dpo_config(profile, tmp_path, learning_rate=5e-4, beta=0.5, max_steps=7)
    assert (args.learning_rate, args.beta, args.max_steps) == (5e-4, 0.5, 7)


@pytest.mark.parametrize("bad", [dict(learning_rate=0.0), dict(learning_rate=-1e-4), dict(beta=0.0),
                                 dict(max_steps=0)])
def test_dpo_config_rejects_bad_settings(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        dpo_config(get_profile("cpu", lab="dpo"), tmp_path, **bad)


def test_outcome_row_rounds_and_names_every_column():
    outcome = DPOOutcome(beta=0.1, learning_rate=2e-4, max_steps=40, greedy_acc=0.91666, format_rate=0.99333,
                         mean_len=19.84, pref_acc=0.905, gap=3.8241, by_level={1: 1.0})
    assert outcome.row() == {"β": 0.1, "learning rate": 2e-4, "steps": 40, "greedy acc": 0.917,
                             "format ok": 0.993, "mean length (tok)": 19.8, "held-out pref acc": 0.905,
                             "log-ratio gap Δh": 3.82}


def test_mean_tokens(tiny_policy):
    _, tok = tiny_policy
    texts = ["<think>1+2=3</think>3", "12"]
    expected = sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts) / 2
    assert mean_tokens(tok, texts) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least one"):
        mean_tokens(tok, [])


def test_dpo_outcome_needs_problems(tmp_path):
    with pytest.raises(ValueError, match="at least one evaluation problem"):
        dpo_outcome(get_profile("cpu", lab="dpo"), tmp_path, [], [], [], tmp_path)
