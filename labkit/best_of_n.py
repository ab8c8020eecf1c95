"""Test-time compute: sample N answers per question, pick one, and measure what the picking buys.

`sample_n` draws N completions per question (one generate call per batch of questions) and
records, for each completion, the tokens it cost, its final answer and whether that answer is
right. A selection rule then picks one of a question's N samples (see `RULES`):

- ``oracle``: a right one if there is any. It needs the gold answer, so it is an upper bound
  (its best-of-N accuracy is pass@N);
- ``reward_model``: the one a reward model scores highest (best-of-N with a learned verifier);
- ``majority_vote``: the most common final answer (self-consistency); needs no verifier at all
  (`top_answer` gives the winning answer itself, None when no sample has one);
- ``weighted_vote``: the answer whose samples carry the most reward-model weight exp(score).

`best_of_n` measures a rule at N <= the number drawn by averaging over disjoint groups of N,
and `pass_at_k` is the unbiased estimator of "at least one of k samples is right".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from labkit.evaluate import chat_prompts, generate_batch, generated_lengths
from labkit.profiles import Profile
from labkit.rewards import accuracy_reward, as_fraction, extract_answer


@dataclass
class Samples:
    """N sampled completions for each question; every list is indexed [question][sample]."""

    rows: list[dict]
    completions: list[list[str]] = field(repr=False)
    tokens: list[list[int]] = field(repr=False)          # new tokens generated, EOS included
    answers: list[list[str | None]] = field(repr=False)  # extract_answer of each completion
    correct: list[list[float]] = field(repr=False)       # 1.0 if the answer matches the gold one
    scores: list[list[float]] | None = field(default=None, repr=False)  # reward-model scores

    @property
    def n(self) -> int:
        """Samples per question."""
        return len(self.completions[0]) if self.completions else 0

    def subset(self, questions: Sequence[int] | None = None, samples: slice = slice(None)) -> Samples:
        """The given questions (all if None) and the given slice of each question's samples."""
        keep = range(len(self.rows)) if questions is None else questions
        pick = lambda table: None if table is None else [table[q][samples] for q in keep]  # noqa: E731
        return Samples(rows=[self.rows[q] for q in keep], completions=pick(self.completions),
                       tokens=pick(self.tokens), answers=pick(self.answers),
                       correct=pick(self.correct), scores=pick(self.scores))


