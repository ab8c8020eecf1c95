"""Reward functions for GRPO/PPO labs, with TRL's signature `f(completions, **kwargs) -> list[float]`.

Responses follow the course convention `<think>REASONING</think>ANSWER`.

Safety rules shared by every public reward function here:
- it never raises on any completion (str, conversational list[dict], or garbage such as None);
- it never evaluates model output as code: we never call eval/exec; math-verify parses LaTeX with an ANTLR
  grammar, and its plain-expression path hands SymPy only strings of digits, operators and parentheses;
- its time per completion is bounded: string scans are linear (str.find / str.count / one regex over a
  bounded tail), and the only expensive step, math-verify, gets MATH_VERIFY_SECONDS per completion;
- it accepts and ignores unknown kwargs (TRL passes `prompts`, `completion_ids`, `trainer_state`, ...).
The math-verify time limit uses SIGALRM (taken over for the duration of each check), so it only works in the
main thread; in other threads answers_match compares exact numbers only and emits a RuntimeWarning.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

from math_verify import parse, verify

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
BOXED = "\\boxed{"

ANSWER_TAIL_CHARS = 2_000  # extract_answer only looks at this many final characters of the answer part
MAX_BRACE_DEPTH = 10  # a \boxed{...} nested deeper than this is ignored
MATH_VERIFY_SECONDS = 1.0  # time budget for math-verify (parse + verify) per answers_match call

# A number: "-12", "1,234" (thousands separators), "3.14", "3/4". The lookbehind stops a match from
# starting in the middle of a number; no nested quantifiers, so matching is linear in the text length.
_NUMBER_RE = re.compile(r"(?<![0-9])-?(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+|/[0-9]+)?")
# Full-width digits and minus signs (common in Chinese text) -> ASCII.
_TO_ASCII = str.maketrans("０１２３４５６７８９－−", "0123456789--")

RewardFunc = Callable[..., list[float]]


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify logs "Timeout is disabled ... provide the logic for timeout interruption yourself" when its
    own (signal-based) timeouts are off. We turn them off on purpose and bound the time in _time_limit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())


class RewardConfigError(ValueError):
    """A reward function was set up or called with inputs that cannot work (not a model-output problem)."""


class _VerifyTimeout(BaseException):
    """Raised by our SIGALRM handler. A BaseException, so `except Exception` inside libraries can't swallow it."""


def completion_text(completion: Any) -> str:
    """Text of one completion.

    str -> itself; conversational list of messages -> the concatenated `content` of the assistant messages;
    anything else (None, numbers, malformed messages) -> "". Never raises.
    """
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, list):
        return ""
    parts = []
    for message in completion:
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
    return "".join(parts)


def split_think(text: str) -> tuple[str | None, str]:
    """Split a response into (reasoning, answer part).

    reasoning = the text inside the FIRST `<think>...</think>` block;
    answer part = the text after the LAST `</think>`.
    If there is no well-formed block (a `<think>` followed later by `</think>`), returns (None, text):
    the whole text is the answer part. This includes completions that contain only `</think>`
    (e.g. when a chat template already put `<think>` into the prompt).
    """
    start = text.find(THINK_OPEN)
    if start == -1:
        return None, text
    end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
    if end == -1:
        return None, text
    reasoning = text[start + len(THINK_OPEN) : end]
    answer = text[text.rfind(THINK_CLOSE) + len(THINK_CLOSE) :]
    return reasoning, answer


def _balanced_content(text: str, start: int) -> str | None:
    """Text from `start` up to the `}` that closes an already-open `{`; None if unbalanced or too deep."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return None
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a response, or None.

    Rule, applied to the last ANSWER_TAIL_CHARS characters of the answer part (see split_think), after
    mapping full-width digits/minus signs to ASCII:
    1. the content of the last `\\boxed{...}` if its braces balance within MAX_BRACE_DEPTH and it is non-empty;
    2. else the last number (-12, 3.14, 3/4; thousands separators removed: "1,234" -> "1234");
    3. else None.
    Only a bounded tail is scanned, so the time is bounded even for megabyte responses; an answer that starts
    more than ANSWER_TAIL_CHARS characters before the end is not found.
    """
    _, answer = split_think(text)
    tail = answer[-ANSWER_TAIL_CHARS:].translate(_TO_ASCII)
    box = tail.rfind(BOXED)
    if box != -1:
        content = _balanced_content(tail, box + len(BOXED))
        if content is not None and content.strip():
            return content.strip()
    numbers = _NUMBER_RE.findall(tail)
    if not numbers:
        return None
    return numbers[-1].replace(",", "")


