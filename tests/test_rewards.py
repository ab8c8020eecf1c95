"""Tests for labkit.rewards: hand-computed examples, then property tests on random and adversarial input."""

from __future__ import annotations

import math
import random
import threading
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import rewards
from labkit.rewards import (
    RewardConfigError,
    accuracy_reward,
    answers_match,
    combine_rewards,
    completion_text,
    extract_answer,
    format_reward,
    overlong_penalty,
    split_think,
)

PER_CALL_SECONDS = 2.0  # the issue asks for an explicit per-call time bound on adversarial input


# ---------------------------------------------------------------- hand examples


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>12+7=19</think>19", "<think>12+7=19</think>19"),
        ([{"role": "assistant", "content": "<think>a</think>19"}], "<think>a</think>19"),
        (
            [
                {"role": "user", "content": "7+12?"},
                {"role": "assistant", "content": "<think>a"},
                {"role": "assistant", "content": "</think>19"},
            ],
            "<think>a</think>19",
        ),
        ([{"role": "assistant"}, {"content": "x"}, "junk", {"role": "assistant", "content": 5}], ""),
        (None, ""),
        (19, ""),
        ({"role": "assistant", "content": "19"}, ""),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>12+7=19</think>19", ("12+7=19", "19")),
        ("  <think>先算 12+7</think>答案是 19", ("先算 12+7", "答案是 19")),
        ("<think>a</think>b<think>c</think>d", ("a", "d")),  # first reasoning, text after the last </think>
        ("<think>a</think>b</think>c", ("a", "c")),
        ("<think>never closed 19", (None, "<think>never closed 19")),
        ("</think>19", (None, "</think>19")),  # close without open: not a well-formed block
        ("no tags 19", (None, "no tags 19")),
        ("<think></think>", ("", "")),
    ],
)
def test_split_think(text, expected):
    assert split_think(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>12+7=19</think>19", "19"),
        ("<think>12+7=19</think>The answer is 1,234.", "1234"),
        ("<think>先算</think>答案是 -3。", "-3"),
        ("<think>先算</think>答案是１９。", "19"),  # full-width digits
        ("<think>1+2=3</think>So x = 3/4 of it.", "3/4"),
        ("<think>q</think>It is 0.50 now", "0.50"),
        ("<think>I think 7</think>\\boxed{19}", "19"),
        ("<think>x</think>\\boxed{\\frac{1}{2}} and then 7", "\\frac{1}{2}"),  # boxed wins over a later number
        ("<think>x</think>\\boxed{3} then \\boxed{ 4 }", "4"),  # the last box
        ("<think>x</think>\\boxed{}7", "7"),  # empty box: fall back to the last number
        ("<think>x</think>\\boxed{12", "12"),  # unbalanced box: fall back
        ("<think>x</think>\\boxed{" + "{" * 20 + "1" + "}" * 21, "1"),  # too deep: fall back
        ("<think>the answer is 19</think>no number here", None),  # only the answer part counts
        ("<think>x</think>10-3", "3"),  # a minus right after a digit is subtraction, not a sign
        ("<think>x</think>1,2345", "2345"),  # not a thousands separator
        ("<think>x</think>", None),
        ("<think>x</think>" + "1" + "a" * 3_000, None),  # beyond the 2,000-character tail
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("19", "19", True),
        ("19.0", "19", True),
        ("1234", "1,234", True),
        ("1/2", "0.5", True),
        ("0.5", "1/2", True),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("-3", "3", False),
        ("18", "19", False),
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{38}{2}", "19", True),
        ("2^{10}", "1024", True),
        ("\\frac{1}{3}", "0.5", False),
        (None, "19", False),
        ("", "19", False),
        ("__import__('os')", "2", False),
    ],
)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_plain_numbers_never_reach_math_verify(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("math-verify called for plain numbers")

    monkeypatch.setattr(rewards, "parse", fail)
    assert answers_match("1,234", "1234") is True
    assert answers_match("7", "19") is False


def test_math_verify_errors_mean_no_match(monkeypatch):
    def broken_parse(*args, **kwargs):
        raise RuntimeError("parser crashed")

    monkeypatch.setattr(rewards, "parse", broken_parse)
    assert answers_match("\\frac{38}{2}", "19") is False


def slow_parse(*args, **kwargs):
    """A math-verify parse that never returns (only the time limit stops it)."""
    while True:
        time.sleep(0.01)


def test_math_verify_time_limit(monkeypatch):
    monkeypatch.setattr(rewards, "parse", slow_parse)
    monkeypatch.setattr(rewards, "MATH_VERIFY_SECONDS", 0.05)
    start = time.perf_counter()
    assert answers_match("\\frac{38}{2}", "19") is False
    assert time.perf_counter() - start < 1.0


# Right answers to "19" that need math-verify (not plain numbers), as a policy might write them.
PLAUSIBLE_RIGHT = ["\\boxed{\\frac{38}{2}}", "\\boxed{19\\text{ apples}}", "\\boxed{19.0}", "\\boxed{\\dfrac{57}{3}}",
                   "\\boxed{18+1}", "\\boxed{\\sqrt{361}}", "\\boxed{19}", "$19$", "\\(19\\)", "19 apples",
                   "<think>9+10</think>\\boxed{19}", "<think>x</think>The answer is \\boxed{ 19 }."]


def _in_thread(fn):
    """fn() run on a fresh thread, with the warnings it raised."""
    result = {}

    def worker():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result["value"] = fn()
        result["warnings"] = [str(w.message) for w in caught]

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    return result["value"], result["warnings"]


def test_rewards_from_a_thread_equal_rewards_on_the_main_thread():
    golds = ["19"] * len(PLAUSIBLE_RIGHT)
    on_main = accuracy_reward(PLAUSIBLE_RIGHT, answer=golds)
    assert on_main == [1.0] * len(PLAUSIBLE_RIGHT)
    on_thread, caught = _in_thread(lambda: accuracy_reward(PLAUSIBLE_RIGHT, answer=golds))
    assert on_thread == on_main and caught == []
    latex, _ = _in_thread(lambda: (answers_match("\\frac{1}{2}", "0.5"), answers_match("\\frac{1}{3}", "0.5")))
    assert latex == (True, False)


def test_a_thread_check_that_overruns_is_cut_and_the_helper_restarts():
    bomb = "\\boxed{9^{9^{9^{9^{9}}}}}"
    start = time.perf_counter()
    value, _ = _in_thread(lambda: answers_match(bomb, "19", seconds=0.2))
    assert value is False and time.perf_counter() - start < 0.2 + 0.5 + 2.0  # + backstop + a start-up
    again, _ = _in_thread(lambda: answers_match("\\frac{38}{2}", "19"))
    assert again is True


@pytest.mark.parametrize("text", ["1e19", "10^19", "2^19", "5\\times 10^{19}", "2**19", "1E19", "x^{ 19}",
                                  "<think>a</think>The answer is 10^{19}.", "\\boxed{10^{19}}", "1e-19"])
def test_an_exponent_is_not_the_answer(text):
    assert accuracy_reward([text], answer=["19"]) == [0.0]
    assert accuracy_reward([text], answer=["-19"]) == [0.0]


@pytest.mark.parametrize("text, expected", [("2^10 = 1024", "1024"), ("19e", "19"), ("x = 19", "19"),
                                            ("room 3 e 19", "19")])
def test_numbers_after_an_exponent_still_count(text, expected):
    assert extract_answer(text) == expected


def test_math_verify_time_is_bounded_per_batch(monkeypatch):
    monkeypatch.setattr(rewards, "parse", slow_parse)
    monkeypatch.setattr(rewards, "MATH_VERIFY_SECONDS", 0.2)
    monkeypatch.setattr(rewards, "MATH_VERIFY_BATCH_SECONDS", 0.5)
    bombs = ["\\boxed{\\frac{1}{2}}"] * 64 + ["<think>x</think>19"]
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="61 of 65 answers were compared by exact number only"):
        values = accuracy_reward(bombs, answer=["19"] * len(bombs))
    assert time.perf_counter() - start < 0.5 + 0.2 + 0.5
    assert values == [0.0] * 64 + [1.0]  # exact numbers are still graded after the budget is spent


