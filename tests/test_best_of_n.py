"""labkit.best_of_n: pass@k, token counts, selection rules, best-of-N bookkeeping, and sampling
with a real (untrained) tiny model."""

from __future__ import annotations

import itertools

import pytest
import torch

from labkit import best_of_n as bon
from labkit.data import load_split
from labkit.evaluate import generated_lengths
from labkit.profiles import get_profile


def make_samples(answers, gold, levels=None, scores=None, tokens=None) -> bon.Samples:
    """Samples from per-question answer lists; correct = answer == gold (as numbers)."""
    levels = levels or [3] * len(answers)
    rows = [{"question": f"q{i}", "answer": g, "level": lvl} for i, (g, lvl) in enumerate(zip(gold, levels))]
    keys = [[bon.answer_key(a) for a in group] for group in answers]
    return bon.Samples(rows=rows, completions=[[f"<think>x</think>{a}" for a in group] for group in answers],
                       tokens=tokens or [[10] * len(group) for group in answers], answers=answers,
                       correct=[[1.0 if k == bon.answer_key(g) else 0.0 for k in group]
                                for group, g in zip(keys, gold)],
                       scores=scores)


def test_pass_at_k_hand_values_and_edges():
    assert bon.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert bon.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert bon.pass_at_k(8, 0, 4) == 0.0
    assert bon.pass_at_k(8, 6, 4) == 1.0  # fewer than k wrong samples: any k contain a right one
    assert bon.pass_at_k(5, 5, 5) == 1.0
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError, match="0 <= c <= n"):
            bon.pass_at_k(*bad)


@pytest.mark.parametrize("n,c,k", [(6, 2, 3), (7, 1, 4), (8, 5, 2), (5, 0, 2)])
def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample(n, c, k):
    subsets = list(itertools.combinations(range(n), k))
    share = sum(1 for s in subsets if min(s) < c) / len(subsets)  # samples 0..c-1 are right
    assert bon.pass_at_k(n, c, k) == pytest.approx(share)


def test_generated_lengths_stop_at_the_first_eos():
    eos, pad = 2, 0
    new = torch.tensor([[5, 6, eos, pad, pad],   # 3 tokens, EOS included
                        [eos, pad, pad, pad, pad],   # stopped at once
                        [5, 6, 7, 8, 9],          # never stopped: the whole row
                        [5, eos, 6, eos, pad]])   # only the first EOS counts
    assert generated_lengths(new, eos) == [3, 1, 5, 2]


def test_answer_key_groups_equal_numbers():
    assert bon.answer_key("12") == bon.answer_key("12.0") == bon.answer_key("1,2".replace(",", ""))
    assert bon.answer_key("0.5") == bon.answer_key("1/2")
    assert bon.answer_key("1,234") == bon.answer_key("1234")
    assert bon.answer_key(" x+1 ") == "x+1"
    assert bon.answer_key(None) is None


def test_rules_pick_by_hand():
    answers = ["4", None, "36", "4", "35", "36", "36.0"]
    correct = [0, 0, 0, 0, 1, 0, 0]
    scores = [0.0, 9.0, 1.0, 0.5, 3.0, 0.2, -1.0]
    assert bon.oracle(answers, correct, None) == 4
    assert bon.oracle(answers, [0] * 7, None) == 0
    assert bon.majority_vote(answers, correct, None) == 2          # "36" has three votes ("36.0" too)
    assert bon.reward_model_pick(answers, correct, scores) == 1    # highest score, even without an answer
    # weights e^(s - 9): "35" has e^-6, the others far less; None does not vote
    assert bon.weighted_vote(answers, correct, scores) == 4
    assert bon.majority_vote(["8", "9", "9", "8"], [], None) == 0  # tie: the answer seen first
    assert bon.majority_vote([None, None], [], None) == 0
    assert bon.reward_model_pick(["1", "2"], [], [1.0, 1.0]) == 0  # tie: the first sample
    with pytest.raises(ValueError, match="score_samples"):
        bon.reward_model_pick(answers, correct, None)
    with pytest.raises(ValueError, match="score_samples"):
        bon.weighted_vote(answers, correct, None)


def test_top_answer_is_none_without_a_parseable_answer():
    # Lab 07's selection-rule demo: a question whose samples all lack a final answer has no
    # vote winner (max() over the empty vote count raised ValueError); the rules then pick sample 0.
    assert bon.top_answer([None, None, None]) is None
    assert bon.top_answer([]) is None
    assert bon.top_answer([None, None], weights=[1.0, 5.0]) is None
    assert bon.majority_vote([None] * 3, [], None) == bon.weighted_vote([None] * 3, [], [1.0, 2.0, 3.0]) == 0


