"""Reward functions for GRPO/PPO labs, with TRL's signature `f(completions, **kwargs) -> list[float]`.

Responses follow the course convention `<think>REASONING</think>ANSWER`.

Safety rules shared by every public reward function here:
- it never raises on any completion (str, conversational list[dict], or garbage such as None);
- it never evaluates model output as code: we never call eval/exec; math-verify parses LaTeX with an ANTLR
  grammar, and its plain-expression path hands SymPy only strings of digits, operators and parentheses;
- its time is bounded: string scans are linear (str.find / str.count / one regex over a bounded tail), and
  the only expensive step, math-verify, gets at most MATH_VERIFY_SECONDS per completion and
  MATH_VERIFY_BATCH_SECONDS per call (the rest of a batch is compared by exact number only, with a warning);
- it accepts and ignores unknown kwargs (TRL passes `prompts`, `completion_ids`, `trainer_state`, ...).
The math-verify time limit uses SIGALRM (taken over for the duration of each check), which only works in the
main thread. Called from another thread, the check runs in a helper process (its own main thread) with the
same limits, so a reward gives the same value on any thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

from math_verify import parse, verify

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
BOXED = "\\boxed{"

ANSWER_TAIL_CHARS = 2_000  # extract_answer only looks at this many final characters of the answer part
MAX_BRACE_DEPTH = 10  # a \boxed{...} nested deeper than this is ignored
MATH_VERIFY_SECONDS = 1.0  # time budget for math-verify (parse + verify) per answers_match call
MATH_VERIFY_BATCH_SECONDS = 5.0  # ... and per accuracy_reward call, over all its completions
WORKER_START_SECONDS = 60.0  # how long a thread waits for the math-verify helper process to start

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
    2. else the last number (-12, 3.14, 3/4; thousands separators removed: "1,234" -> "1234"),
       unless it is an exponent (`2^19`, `10^{19}`, `2**19`, `1e19`: see _is_exponent);
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
    last = None
    for last in _NUMBER_RE.finditer(tail):
        pass
    if last is None or _is_exponent(tail, last.start()):
        return None
    return last.group().replace(",", "")


def _is_exponent(text: str, start: int) -> bool:
    """True if the number starting at text[start] is an exponent: `2^19`, `10^{19}`, `2**19`, `1e19`.

    "The answer is 10^{19}" does not answer 19, so an exponent is never taken as the final answer
    (otherwise a policy learns that `1e19` is graded correct for gold 19).
    """
    before = text[:start].rstrip(" {")
    if before.endswith(("^", "**")):
        return True
    return before[-1:] in ("e", "E") and before[-2:-1].isdigit() and len(before) == start


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


def _math_verify_here(pred: str, gold: str, seconds: float) -> bool:
    """math-verify equivalence in this (main) thread, within `seconds`; any failure -> False.

    math-verify's own timeouts use signal.alarm, which has 1 s granularity per step. So we disable them
    (parsing_timeout=None, timeout_seconds=None) and bound the whole check with one _time_limit instead.
    """
    try:
        with _time_limit(seconds):
            # \boxed{...} makes math-verify read the string as LaTeX (e.g. "\dfrac{1}{2}", "2^{10}").
            gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
            pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
            return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except _VerifyTimeout:
        return False
    except Exception:  # third-party parsing of arbitrary model output; any failure means "no match"
        return False


def _serve() -> None:
    """The helper process (`python -m labkit.rewards`): one JSON request [pred, gold, seconds] per stdin
    line, one JSON answer (true/false) per stdout line; math-verify runs in this process's main thread."""
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        pred, gold, seconds = json.loads(line)
        print(json.dumps(_math_verify_here(pred, gold, seconds)), flush=True)


class _VerifyWorker:
    """One helper process that runs math-verify for callers outside the main thread (where SIGALRM cannot
    bound its time). Requests are serialised by a lock; a check that overruns its time is answered False
    and the process is killed (the next request starts a fresh one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None

    def _read(self, seconds: float) -> Any:
        """The helper's next answer line, or raise TimeoutError if none arrives within `seconds`."""
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], seconds)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise TimeoutError
        return json.loads(line)

    def _start(self) -> None:
        if os.name != "posix":
            raise RuntimeError("the math-verify helper process needs a POSIX system (Linux, macOS)")
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "labkit.rewards"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            if self._read(WORKER_START_SECONDS) != "ready":
                raise TimeoutError
        except (TimeoutError, ValueError):
            self._stop()
            raise RuntimeError(f"the math-verify helper process did not start within {WORKER_START_SECONDS} s")

    def _stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def ensure_started(self) -> None:
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self._stop()
                self._start()

    def match(self, pred: str, gold: str, seconds: float) -> bool:
        self.ensure_started()
        with self.lock:
            try:
                assert self.process is not None and self.process.stdin is not None
                self.process.stdin.write(json.dumps([pred, gold, seconds]) + "\n")
                self.process.stdin.flush()
                return bool(self._read(seconds + 0.5))  # the helper bounds itself; this is the backstop
            except (TimeoutError, ValueError, OSError, AssertionError):  # overran, or died
                self._stop()
                return False