def test_a_real_latex_bomb_batch_is_bounded():
    bombs = ["<think>x</think>\\boxed{9^{9^{9^{9}}}}"] * 64
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert accuracy_reward(bombs, answer=["19"] * 64) == [0.0] * 64
    assert time.perf_counter() - start < rewards.MATH_VERIFY_BATCH_SECONDS + rewards.MATH_VERIFY_SECONDS + 1.0


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>12+7=19</think>19", 1.0),
        ("\n  <think>先算 12+7=19</think>答案是 19", 1.0),
        ("<think>x</think>\\boxed{19}", 1.0),
        ([{"role": "assistant", "content": "<think>x</think>19"}], 1.0),
        ("Sure! <think>x</think>19", 0.0),  # text before <think>
        ("<think>   </think>19", 0.0),  # blank reasoning
        ("<think>x</think>  \n", 0.0),  # blank answer
        ("<think>x</think>19</think>", 0.0),  # extra closing tag
        ("<think>a</think><think>b</think>19", 0.0),  # two think blocks
        ("<think>a<think>b</think>19", 0.0),  # nested opening tag
        ("<think>x 19", 0.0),  # missing </think>
        ("</think>19", 0.0),  # missing <think>
        ("19", 0.0),
        (None, 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward([completion]) == [expected]


def test_accuracy_reward_batch():
    completions = [
        "<think>12+7=19</think>19",  # en, correct
        "<think>12+7=18</think>18",  # en, wrong
        "<think>先算 12+7</think>答案是 19。",  # zh, correct
        "<think>先算 12+7</think>答案是 20。",  # zh, wrong
        "<think>x</think>The answer is 1,234.",  # thousands separator
        "<think>x</think>\\boxed{\\frac{1}{2}}",  # LaTeX vs decimal gold
        "<think>x</think>\\boxed{-3}",  # negative
        "<think>broken 19",  # format broken, but the last number is still the answer
        [{"role": "assistant", "content": "<think>x</think>19"}],  # conversational
        None,  # garbage
    ]
    golds = ["19", "19", "19", "19", "1234", "0.5", "-3", "19", "19", "19"]
    expected = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert accuracy_reward(completions, answer=golds, prompts=["p"] * 10, trainer_state=None, foo=1) == expected


def test_accuracy_reward_rejects_misaligned_or_bad_gold():
    with pytest.raises(RewardConfigError, match="gold answers"):
        accuracy_reward(["19", "19"], answer=["19"])
    with pytest.raises(RewardConfigError, match="strings"):
        accuracy_reward(["19"], answer=[None])
    assert accuracy_reward(["<think>x</think>19"], answer=[19]) == [1.0]  # int gold column is fine


def test_model_output_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    attacks = [
        f"<think>x</think>__import__('os').system('touch {marker}')",
        f"<think>x</think>\\boxed{{__import__('os').system('touch {marker}')}}",
        f"<think>x</think>$__import__('os').system('touch {marker}')$",
        f"<think>x</think>\\boxed{{eval(\"__import__('os').system('touch {marker}')\")}}",
    ]
    for attack in attacks:
        answers_match(attack, "0")
        answers_match(extract_answer(attack), "0")
        accuracy_reward([attack], answer=["0"])
    assert not marker.exists()
    assert accuracy_reward(["<think>x</think>__import__('os').system('ls')"], answer=["0"]) == [0.0]
    # "1+1" after </think> is not evaluated: extraction takes the last number, "1", which is not "2".
    assert extract_answer("<think>x</think>1+1") == "1"
    assert accuracy_reward(["<think>x</think>1+1"], answer=["2"]) == [0.0]


def test_boxed_expressions_are_compared_symbolically():
    # Documented behaviour: a boxed expression goes to math-verify, which simplifies it with SymPy.
    assert accuracy_reward(["<think>x</think>\\boxed{1+1}"], answer=["2"]) == [1.0]


@pytest.mark.parametrize(
    "length, expected",
    # max_completion_len=10, cache_len=4: soft limit 6; (6 - L) / 4 between 7 and 10; -1 above 10.
    [(0, 0.0), (5, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (9, -0.75), (10, -1.0), (11, -1.0), (1000, -1.0)],
)
def test_overlong_penalty_values(length, expected):
    penalty = overlong_penalty(max_completion_len=10, cache_len=4)
    assert penalty(["whatever"], completion_ids=[[7] * length], prompts=["p"]) == [expected]


def test_overlong_penalty_whole_window():
    penalty = overlong_penalty(max_completion_len=8, cache_len=8)  # soft limit 0: every token costs 1/8
    ids = [[1] * n for n in (0, 1, 4, 8, 9)]
    assert penalty([""] * 5, completion_ids=ids) == [0.0, -0.125, -0.5, -1.0, -1.0]
    assert penalty.__name__ == "overlong_penalty"


@pytest.mark.parametrize("max_len, cache_len", [(10, 0), (10, 11), (10, -1), (0, 0), (10.0, 4), (10, 4.0), (10, True)])
def test_overlong_penalty_validates_arguments(max_len, cache_len):
    with pytest.raises(RewardConfigError):
        overlong_penalty(max_len, cache_len)


def test_overlong_penalty_needs_completion_ids():
    penalty = overlong_penalty(10, 4)
    with pytest.raises(RewardConfigError, match="completion_ids"):
        penalty(["<think>x</think>19"])
    with pytest.raises(RewardConfigError, match="align"):
        penalty(["a", "b"], completion_ids=[[1]])


def test_combine_rewards_weights_last_and_history():
    combined = combine_rewards({"format": (format_reward, 0.5), "accuracy": (accuracy_reward, 1.0)})
    assert combined.__name__ == "combined"
    completions = ["<think>x</think>19", "<think>x</think>18", "broken 19"]
    totals = combined(completions, answer=["19", "19", "19"], prompts=["p"] * 3, trainer_state=None)
    assert totals == [1.5, 0.5, 1.0]
    assert combined.last == {"format": [1.0, 1.0, 0.0], "accuracy": [1.0, 0.0, 1.0]}
    assert combined.history == [{"format": pytest.approx(2 / 3), "accuracy": pytest.approx(2 / 3)}]

    combined(["<think>x</think>19"], answer=["7"])
    assert combined.history[1] == {"format": 1.0, "accuracy": 0.0}
    assert len(combined.history) == 2


def test_combine_rewards_with_overlong_penalty():
    combined = combine_rewards({"accuracy": (accuracy_reward, 1.0), "overlong": (overlong_penalty(10, 4), 2.0)})
    completions = ["<think>x</think>19", "<think>x</think>19"]
    totals = combined(completions, answer=["19", "19"], completion_ids=[[1] * 3, [1] * 8])
    assert totals == [1.0, 0.0]  # 1 + 2 * 0 and 1 + 2 * (-0.5)


@pytest.mark.parametrize(
    "components",
    [{}, {"a": format_reward}, {"a": (format_reward,)}, {"a": (format_reward, "1")}, {"a": ("f", 1.0)}],
)
def test_combine_rewards_validates_components(components):
    with pytest.raises(RewardConfigError):
        combine_rewards(components)


# ---------------------------------------------------------------- property tests

PIECES = [
    "<think>", "</think>", "\\boxed{", "{", "}", "\\frac{", "1", "-", ",", "/", ".", "19",
    "答案是", "\x00", " ", "\n",
]
texts = st.one_of(
    st.text(),  # hypothesis text is surrogate-free unicode by default
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=40).map("".join),
)
completions_strategy = st.one_of(
    texts,
    texts.map(lambda t: [{"role": "assistant", "content": t}]),
    st.none(),
    st.integers(),
    st.lists(st.dictionaries(st.sampled_from(["role", "content"]), st.one_of(st.text(), st.none())), max_size=3),
)


def check_all_rewards(completions: list, golds: list[str]) -> None:
    """Every reward returns one float per completion, in its documented range, without raising."""
    ids = [[0] * (i * 3) for i in range(len(completions))]
    combined = combine_rewards({"format": (format_reward, 0.5), "accuracy": (accuracy_reward, 1.0)})
    results = {
        "format": (format_reward(completions, answer=golds), 0.0, 1.0),
        "accuracy": (accuracy_reward(completions, answer=golds, completion_ids=ids), 0.0, 1.0),
        "overlong": (overlong_penalty(10, 4)(completions, completion_ids=ids), -1.0, 0.0),
        "combined": (combined(completions, answer=golds), 0.0, 1.5),
    }
    for name, (values, low, high) in results.items():
        assert len(values) == len(completions), name
        assert all(isinstance(v, float) and low <= v <= high for v in values), (name, values)


# If the math-verify deadline alarm lands inside a gc callback (hypothesis installs one), Python reports the
# exception as "unraisable" and the alarm fires again 0.1 s later; the reward still returns on time.
IGNORE_ALARM_IN_GC = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@IGNORE_ALARM_IN_GC
@settings(max_examples=200, deadline=None)
@given(st.lists(completions_strategy, max_size=4), st.data())
def test_rewards_never_raise_on_random_input(completions, data):
    golds = data.draw(st.lists(st.integers(-1000, 1000).map(str), min_size=len(completions), max_size=len(completions)))
    check_all_rewards(completions, golds)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_extract_answer_is_none_or_nonempty_text(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer.strip() == answer and answer)


THINK_FREE = st.text(min_size=1).filter(lambda t: t.strip() and "<think>" not in t and "</think>" not in t)


@settings(max_examples=100, deadline=None)
@given(THINK_FREE, st.integers(-10**12, 10**12))
def test_well_formed_correct_answers_get_full_reward(reasoning, number):
    completion = f"<think>{reasoning}</think>The answer is {number:,}."
    assert format_reward([completion]) == [1.0]
    assert accuracy_reward([completion], answer=[str(number)]) == [1.0]
    assert accuracy_reward([completion], answer=[str(number + 1)]) == [0.0]


def _nested_frac(levels: int) -> str:
    return "\\frac{" * levels + "1" + "}{2}" * levels


def _random_unicode(n: int) -> str:
    rng = random.Random(0)
    return "".join(chr(c) for c in (rng.randrange(1, 0x2FFFF) for _ in range(n)) if not 0xD800 <= c <= 0xDFFF)


MEGABYTE_INPUTS = {
    "digits": "1" * 1_000_000,
    "open_tags": "<think>" * 100_000,
    "close_tags": "</think>" * 100_000,
    "unclosed_think": "<think>" + "a" * 1_000_000,
    "open_boxes": "\\boxed{" * 50_000,
    "open_boxes_after_think": "<think>x</think>" + "\\boxed{" * 50_000,
    "braces": "<think>x</think>\\boxed{" + "{" * 1_000_000,
    "nested_frac_5000": "<think>x</think>\\boxed{" + _nested_frac(5_000) + "}",
    "nested_frac_in_tail": "<think>x</think>" + "a" * 1_000_000 + "\\boxed{" + _nested_frac(8) + "}",
    "power_tower": "<think>" + "x" * 1_000_000 + "</think>\\boxed{9^{9^{9^{9}}}}",
    "nul_bytes": "\x00" * 1_000_000,
    "thousands": "1," * 500_000,
    "minus_signs": "-" * 1_000_000,
    "fullwidth": "１" * 1_000_000,
    "random_unicode": _random_unicode(300_000),
    "many_think_blocks": "<think>1</think>2" * 60_000,
}


@IGNORE_ALARM_IN_GC
@pytest.mark.parametrize("name", list(MEGABYTE_INPUTS))
def test_megabyte_inputs_are_bounded_in_time(name):
    text = MEGABYTE_INPUTS[name]
    ids = [[0] * 1_000]
    combined = combine_rewards({"format": (format_reward, 1.0), "accuracy": (accuracy_reward, 1.0)})
    calls = {
        "completion_text": lambda: completion_text([{"role": "assistant", "content": text}]),
        "split_think": lambda: split_think(text),
        "extract_answer": lambda: extract_answer(text),
        "answers_match": lambda: answers_match(text[-2_000:], "19"),
        "format_reward": lambda: format_reward([text]),
        "accuracy_reward": lambda: accuracy_reward([text], answer=["19"]),
        "overlong_penalty": lambda: overlong_penalty(1_000, 100)([text], completion_ids=ids),
        "combined": lambda: combined([text], answer=["19"]),
    }
    for call_name, call in calls.items():
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        assert seconds < PER_CALL_SECONDS, f"{call_name} took {seconds:.2f} s on {name}"
        if call_name in ("format_reward", "accuracy_reward"):
            assert result in ([0.0], [1.0])
        if call_name == "combined":
            assert 0.0 <= result[0] <= 2.0 and not math.isnan(result[0])


def test_a_callers_interval_timer_survives_a_reward_call():
    """The reward's own SIGALRM deadline must not cancel a timer the caller had running (a watchdog,
    pytest-timeout's signal mode): what remains of it is given back and it still fires."""
    import signal

    fired = []
    old_handler = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
    try:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.8)
        assert rewards.accuracy_reward(["<think>38 / 2</think> \\boxed{\\frac{38}{2}}"], answer=["19"]) == [1.0]
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < left <= 0.8, left
        while not fired and time.monotonic() - start < 3:
            time.sleep(0.01)
        assert fired and 0.7 <= fired[0] - start < 2.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