def as_fraction(text: str) -> Fraction | None:
    """Exact value of a plain number string ("19", "-3", "1,234", "0.5", "3/4"), else None."""
    text = text.strip().translate(_TO_ASCII)
    if _NUMBER_RE.fullmatch(text) is None:
        return None
    try:
        return Fraction(text.replace(",", ""))
    except (ValueError, ZeroDivisionError):  # "1/0", or more digits than int() accepts
        return None


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _VerifyTimeout in the main thread after `seconds` (SIGALRM; we take it over for the duration).

    A timer the caller had running (a watchdog, pytest-timeout's signal mode) is given back afterwards
    with what remains of it, so it still fires (at once, if it fell due while we held the signal).
    """

    def on_alarm(signum: int, frame: Any) -> None:
        raise _VerifyTimeout

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    # Keep firing every 0.1 s after the deadline, in case some library code swallows the first alarm.
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    start = time.monotonic()
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:  # restore the handler even if a last alarm fires right here
            signal.signal(signal.SIGALRM, old_handler)
            if old_delay > 0:
                left = old_delay - (time.monotonic() - start)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), old_interval)


def _math_verify_match(pred: str, gold: str) -> bool:
    """math-verify equivalence of two LaTeX/plain answers, within MATH_VERIFY_SECONDS; any failure -> False.

    math-verify's own timeouts use signal.alarm, which only works in the main thread and has 1 s granularity
    per step. So we disable them (parsing_timeout=None, timeout_seconds=None) and bound the whole check with
    one _time_limit instead.
    Outside the main thread no signal-based bound is possible: we skip math-verify and warn.
    """
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        warnings.warn(
            "answers_match: math-verify is skipped outside the main thread (its time limit needs SIGALRM); "
            "only exact numeric answers are compared. Call reward functions from the main thread.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    try:
        with _time_limit(MATH_VERIFY_SECONDS):
            # \boxed{...} makes math-verify read the string as LaTeX (e.g. "\dfrac{1}{2}", "2^{10}").
            gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
            pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
            return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except _VerifyTimeout:
        return False
    except Exception:  # third-party parsing of arbitrary model output; any failure means "no match"
        return False


def answers_match(pred: str | None, gold: str) -> bool:
    """True iff the predicted answer equals the gold answer.

    1. pred None -> False.
    2. Both plain numbers -> exact comparison with Fraction ("0.5" == "1/2", "1,234" == "1234"); no SymPy.
    3. Otherwise math-verify (SymPy) equivalence, e.g. "\\frac{1}{2}" == "0.5". This is symbolic math, not
       code execution, but note it simplifies: "1+1" matches "2". Bounded by MATH_VERIFY_SECONDS.
    """
    if pred is None:
        return False
    gold = str(gold)
    pred_value, gold_value = as_fraction(pred), as_fraction(gold)
    if pred_value is not None and gold_value is not None:
        return pred_value == gold_value
    return _math_verify_match(pred, gold)


def _format_ok(text: str) -> bool:
    body = text.lstrip()
    if not body.startswith(THINK_OPEN) or body.count(THINK_OPEN) != 1 or body.count(THINK_CLOSE) != 1:
        return False
    reasoning, _, answer = body[len(THINK_OPEN) :].partition(THINK_CLOSE)
    return bool(reasoning.strip()) and bool(answer.strip())


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 iff the completion is `<think>REASONING</think>ANSWER`, else 0.0.

    Exactly: optional leading whitespace, then `<think>`, non-blank REASONING, `</think>`, non-blank ANSWER,
    and no other `<think>`/`</think>` anywhere. Linear time in the completion length.
    """
    return [1.0 if _format_ok(completion_text(c)) else 0.0 for c in completions]


def accuracy_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """1.0 iff answers_match(extract_answer(completion), gold), else 0.0.

    `answer` is the dataset's gold-answer column (TRL passes dataset columns as kwargs), aligned with
    `completions`. Time per completion: linear scans plus at most MATH_VERIFY_SECONDS of math-verify.
    """
    if len(answer) != len(completions):
        raise RewardConfigError(
            f"accuracy_reward got {len(completions)} completions but {len(answer)} gold answers; "
            "pass one gold answer per completion (TRL does this from the dataset's 'answer' column)."
        )
    rewards = []
    for completion, gold in zip(completions, answer):
        if not isinstance(gold, (str, int)) or isinstance(gold, bool):
            raise RewardConfigError(f"gold answers must be strings such as '19', got {type(gold).__name__}.")
        pred = extract_answer(completion_text(completion))
        rewards.append(1.0 if answers_match(pred, str(gold)) else 0.0)
    return rewards


def overlong_penalty(max_completion_len: int, cache_len: int) -> RewardFunc:
    """DAPO soft overlong punishment, as a reward function named "overlong_penalty".

    For a completion of L tokens, with max = max_completion_len and cache = cache_len:
        0                          if L <= max - cache
        (max - cache - L) / cache  if max - cache < L <= max   (falls linearly from 0 to -1)
        -1                         if L > max
    L is len(completion_ids[i]); TRL passes `completion_ids` to every reward function.
    """
    for name, value in (("max_completion_len", max_completion_len), ("cache_len", cache_len)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RewardConfigError(f"{name} must be an int, got {value!r}.")
    if not 0 < cache_len <= max_completion_len:
        raise RewardConfigError(
            f"need 0 < cache_len <= max_completion_len, got cache_len={cache_len}, "
            f"max_completion_len={max_completion_len}; e.g. overlong_penalty(1024, 256)."
        )
    soft_limit = max_completion_len - cache_len

    def reward(
        completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any
    ) -> list[float]:
        if completion_ids is None:
            raise RewardConfigError(
                "overlong_penalty needs token lengths: TRL passes `completion_ids` (one token-id list per "
                "completion) to reward functions; outside TRL call it as f(completions, completion_ids=ids)."
            )
        if len(completion_ids) != len(completions):
            raise RewardConfigError(
                f"got {len(completions)} completions but {len(completion_ids)} completion_ids; they must align."
            )
        rewards = []
        for ids in completion_ids:
            length = len(ids)
            if length <= soft_limit:
                rewards.append(0.0)
            elif length <= max_completion_len:
                rewards.append((soft_limit - length) / cache_len)
            else:
                rewards.append(-1.0)
        return rewards

    reward.__name__ = reward.__qualname__ = "overlong_penalty"
    return reward


class CombinedReward:
    """Weighted sum of reward functions that remembers each component's values (see combine_rewards)."""

    def __init__(self, components: dict[str, tuple[RewardFunc, float]]) -> None:
        if not isinstance(components, dict) or not components:
            raise RewardConfigError("components must be a non-empty dict {name: (reward_func, weight)}.")
        for name, component in components.items():
            if not (isinstance(component, tuple) and len(component) == 2 and callable(component[0])):
                raise RewardConfigError(
                    f"component {name!r} must be a (reward_func, weight) tuple, got {component!r}."
                )
            if not isinstance(component[1], (int, float)) or isinstance(component[1], bool):
                raise RewardConfigError(f"weight of component {name!r} must be a number, got {component[1]!r}.")
        self.components = components
        self.__name__ = "combined"  # TRL logs a reward under its __name__
        self.last: dict[str, list[float]] = {}  # per-completion values of each component, from the last call
        self.history: list[dict[str, float]] = []  # per call: the mean of each component

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """sum_k weight_k * reward_k(completions, **kwargs), per completion."""
        totals = [0.0] * len(completions)
        values: dict[str, list[float]] = {}
        for name, (func, weight) in self.components.items():
            rewards = [float(r) for r in func(completions, **kwargs)]
            if len(rewards) != len(completions):
                raise RewardConfigError(
                    f"component {name!r} returned {len(rewards)} rewards for {len(completions)} completions."
                )
            values[name] = rewards
            totals = [total + weight * r for total, r in zip(totals, rewards)]
        self.last = values
        self.history.append({name: sum(v) / len(v) if v else float("nan") for name, v in values.items()})
        return totals


def combine_rewards(components: dict[str, tuple[RewardFunc, float]]) -> CombinedReward:
    """One reward function `combined` = sum of weight * component, e.g.
    combine_rewards({"format": (format_reward, 0.2), "accuracy": (accuracy_reward, 1.0)}).

    After each call, `.last[name]` holds that component's per-completion rewards and `.history` gets one
    {name: mean} dict, so a notebook can plot every component. For GRPOTrainer you don't need this: TRL
    accepts a list of reward_funcs plus GRPOConfig(reward_weights=[...]) and logs `rewards/<name>/mean`
    itself. This helper is for labkit's own loops (PPO, best-of-N).
    """
    return CombinedReward(components)