_WORKER = _VerifyWorker()


def _on_main_thread() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _math_verify_match(pred: str, gold: str, seconds: float | None = None) -> bool:
    """math-verify equivalence of two LaTeX/plain answers within `seconds` (default MATH_VERIFY_SECONDS).

    On the main thread it runs here under a SIGALRM deadline; on any other thread in the helper process
    (_VerifyWorker), which has its own main thread, so the answer is the same on every thread. If the helper
    cannot start, the check answers False and warns (it never hangs and never raises).
    """
    seconds = MATH_VERIFY_SECONDS if seconds is None else seconds
    if _on_main_thread():
        return _math_verify_here(pred, gold, seconds)
    try:
        return _WORKER.match(pred, gold, seconds)
    except RuntimeError as error:
        warnings.warn(f"answers_match: {error}; {pred!r} was compared by exact number only.",
                      RuntimeWarning, stacklevel=3)
        return False


def answers_match(pred: str | None, gold: str, seconds: float | None = None) -> bool:
    """True iff the predicted answer equals the gold answer.

    1. pred None -> False.
    2. Both plain numbers -> exact comparison with Fraction ("0.5" == "1/2", "1,234" == "1234"); no SymPy.
    3. Otherwise math-verify (SymPy) equivalence, e.g. "\\frac{1}{2}" == "0.5". This is symbolic math, not
       code execution, but note it simplifies: "1+1" matches "2". Bounded by `seconds` (default
       MATH_VERIFY_SECONDS); `seconds <= 0` skips math-verify (step 2 only). Same answer on any thread.
    """
    if pred is None:
        return False
    gold = str(gold)
    pred_value, gold_value = as_fraction(pred), as_fraction(gold)
    if pred_value is not None and gold_value is not None:
        return pred_value == gold_value
    if seconds is not None and seconds <= 0:
        return False
    return _math_verify_match(pred, gold, seconds)


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
    `completions`. Time: linear scans, plus math-verify for answers that are not plain numbers, at most
    MATH_VERIFY_SECONDS each and MATH_VERIFY_BATCH_SECONDS for the whole call. When the batch budget is
    spent (a policy emitting expensive LaTeX), the remaining completions are compared by exact number only
    and a RuntimeWarning says how many.
    """
    if len(answer) != len(completions):
        raise RewardConfigError(
            f"accuracy_reward got {len(completions)} completions but {len(answer)} gold answers; "
            "pass one gold answer per completion (TRL does this from the dataset's 'answer' column)."
        )
    if not _on_main_thread():
        try:  # start the helper process now, so its start-up does not eat this batch's budget
            _WORKER.ensure_started()
        except RuntimeError:
            pass  # _math_verify_match warns per answer
    deadline = time.monotonic() + MATH_VERIFY_BATCH_SECONDS
    rewards, exact_only = [], 0
    for completion, gold in zip(completions, answer):
        if not isinstance(gold, (str, int)) or isinstance(gold, bool):
            raise RewardConfigError(f"gold answers must be strings such as '19', got {type(gold).__name__}.")
        pred = extract_answer(completion_text(completion))
        seconds = min(MATH_VERIFY_SECONDS, deadline - time.monotonic())
        if seconds <= 0 and pred is not None and (as_fraction(pred) is None or as_fraction(str(gold)) is None):
            exact_only += 1
        rewards.append(1.0 if answers_match(pred, str(gold), seconds=seconds) else 0.0)
    if exact_only:
        warnings.warn(
            f"accuracy_reward: math-verify's budget of {MATH_VERIFY_BATCH_SECONDS} s per call was spent; "
            f"{exact_only} of {len(completions)} answers were compared by exact number only (scored 0 here).",
            RuntimeWarning,
            stacklevel=2,
        )
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


if __name__ == "__main__":
    _serve()