def sample_n(model, tokenizer, rows: list[dict], profile: Profile, n: int, *, temperature: float = 1.0,
             batch_size: int | None = None, desc: str = "sample") -> Samples:
    """n completions per question at `temperature`, scored against the gold answers.

    Each generate call takes batch_size // n questions and returns n samples of each
    (num_return_sequences=n), so a batch costs one call, not n. batch_size counts completions
    and defaults to the profile's eval_batch_size.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature}): greedy decoding would give "
                         "n copies of one answer")
    per_call = max(1, (batch_size or profile.eval_batch_size) // n)
    prompts = chat_prompts(tokenizer, rows, profile.system_prompt)
    completions: list[list[str]] = []
    tokens: list[list[int]] = []
    for start in tqdm(range(0, len(rows), per_call), desc=desc):
        _, new = generate_batch(model, tokenizer, prompts[start:start + per_call],
                                max_new_tokens=profile.max_new_tokens, do_sample=True,
                                temperature=temperature, num_return_sequences=n)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        counts = generated_lengths(new, tokenizer.eos_token_id)
        completions += [texts[i:i + n] for i in range(0, len(texts), n)]
        tokens += [counts[i:i + n] for i in range(0, len(counts), n)]
    return Samples(rows=list(rows), completions=completions, tokens=tokens,
                   answers=[[extract_answer(c) for c in group] for group in completions],
                   correct=[accuracy_reward(group, answer=[row["answer"]] * n)
                            for row, group in zip(rows, completions)])


def score_samples(samples: Samples, reward_model, tokenizer, profile: Profile) -> Samples:
    """A copy of `samples` with every completion scored by `reward_model` (see reward_model.score).

    Samples often repeat (an easy question gets the same answer many times), so each distinct
    (question, completion) pair is scored once.
    """
    from labkit.reward_model import score_responses

    unique: dict[tuple[int, str], int] = {}
    for q, group in enumerate(samples.completions):
        for completion in group:
            unique.setdefault((q, completion), len(unique))
    flat = score_responses(reward_model, tokenizer, [samples.rows[q] for q, _ in unique],
                           [c for _, c in unique], profile.system_prompt,
                           batch_size=profile.eval_batch_size)
    return replace(samples, scores=[[flat[unique[(q, c)]] for c in group]
                                    for q, group in enumerate(samples.completions)])


# A selection rule sees one question's N samples: their answers, their correctness (only the
# oracle may look) and their reward-model scores (None if not scored); it returns an index.
Rule = Callable[[Sequence[str | None], Sequence[float], Sequence[float] | None], int]


def answer_key(answer: str | None) -> str | None:
    """The form votes are counted in: plain numbers by value ("12.0" = "12", "0.5" = "1/2"),
    anything else by its stripped text; no answer -> None (it gets no vote)."""
    if answer is None:
        return None
    value = as_fraction(answer)
    return str(value) if value is not None else answer.strip()


def oracle(answers: Sequence[str | None], correct: Sequence[float], scores: Sequence[float] | None) -> int:
    """The first right sample, else the first one: what a perfect verifier would pick."""
    return next((i for i, ok in enumerate(correct) if ok > 0.5), 0)


def _need_scores(scores: Sequence[float] | None, rule: str) -> Sequence[float]:
    if scores is None:
        raise ValueError(f"the {rule} rule needs reward-model scores: call score_samples first")
    return scores


def reward_model_pick(answers: Sequence[str | None], correct: Sequence[float],
                      scores: Sequence[float] | None) -> int:
    """The sample the reward model scores highest (the first one on a tie)."""
    scores = _need_scores(scores, "reward_model")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def top_answer(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> str | None:
    """The answer key (see answer_key) with the largest total weight, one vote per sample when
    `weights` is None; on a tie the answer seen first wins. Samples without an answer do not
    vote, so with no parseable answer at all the result is None."""
    if weights is None:
        weights = [1.0] * len(answers)
    if len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    totals: dict[str, float] = {}
    for key, weight in zip(map(answer_key, answers), weights):
        if key is not None:
            totals[key] = totals.get(key, 0.0) + weight
    # dicts keep insertion order, so ties go to the first seen
    return max(totals, key=totals.get, default=None)


def majority_vote(answers: Sequence[str | None], correct: Sequence[float], scores: Sequence[float] | None) -> int:
    """The first sample whose answer is the most common one; on a tie the answer seen first wins.
    Samples without an answer do not vote (if none has one, sample 0)."""
    return _vote(answers, None)


def weighted_vote(answers: Sequence[str | None], correct: Sequence[float], scores: Sequence[float] | None) -> int:
    """The answer with the largest total weight exp(score - max score): under the Bradley-Terry
    model a reward model is trained with, exp(score) is a sample's strength."""
    scores = _need_scores(scores, "weighted_vote")
    top = max(scores)
    return _vote(answers, [math.exp(s - top) for s in scores])


def _vote(answers: Sequence[str | None], weights: Sequence[float] | None) -> int:
    """The first sample carrying `top_answer`'s winner; sample 0 if no sample has an answer."""
    winner = top_answer(answers, weights)
    if winner is None:
        return 0
    return [answer_key(a) for a in answers].index(winner)


RULES: dict[str, Rule] = {"oracle": oracle, "reward_model": reward_model_pick,
                          "majority_vote": majority_vote, "weighted_vote": weighted_vote}


def best_of_n(samples: Samples, rule: str | Rule, n: int) -> list[float]:
    """Per question, how often `rule` picks a right answer from n samples.

    The question's samples are cut into samples.n // n disjoint groups of n (leftovers unused);
    the result is the share of groups where the pick is right, which uses every sample instead
    of only the first n.
    """
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"unknown selection rule {rule!r}; known rules: {sorted(RULES)}")
        rule = RULES[rule]
    if not 1 <= n <= samples.n:
        raise ValueError(f"n must be between 1 and the {samples.n} samples drawn per question, got {n}")
    groups = samples.n // n
    result = []
    for q in range(len(samples.rows)):
        hits = 0.0
        for g in range(groups):
            part = slice(g * n, (g + 1) * n)
            scores = samples.scores[q][part] if samples.scores is not None else None
            pick = rule(samples.answers[q][part], samples.correct[q][part], scores)
            hits += samples.correct[q][part][pick]
        result.append(hits / groups)
    return result