def test_top_answer_counts_votes_by_value():
    assert bon.top_answer(["36", None, "4", "36.0", "4", "36"]) == "36"  # "36.0" votes for 36
    assert bon.top_answer(["8", "9", "9", "8"]) == "8"                    # tie: the answer seen first
    assert bon.top_answer(["1/2", "0.5", "3"]) == bon.answer_key("0.5")
    assert bon.top_answer(["5", "7", "7"], weights=[3.0, 1.0, 1.0]) == "5"
    with pytest.raises(ValueError, match="2 answers but 3 weights"):
        bon.top_answer(["5", "7"], weights=[1.0, 1.0, 1.0])


def test_weighted_vote_is_a_vote_not_an_argmax():
    # one high-scored "5" against three medium "7"s: 3 e^0 > e^0.5, so "7" wins; at a larger gap "5" wins
    assert bon.weighted_vote(["5", "7", "7", "7"], [], [2.5, 2.0, 2.0, 2.0]) == 1
    assert bon.weighted_vote(["5", "7", "7", "7"], [], [4.0, 2.0, 2.0, 2.0]) == 0


def test_best_of_n_averages_disjoint_groups():
    samples = make_samples([["1", "2", "2", "2", "3", "3", "2", "2"]], ["2"])
    # N=1: 5 of 8 right; N=2: groups (1,2) (2,2) (3,3) (2,2) -> oracle right in 3 of 4
    assert bon.best_of_n(samples, "oracle", 1) == [5 / 8]
    assert bon.best_of_n(samples, "oracle", 2) == [3 / 4]
    # majority in (1,2): tie -> "1" (wrong); (3,3) wrong; the other two right
    assert bon.best_of_n(samples, "majority_vote", 2) == [2 / 4]
    assert bon.best_of_n(samples, "oracle", 8) == [1.0]
    # N=3 uses two groups of three (the last two samples are left over)
    assert bon.best_of_n(samples, "majority_vote", 3) == [0.5]
    for bad in (0, 9):
        with pytest.raises(ValueError, match="between 1 and the 8"):
            bon.best_of_n(samples, "oracle", bad)
    with pytest.raises(ValueError, match="score_samples"):
        bon.best_of_n(samples, "reward_model", 2)
    with pytest.raises(ValueError, match="unknown selection rule 'best'; known rules"):
        bon.best_of_n(samples, "best", 2)


def test_oracle_at_all_samples_is_any_right_and_mean_pass_at_k():
    samples = make_samples([["1", "2", "3", "4"], ["5", "5", "5", "5"], ["6", "7", "7", "6"]], ["4", "9", "7"])
    assert bon.best_of_n(samples, "oracle", 4) == [1.0, 0.0, 1.0]
    assert bon.mean_pass_at_k(samples, 4) == pytest.approx(2 / 3)
    assert bon.mean_pass_at_k(samples, 1) == pytest.approx((1 / 4 + 0 + 2 / 4) / 3)


def test_tokens_per_question_counts_the_groups_used():
    samples = make_samples([["1", "2", "3"], ["1", "2", "3"]], ["1", "2"], tokens=[[10, 20, 30], [1, 2, 3]])
    assert bon.tokens_per_question(samples, 1) == pytest.approx((60 + 6) / 6 * 1)
    # N=2: one group of two per question (the third sample is unused): (30 + 3) / 2
    assert bon.tokens_per_question(samples, 2) == pytest.approx(16.5)
    assert bon.tokens_per_question(samples, 3) == pytest.approx(33)


def test_scaling_table_rows_per_rule_n_and_level():
    samples = make_samples([["1", "1"], ["2", "3"], ["4", "4"]], ["1", "3", "5"], levels=[1, 2, 2])
    table = bon.scaling_table(samples, ["oracle", "majority_vote"], [1, 2])
    assert len(table) == 2 * 2 * 3  # rules x ns x ("all", level 1, level 2)
    row = lambda rule, n, level: table[(table.rule == rule) & (table.n == n) & (table.level == level)]  # noqa: E731
    assert float(row("oracle", 2, "all").accuracy.iloc[0]) == pytest.approx(2 / 3)
    assert float(row("oracle", 1, 2).accuracy.iloc[0]) == pytest.approx(0.25)
    assert float(row("majority_vote", 2, 2).accuracy.iloc[0]) == 0.0  # tie "2"/"3" -> "2", wrong
    assert float(row("oracle", 2, 1).tokens.iloc[0]) == 20


def test_subset_keeps_questions_and_sample_slices():
    samples = make_samples([["1", "2", "3", "4"], ["5", "6", "7", "8"]], ["1", "8"],
                           scores=[[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]])
    part = samples.subset([1], samples=slice(2, 4))
    assert part.n == 2 and part.rows == [samples.rows[1]]
    assert part.answers == [["7", "8"]] and part.correct == [[0.0, 1.0]] and part.scores == [[3.0, 4.0]]
    assert samples.subset().answers == samples.answers


