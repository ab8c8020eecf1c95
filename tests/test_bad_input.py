"""Property tests: bad input gets a clear error, wherever it enters the kit.

- every loader, fed random and adversarial JSONL lines, returns rows or raises DataError naming
  file:line (a DataWarning for skipped third-party rows names them the same way), never anything else;
- random profile overrides are accepted, and then the memory plan and the lab's TRL config build from
  them, or are refused by get_profile with the field named;
- a batch of reward calls has a wall-clock bound, and rewards are the same from any thread.
"""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import rewards
from labkit.data import PROBLEM, DataError, DataWarning, load_gsm8k, load_jsonl
from labkit.hardware import Hardware
from labkit.preferences import load_preferences
from labkit.profiles import LAB_OVERRIDES, ProfileError, get_profile

# ---------------------------------------------------------------- loaders

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
GOOD_PROBLEM = {"id": "p", "lang": "en", "level": 1, "question": "1+1?", "answer": "2"}
GOOD_GSM8K = {"question": "Tom has 1 apple and buys 1. How many?", "answer": "1 + 1 = 2\n#### 2"}
GOOD_PAIR = {"prompt": "1+1?", "chosen": "2", "rejected": "3"}


def _adversarial_lines(good: dict) -> st.SearchStrategy[bytes]:
    """One line of a JSONL file: a good row, a mutated one, random JSON, or bytes no parser should like."""
    mutated = st.builds(lambda key, value: json.dumps({**good, key: value}),
                        st.sampled_from(sorted(good) + ["extra"]), JSON)
    return st.one_of(
        st.just(json.dumps(good)).map(str.encode),
        mutated.map(str.encode),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
        st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(4_400, 6_000).map(lambda n: b'{"n": ' + b"7" * n + b"}"),
        st.sampled_from(["\\ud800", "\\udfff", "\\ud83d"]).map(
            lambda s: json.dumps({**good, "question": "x"}).replace('"x"', f'"{s}"').encode()),
        st.just(b""),
    )


def _write(tmp: Path, name: str, lines: list[bytes]) -> Path:
    path = tmp / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _assert_names_a_line(message: str, path: Path, count: int) -> None:
    numbers = [int(n) for n in re.findall(re.escape(str(path)) + r":(\d+): ", message)]
    assert numbers and all(1 <= n <= count for n in numbers), message


LOADER_SETTINGS = settings(max_examples=60, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@LOADER_SETTINGS
@given(st.lists(_adversarial_lines({**GOOD_PROBLEM}), min_size=1, max_size=8))
def test_kit_loader_rows_or_a_data_error_naming_the_line(tmp_path, lines):
    lines = [line if not line.startswith(b"{") or b'"id"' not in line
             else line.replace(b'"id": "p"', f'"id": "p{i}"'.encode()) for i, line in enumerate(lines)]
    path = _write(tmp_path, "kit.jsonl", lines)
    try:
        rows = load_jsonl(path, PROBLEM)
    except DataError as error:
        if "has no rows" not in str(error):
            _assert_names_a_line(str(error), path, len(lines))
        return
    assert rows and all(isinstance(row, dict) for row in rows)


@LOADER_SETTINGS
@given(st.lists(_adversarial_lines(GOOD_GSM8K), min_size=1, max_size=8), st.integers(0, 60))
def test_gsm8k_loader_skips_or_refuses_naming_lines(tmp_path, lines, good_rows):
    lines = [json.dumps(GOOD_GSM8K).encode()] * good_rows + lines
    path = _write(tmp_path, "test.jsonl", lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rows = load_gsm8k("test", path=path)
        except DataError as error:
            if "no rows" not in str(error):
                _assert_names_a_line(str(error), path, len(lines))
            return
    assert rows and all(row["answer"].lstrip("-").isdigit() for row in rows)
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            _assert_names_a_line(str(warning.message), path, len(lines))


@LOADER_SETTINGS
@given(st.lists(_adversarial_lines(GOOD_PAIR), min_size=1, max_size=8), st.integers(0, 40))
def test_preference_loader_skips_or_refuses_naming_lines(tmp_path, lines, good_rows):
    good = [json.dumps({k: f"{v} {i}" for k, v in GOOD_PAIR.items()}).encode() for i in range(good_rows)]
    path = _write(tmp_path, "train.jsonl", good + lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pairs = load_preferences(str(path), "train")
        except DataError as error:
            if "no rows" not in str(error) and "usable pair" not in str(error):
                _assert_names_a_line(str(error), path, len(good) + len(lines))
            return
    assert pairs and all(pair["chosen"] != pair["rejected"] for pair in pairs)
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            _assert_names_a_line(str(warning.message), path, len(good) + len(lines))


# ---------------------------------------------------------------- profiles

# Values a student might type, right and wrong, for the fields that size a run.
FIELD_VALUES = {
    "batch_size": [1, 2, 3, 8, 0, -1, 2.5, "4", None, True],
    "grad_accum": [1, 2, 0, 1.5],
    "max_steps": [1, 5, 0, -3, 2.0],
    "learning_rate": [1e-5, 2e-4, 0.0, -1.0, float("nan"), float("inf"), "1e-4"],
    "max_length": [64, 128, 512, 0, "512", 20],
    "max_new_tokens": [8, 48, 256, 0, 600],
    "num_generations": [1, 2, 3, 4, 8, 0],
    "rollout_batch_size": [1, 3, 8, 16, 0, -2],
    "eval_limit": [1, 10, 0],
    "eval_batch_size": [1, 16, 0, 1.0],
    "lora_rank": [0, 8, 16, -1, 2.0],
    "lora_dropout": [0.0, 0.1, 1.0, 1.5, -0.1],
    "beta": [0.1, 0.5, 0.0, -0.1],
    "gradient_checkpointing": [True, False, 1, "yes"],
    "dtype": ["fp32", "bf16", "fp8"],
    "quant": [None, "4bit", "8bit"],
}
LABS = sorted(LAB_OVERRIDES)
CPU = Hardware(device="cpu", name="cpu (2 cores)", cpu_cores=2)


def _builds(profile, lab: str, tmp: Path) -> None:
    """The memory plan and the TRL config of `lab` from an accepted profile: nothing may raise here."""
    from labkit import dpo, grpo, models, ppo, reward_model, sft
    from labkit.preflight import preflight

    preflight(profile, CPU, lab=lab if lab != "best_of_n" else "sft")
    if profile.quant is None:
        models.lora_config(profile)
    if lab == "sft":
        sft.sft_config(profile, tmp)
    elif lab == "rm":
        reward_model.reward_config(profile, tmp)
    elif lab == "dpo":
        dpo.dpo_config(profile, tmp)
    elif lab in ("grpo", "grpo_compare"):
        grpo.accumulation_steps(profile)
        grpo.grpo_config(profile, tmp)
    elif lab == "ppo":
        ppo.ppo_config(profile)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(LABS), st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), st.none(), max_size=4)
       .flatmap(lambda keys: st.fixed_dictionaries({k: st.sampled_from(FIELD_VALUES[k]) for k in keys})))