def tokens_per_question(samples: Samples, n: int) -> float:
    """Mean tokens generated to answer one question with n samples (same groups as best_of_n)."""
    used = (samples.n // n) * n
    return sum(sum(t[:used]) for t in samples.tokens) / (len(samples.tokens) * (samples.n // n))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is right), from n samples of which c are
    right (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(samples: Samples, k: int) -> float:
    """pass@k averaged over the questions."""
    return sum(pass_at_k(samples.n, round(sum(c)), k) for c in samples.correct) / len(samples.correct)


def scaling_table(samples: Samples, rules: Iterable[str], ns: Iterable[int]) -> pd.DataFrame:
    """Accuracy and tokens per question for every rule and n: one row per (rule, n, level),
    where level is "all" or one of the rows' difficulty levels (accuracy and tokens over the
    questions of that level)."""
    levels = sorted({row["level"] for row in samples.rows})
    groups = {"all": list(range(len(samples.rows))),
              **{lvl: [q for q, row in enumerate(samples.rows) if row["level"] == lvl] for lvl in levels}}
    records = []
    for rule in rules:
        for n in ns:
            acc = best_of_n(samples, rule, n)
            for level, members in groups.items():
                records.append({"rule": rule, "n": n, "level": level,
                                "accuracy": sum(acc[q] for q in members) / len(members),
                                "tokens": tokens_per_question(samples.subset(members), n)})
    return pd.DataFrame.from_records(records)


def reward_model_misses(samples: Samples, n: int) -> pd.DataFrame:
    """The questions where a right answer was among the first n samples but the reward model
    scored a wrong one highest: its pick, the best right sample, and both scores."""
    if samples.scores is None:
        raise ValueError("reward_model_misses needs reward-model scores: call score_samples first")
    records = []
    for q, row in enumerate(samples.rows):
        correct, scores = samples.correct[q][:n], samples.scores[q][:n]
        pick = reward_model_pick(samples.answers[q][:n], correct, scores)
        right = [i for i in range(len(correct)) if correct[i] > 0.5]
        if right and correct[pick] < 0.5:
            best_right = max(right, key=lambda i: scores[i])
            records.append({"question": row["question"], "gold": row["answer"], "level": row["level"],
                            "picked_answer": samples.answers[q][pick], "picked_score": scores[pick],
                            "best_right_score": scores[best_right], "right_samples": len(right),
                            "picked": samples.completions[q][pick]})
    return pd.DataFrame.from_records(records, columns=[
        "question", "gold", "level", "picked_answer", "picked_score", "best_right_score",
        "right_samples", "picked"])


# The lecture's difficulty bands by the model's own pass@1 (Snell et al., 2024): easy above 0.8,
# medium 0.2-0.8, hard below 0.1. Here hard is everything below 0.2, so every question has a band.
EASY_ABOVE = 0.8
HARD_BELOW = 0.2


def difficulty_bands(estimate: Samples) -> dict[str, list[int]]:
    """Question indices per band ("easy", "medium", "hard") by each question's share of right
    samples p in `estimate`: easy p > EASY_ABOVE, hard p < HARD_BELOW, medium in between.

    Estimate the difficulty on samples that the accuracy is not then measured on (for instance
    samples 17-32 to bin, 1-16 to measure): binning and measuring on the same samples would make
    the hard band look hopeless and the easy band perfect by construction.
    """
    bands: dict[str, list[int]] = {"easy": [], "medium": [], "hard": []}
    for q, correct in enumerate(estimate.correct):
        p = sum(correct) / len(correct)
        bands["easy" if p > EASY_ABOVE else "hard" if p < HARD_BELOW else "medium"].append(q)
    return bands
