"""Lab 05-06 extras in labkit.grpo (group sampling for the temperature exercise, zero-std share,
per-question standard errors) and the TRL private methods labs 05-06 rely on."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from trl import GRPOTrainer

from labkit.data import load_split
from labkit.grpo import GRPOSetupError, question_se, sample_group_correctness, zero_std_share
from labkit.profiles import get_profile

# GRPOTrainer's private methods / attributes the course uses (TRL 1.16.0, pinned): lab 05 calls
# _generate_and_score_completions and reads _logs; labkit.grpo.StepTimer wraps _generate,
# _calculate_rewards and _generate_and_score_completions; DynamicSamplingGRPOTrainer overrides
# _generate_and_score_completions and _calculate_rewards. name -> parameters after self.
PRIVATE_METHODS = {
    "_generate_and_score_completions": ["inputs"],
    "_calculate_rewards": ["inputs", "prompts", "completions", "completion_ids_list"],
    "_generate": ["prompts"],
    "_compute_loss": ["model", "inputs"],
}


@pytest.mark.parametrize("name", sorted(PRIVATE_METHODS))
def test_trl_private_methods_the_labs_use_still_exist(name):
    method = getattr(GRPOTrainer, name, None)
    assert callable(method), f"TRL's GRPOTrainer no longer has {name}: labs 05-06 and labkit.grpo use it"
    params = list(inspect.signature(method).parameters)[1:]
    assert params[:len(PRIVATE_METHODS[name])] == PRIVATE_METHODS[name], f"{name}{params}: signature changed"


def test_trl_logs_attribute_is_set_by_init():
    source = inspect.getsource(GRPOTrainer.__init__)
    assert "self._logs" in source, "lab 05 reads trainer._logs['rewards'] after a probe batch"


def test_zero_std_share_counts_all_equal_groups():
    correct = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert zero_std_share(correct) == 0.5
    assert zero_std_share(torch.ones(3, 1)) == 1.0          # one sample per question: never any signal
    with pytest.raises(GRPOSetupError, match="questions, G"):
        zero_std_share(torch.ones(4))


def test_question_se_uses_questions_as_units():
    # two questions, two samples each: per-question accuracies 1.0 and 0.0 -> std 0.7071, SE 0.5
    assert question_se([1.0, 1.0, 0.0, 0.0], 2) == pytest.approx(0.5)
    # samples=1 (greedy): the sample standard deviation of 0/1 outcomes over sqrt(n)
    outcomes = [1.0, 0.0, 1.0, 1.0]
    mean = sum(outcomes) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in outcomes) / 3)
    assert question_se(outcomes, 1) == pytest.approx(sd / 2)
    assert question_se(outcomes, 0) == question_se(outcomes, 1)   # samples=0 means greedy, one answer each
    # correlated samples: the per-question SE is larger than the naive binomial one over all answers
    correlated = [1.0] * 8 + [0.0] * 8 + [1.0] * 8 + [1.0] * 8
    naive = math.sqrt(0.75 * 0.25 / len(correlated))
    assert question_se(correlated, 8) > naive
    with pytest.raises(GRPOSetupError, match="do not split"):
        question_se([1.0, 0.0, 1.0], 2)
    with pytest.raises(GRPOSetupError, match="at least 2 questions"):
        question_se([1.0, 0.0], 2)


def test_sample_group_correctness_is_seeded_and_leaves_the_rng_alone(tiny_policy):
    model, tok = tiny_policy
    profile = get_profile("cpu", lab="grpo", max_new_tokens=6, eval_batch_size=8)
    rows = load_split("rl")[:3]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sample_group_correctness(model, tok, rows, profile, 4, temperature=1.3, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    again = sample_group_correctness(model, tok, rows, profile, 4, temperature=1.3, seed=1)
    assert first.shape == (3, 4) and torch.equal(first, again)
    assert set(first.flatten().tolist()) <= {0.0, 1.0}
    with pytest.raises(GRPOSetupError, match="temperature"):
        sample_group_correctness(model, tok, rows, profile, 4, temperature=0.0)
    with pytest.raises(GRPOSetupError, match="group_size"):
        sample_group_correctness(model, tok, rows, profile, 0)
    with pytest.raises(GRPOSetupError, match="empty"):
        sample_group_correctness(model, tok, [], profile, 4)