def test_random_overrides_are_accepted_and_build_or_refused_naming_the_field(tmp_path, lab, overrides):
    try:
        profile = get_profile("cpu", lab=lab, **overrides)
    except ProfileError as error:
        named = [field for field in overrides if field in str(error)]
        assert named, f"{error} (overrides {overrides})"
        return
    _builds(profile, lab, tmp_path)


@pytest.mark.parametrize("lab, overrides, field", [
    ("sft", {"learning_rate": -1}, "learning_rate"),
    ("sft", {"max_steps": 0}, "max_steps"),
    ("dpo", {"beta": -0.1}, "beta"),
    ("sft", {"batch_size": 2.5}, "batch_size"),
    ("sft", {"lora_dropout": 1.5}, "lora_dropout"),
    ("rm", {"eval_batch_size": 0}, "eval_batch_size"),
    ("grpo", {"num_generations": 1}, "num_generations"),
    ("grpo", {"batch_size": 48}, "batch_size"),
    ("grpo_compare", {"rollout_batch_size": 3, "batch_size": 64}, "batch_size"),
    ("ppo", {"max_new_tokens": 300}, "max_length"),
    ("grpo", {"rollout_batch_size": 0}, "rollout_batch_size"),
    ("sft", {"max_length": "512"}, "max_length"),
    ("ppo", {"rollout_batch_size": 20}, "rollout_batch_size"),
    ("sft", {"quant": "4bit", "lora_rank": 0}, "lora_rank"),
    ("sft", {"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
])
def test_each_reported_bad_field_is_refused_with_a_value_that_works(lab, overrides, field):
    with pytest.raises(ProfileError) as error:
        get_profile("cpu", lab=lab, **overrides)
    message = str(error.value)
    assert field in message and "per_device_train_batch_size" not in message
    suggestion = re.search(r"e\.g\. (\w+)=([^\s,;()]+)", message)
    assert suggestion, message
    name, value = suggestion.groups()
    fixed = {**overrides, name: json.loads(value.replace("'", '"').replace("True", "true")
                                           .replace("False", "false"))}
    get_profile("cpu", lab=lab, **fixed)  # the suggested value works


# ---------------------------------------------------------------- rewards

BOMBS = st.sampled_from([
    "<think>x</think>\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{" + "\\frac{" * 9 + "1" + "}{2}" * 9 + "}",
    "\\boxed{\\sqrt{\\sqrt{\\sqrt{2}}}^{99999}}",
    "\\boxed{x^{x^{x}}}",
])
ANSWERS = st.one_of(BOMBS, st.sampled_from(["19", "\\boxed{\\frac{38}{2}}", "1e19", "10^{19}"]),
                    st.text(max_size=40))


@settings(max_examples=8, deadline=None)
@given(st.lists(ANSWERS, min_size=1, max_size=24))
def test_a_reward_batch_has_a_wall_clock_bound(completions):
    bound = rewards.MATH_VERIFY_BATCH_SECONDS + rewards.MATH_VERIFY_SECONDS + 1.0
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = rewards.accuracy_reward(completions, answer=["19"] * len(completions))
    assert time.perf_counter() - start < bound
    assert all(v in (0.0, 1.0) for v in values)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from(["19", "\\boxed{\\frac{38}{2}}", "\\boxed{19\\text{ apples}}", "1e19", "2^19",
                                 "\\boxed{18+1}", "\\boxed{20}", "<think>a</think>19", "garbage"]),
                min_size=1, max_size=10))
def test_rewards_are_the_same_on_any_thread(completions):
    golds = ["19"] * len(completions)
    on_main = rewards.accuracy_reward(completions, answer=golds)
    result = {}
    thread = threading.Thread(target=lambda: result.update(v=rewards.accuracy_reward(completions, answer=golds)))
    thread.start()
    thread.join()
    assert result["v"] == on_main


def test_numpy_integers_are_accepted_as_plain_ints():
    import numpy as np

    profile = get_profile("cpu", lab="sft", batch_size=np.int64(8), max_steps=np.int32(3))
    assert (profile.batch_size, profile.max_steps) == (8, 3) and type(profile.batch_size) is int