def test_difficulty_bands_boundaries():
    # shares of right samples out of 10: 0.1 hard, 0.2 medium, 0.8 medium, 0.9 easy, 1.0 easy
    answers = [["1"] * k + ["0"] * (10 - k) for k in (1, 2, 8, 9, 10, 0)]
    bands = bon.difficulty_bands(make_samples(answers, ["1"] * 6))
    assert bands == {"easy": [3, 4], "medium": [1, 2], "hard": [0, 5]}


def test_reward_model_misses_lists_wrong_top_picks_on_solvable_questions():
    samples = make_samples([["1", "2", "2"], ["3", "4", "4"], ["5", "6", "6"]], ["1", "4", "9"],
                           scores=[[0.5, 2.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.0]])
    misses = bon.reward_model_misses(samples, 3)
    # q0: a right answer exists, the RM picks a wrong "2"; q1: the RM picks a right one; q2: nothing right
    assert list(misses.question) == ["q0"]
    assert misses.iloc[0].picked_score == 2.0 and misses.iloc[0].best_right_score == 0.5
    assert misses.iloc[0].right_samples == 1 and misses.iloc[0].picked_answer == "2"
    assert bon.reward_model_misses(make_samples([["2"]], ["1"], scores=[[0.0]]), 1).empty
    with pytest.raises(ValueError, match="score_samples"):
        bon.reward_model_misses(make_samples([["1"]], ["1"]), 1)


def test_score_samples_scores_each_distinct_completion_once(monkeypatch):
    import labkit.reward_model as rm

    seen = []

    def fake_score(model, tokenizer, rows, responses, system_prompt=None, batch_size=64):
        seen.extend(zip([r["question"] for r in rows], responses))
        return [float(len(r)) + (10.0 if row["question"] == "q1" else 0.0) for row, r in zip(rows, responses)]

    monkeypatch.setattr(rm, "score_responses", fake_score)
    samples = make_samples([["1", "22", "1", "1"], ["1", "1", "333", "1"]], ["1", "1"])
    scored = bon.score_samples(samples, None, None, get_profile("cpu"))
    assert len(seen) == len(set(seen)) == 4  # (q0, "1"), (q0, "22"), (q1, "1"), (q1, "333")
    base = len("<think>x</think>")
    assert scored.scores == [[base + 1, base + 2, base + 1, base + 1],
                             [base + 11, base + 11, base + 13, base + 11]]
    assert samples.scores is None  # the input is not modified


def test_sample_n_makes_one_generate_call_per_batch(tiny_policy, monkeypatch):
    model, tok = tiny_policy
    profile = get_profile("cpu", max_new_tokens=6)
    rows = load_split("eval")[:5]
    calls = []
    generate = model.generate

    def counting_generate(**kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["num_return_sequences"]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", counting_generate)
    torch.manual_seed(0)
    samples = bon.sample_n(model, tok, rows, profile, 4, batch_size=8)  # 2 questions x 4 samples per call
    assert calls == [(2, 4), (2, 4), (1, 4)]
    assert samples.n == 4 and len(samples.rows) == 5
    assert all(len(t) == 4 and all(1 <= x <= 6 for x in t) for t in samples.tokens)
    assert all(len(a) == len(c) == 4 for a, c in zip(samples.answers, samples.correct))
    assert all(c in (0.0, 1.0) for group in samples.correct for c in group)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        bon.sample_n(model, tok, rows, profile, 4, temperature=0.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        bon.sample_n(model, tok, rows, profile, 0)


def test_generate_returns_each_prompts_samples_together(tiny_policy, monkeypatch):
    """sample_n relies on generate(num_return_sequences=n) returning prompt i's samples in rows
    i*n ... i*n+n-1: the prompt part of every returned row is checked against its input."""
    model, tok = tiny_policy
    profile = get_profile("cpu", max_new_tokens=4)
    rows = load_split("eval")[:3]
    generate = model.generate
    checked = []

    def checking_generate(**kwargs):
        out = generate(**kwargs)
        prompts, n = kwargs["input_ids"], kwargs["num_return_sequences"]
        for j in range(out.shape[0]):
            assert torch.equal(out[j, :prompts.shape[1]], prompts[j // n])
        assert len({tuple(p.tolist()) for p in prompts}) == prompts.shape[0]  # the prompts differ
        checked.append(out.shape[0])
        return out

    monkeypatch.setattr(model, "generate", checking_generate)
    samples = bon.sample_n(model, tok, rows, profile, 3, batch_size=9)
    assert checked == [9] and samples.rows == rows and all(len(g) == 3 for g in samples.completions)
