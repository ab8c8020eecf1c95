"""Tests for labkit.data and the committed data/*.jsonl files. Offline: GSM8K is a fake copy."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import data
from labkit.data import (
    PREFERENCE,
    PROBLEM,
    SFT,
    SPLIT_SCHEMAS,
    DataError,
    format_response,
    gsm8k_level,
    load_gsm8k,
    load_jsonl,
    load_problems,
    load_split,
    preference_example,
    prompt_messages,
    sft_messages,
    to_dataset,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def _import_generate():
    spec = importlib.util.spec_from_file_location("kit_generate", DATA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _import_generate()


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {name: load_split(name) for name in SPLIT_SCHEMAS}


# ---------------------------------------------------------------- the committed files


def test_regeneration_is_byte_identical(tmp_path):
    written = generate.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{s}.jsonl" for s in generate.SPLIT_SIZES)
    for path in written:
        assert path.read_bytes() == (DATA / path.name).read_bytes(), path.name


def test_split_names_and_sizes(splits):
    assert set(SPLIT_SCHEMAS) == set(generate.SPLIT_SIZES)
    for name, size in generate.SPLIT_SIZES.items():
        assert len(splits[name]) == size, name


def test_split_fields(splits):
    base = {"id", "lang", "level", "question", "answer"}
    for name in ("pretrain", "sft"):
        assert all(set(row) == base | {"reasoning"} for row in splits[name])
    for name in ("rl", "eval"):
        assert all(set(row) == base for row in splits[name])
    prefs = base | {"reasoning", "chosen", "rejected", "rejected_kind"}
    assert all(set(row) == prefs for row in splits["prefs"])
    assert splits["sft"][0]["id"] == "sft-00000" and splits["eval"][-1]["id"] == "eval-00599"


def test_eval_is_held_out(splits):
    eval_questions = {row["question"] for row in splits["eval"]}
    assert len(eval_questions) == len(splits["eval"])
    for name, rows in splits.items():
        if name != "eval":
            assert not eval_questions & {row["question"] for row in rows}, name
    every = [row["question"] for rows in splits.values() for row in rows]
    assert len(set(every)) == len(every)  # unique across all splits


STEP = re.compile(r"(\d+)([+*-])(\d+)=(\d+)")


def reasoning_result(reasoning: str) -> tuple[int, int]:
    """(number of steps, final value) of "a+b=c, c*d=e", checking each step with int ops."""
    previous = None
    for step in reasoning.split(", "):
        match = STEP.fullmatch(step)
        assert match, step
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        assert c == (a + b if op == "+" else a - b if op == "-" else a * b), step
        assert previous is None or a == previous, f"{reasoning}: steps do not chain"
        previous = c
    return len(reasoning.split(", ")), previous


def test_reasoning_parser_catches_errors():
    assert reasoning_result("4*3=12, 12+5=17") == (2, 17)
    with pytest.raises(AssertionError):
        reasoning_result("4*3=12, 12+5=18")
    with pytest.raises(AssertionError):
        reasoning_result("4*3=12, 11+5=16")


def test_answers_follow_from_reasoning(splits):
    for name in ("pretrain", "sft", "prefs"):
        for row in splits[name]:
            steps, value = reasoning_result(row["reasoning"])
            assert str(value) == row["answer"], row["id"]
            assert steps == generate.LEVELS[row["level"]]["steps"], row["id"]
            assert 0 <= value <= generate.MAX_VALUE


def test_preference_pairs(splits):
    kinds = set()
    for row in splits["prefs"]:
        assert row["chosen"] == format_response(row["reasoning"], row["answer"])
        kinds.add(row["rejected_kind"])
        if row["rejected_kind"] == "bad_format":
            assert "<think>" not in row["rejected"]
        else:
            think, rejected_answer = row["rejected"].rsplit("</think>", 1)
            assert rejected_answer != row["answer"]
            if row["rejected_kind"] == "wrong_final":   # right reasoning, a different final answer
                assert think == "<think>" + row["reasoning"]
            if row["rejected_kind"] == "wrong_step":    # the last step's result is wrong, and the answer follows it
                assert think.endswith("=" + rejected_answer) and think != "<think>" + row["reasoning"]
    assert kinds == {"wrong_final", "wrong_step", "no_reasoning", "bad_format"}


# ---------------------------------------------------------------- validation errors

GOOD = {"id": "x-1", "lang": "en", "level": 1, "question": "Tom has 2 apples. Then buys 3 "
        "more. How many apples now?", "answer": "5"}
GOOD_PREF = {**GOOD, "reasoning": "2+3=5", "chosen": "<think>2+3=5</think>5",
             "rejected": "<think></think>4", "rejected_kind": "no_reasoning"}


def line(**changes) -> str:
    """GOOD with `changes` as one JSON line; a change to None removes the field."""
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False)


ERROR_CASES = {
    # name: (file lines, schema, bad line number, expected part of the message)
    "invalid json": ([line(), '{"id": "x-2",'], PROBLEM, 2, "invalid JSON"),
    "not an object": (["[1, 2]"], PROBLEM, 1, "expected a JSON object, got list"),
    "missing answer": ([line(id="a"), line(id="b"), line(id="c", answer=None)], PROBLEM, 3,
                       "missing field 'answer'"),
    "answer not integer": ([line(answer="1.5")], PROBLEM, 1,
                           "field 'answer' must be a decimal integer string, got '1.5'"),
    "answer is a number": ([line(answer=5)], PROBLEM, 1, "field 'answer' must be"),
    "answer leading zero": ([line(answer="05")], PROBLEM, 1, "field 'answer' must be"),
    "answer with plus": ([line(answer="+5")], PROBLEM, 1, "field 'answer' must be"),
    "level as string": ([line(level="2")], PROBLEM, 1, "field 'level' must be an integer 1, 2 or 3"),
    "level too big": ([line(), line(id="y", level=4)], PROBLEM, 2, "field 'level'"),
    "level zero": ([line(level=0)], PROBLEM, 1, "field 'level'"),
    "level bool": ([line(level=True)], PROBLEM, 1, "field 'level'"),
    "lang": ([line(lang="fr")], PROBLEM, 1, "field 'lang' must be 'zh' or 'en', got 'fr'"),
    "empty question": ([line(question="")], PROBLEM, 1, "field 'question' must be a non-empty"),
    "blank question": ([line(question="  ")], PROBLEM, 1, "field 'question'"),
    "id not a string": ([line(id=7)], PROBLEM, 1, "field 'id'"),
    "duplicate id": ([line(id="a"), line(id="b"), line(id="a")], PROBLEM, 3,
                     "duplicate id 'a' (first used on line 1)"),
    "missing reasoning": ([line()], SFT, 1, "missing field 'reasoning'"),
    "reasoning not a string": ([line(reasoning=["2+3=5"])], SFT, 1, "field 'reasoning'"),
    "chosen equals rejected": ([json.dumps({**GOOD_PREF, "rejected": GOOD_PREF["chosen"]})],
                               PREFERENCE, 1, "'chosen' and 'rejected' are the same"),
    "missing rejected": ([json.dumps({**GOOD_PREF, "rejected": None})], PREFERENCE, 1,
                         "field 'rejected'"),
    "rejected_kind not a string": ([json.dumps({**GOOD_PREF, "rejected_kind": 3})], PREFERENCE,
                                   1, "field 'rejected_kind'"),
    "blank line in the middle": ([line(id="a"), "", line(id="b")], PROBLEM, 2, "blank line"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_validation_errors_name_file_and_line(tmp_path, case):
    lines, schema, number, expected = ERROR_CASES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_jsonl(path, schema)
    assert str(info.value).startswith(f"{path}:{number}: "), str(info.value)
    assert expected in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(line().encode() + b"\n" + line(id="y").encode()[:-3] + b"\xff\"}\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid UTF-8")):
        load_jsonl(path, PROBLEM)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_valid_files_load_with_extra_fields_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "ok.jsonl"
    rows = [{**GOOD, "source": "mine"}, {**GOOD_PREF, "id": "x-2", "lang": "zh",
                                          "question": "小明有2个苹果。", "answer": "-3"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n  \n",
                    encoding="utf-8")
    assert load_jsonl(path, PROBLEM) == rows
    without_kind = {k: v for k, v in GOOD_PREF.items() if k != "rejected_kind"}
    path.write_text(json.dumps(without_kind), encoding="utf-8")  # no final newline either
    assert load_jsonl(path, PREFERENCE) == [without_kind]


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        load_jsonl(empty, PROBLEM)
    with pytest.raises(FileNotFoundError):
        load_jsonl(tmp_path / "missing.jsonl", PROBLEM)


# ---------------------------------------------------------------- load_split


def test_unknown_split_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_split("test")
    assert "'test'" in str(info.value)
    for name in SPLIT_SCHEMAS:
        assert name in str(info.value)


def test_levels_and_limit(splits):
    level_one = load_split("eval", levels=[1])
    assert level_one == [row for row in splits["eval"] if row["level"] == 1]
    assert len(level_one) == 172  # counted in data/README.md
    assert load_split("eval", levels=(2, 3), limit=4) == \
        [row for row in splits["eval"] if row["level"] != 1][:4]
    assert load_split("rl", limit=3) == splits["rl"][:3]
    assert load_split("rl", limit=0) == []
    assert len(load_split("rl", limit=10_000)) == 1500  # limit is a maximum


@pytest.mark.parametrize("kwargs", [{"levels": [4]}, {"levels": []}, {"levels": ["1"]},
                                    {"limit": -1}, {"limit": 2.5}])
def test_bad_levels_or_limit(kwargs):
    with pytest.raises(DataError):
        load_split("eval", **kwargs)


def test_data_dir_is_read_at_call_time(tmp_path, monkeypatch):
    (tmp_path / "rl.jsonl").write_text(line(id="mine") + "\n", encoding="utf-8")
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    assert [row["id"] for row in load_split("rl")] == ["mine"]
    with pytest.raises(FileNotFoundError, match="LABKIT_DATA_DIR"):
        load_split("eval")


def test_data_dir_default_and_env_override(tmp_path):
    assert data.DATA_DIR == DATA
    env = {**os.environ, "LABKIT_DATA_DIR": str(tmp_path)}
    code = "from labkit import data; print(data.DATA_DIR)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == str(tmp_path)


# ---------------------------------------------------------------- formatting

ROW = {"id": "sft-9", "lang": "en", "level": 1, "question": "What is 12+7?",
       "reasoning": "12+7=19", "answer": "19"}
PREF = {**ROW, "chosen": "<think>12+7=19</think>19", "rejected": "<think></think>18"}


def test_format_response():
    assert format_response("12+7=19", "19") == "<think>12+7=19</think>19"
    assert format_response("", "-3") == "<think></think>-3"


def test_prompt_and_sft_messages():
    user = {"role": "user", "content": "What is 12+7?"}
    system = {"role": "system", "content": "Think, then answer."}
    assistant = {"role": "assistant", "content": "<think>12+7=19</think>19"}
    assert prompt_messages(ROW) == [user]
    assert prompt_messages(ROW, "Think, then answer.") == [system, user]
    assert sft_messages(ROW) == [user, assistant]
    assert sft_messages(ROW, system_prompt="Think, then answer.") == [system, user, assistant]


def test_preference_example():
    assert preference_example(PREF) == {
        "prompt": [{"role": "user", "content": "What is 12+7?"}],
        "chosen": [{"role": "assistant", "content": "<think>12+7=19</think>19"}],
        "rejected": [{"role": "assistant", "content": "<think></think>18"}],
    }
    assert preference_example(PREF, "S")["prompt"][0] == {"role": "system", "content": "S"}


def test_helpers_refuse_rows_without_the_fields_they_need():
    rl_row = {k: v for k, v in ROW.items() if k != "reasoning"}
    with pytest.raises(DataError, match="sft_messages needs a row with 'reasoning'"):
        sft_messages(rl_row)
    with pytest.raises(DataError, match="preference_example needs .*'chosen'"):
        preference_example(ROW)


@pytest.fixture(scope="module")
def chatml_tokenizer():
    """A throwaway tokenizer with a ChatML template, enough for TRL's template helpers."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        unk_token="[UNK]")
    tok.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
        "'<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    return tok


def test_preference_dataset_is_what_trl_expects(chatml_tokenizer):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    rows = load_split("prefs", limit=4)
    dataset = to_dataset(rows, preference_example)
    assert set(dataset.column_names) == {"prompt", "chosen", "rejected", "id", "lang", "level",
                                         "answer"}
    example = dataset[0]
    assert example["prompt"] == prompt_messages(rows[0])  # survives the Arrow round trip
    assert is_conversational(example)
    text = maybe_apply_chat_template(
        {k: example[k] for k in ("prompt", "chosen", "rejected")}, chatml_tokenizer)
    assert text == {
        "prompt": f"<|im_start|>user\n{rows[0]['question']}<|im_end|>\n<|im_start|>assistant\n",
        "chosen": f"{rows[0]['chosen']}<|im_end|>\n",
        "rejected": f"{rows[0]['rejected']}<|im_end|>\n",
    }


def test_sft_and_prompt_datasets_keep_reward_columns():
    rows = load_split("sft", limit=3)
    sft = to_dataset(rows, lambda row: {"messages": sft_messages(row, "S")})
    assert sft.column_names == ["messages", "id", "lang", "level", "answer"]
    assert sft[2]["messages"] == sft_messages(rows[2], "S")
    grpo = to_dataset(load_split("rl", limit=3), lambda row: {"prompt": prompt_messages(row)})
    assert grpo["answer"] == [row["answer"] for row in load_split("rl", limit=3)]
    assert grpo["level"] == [row["level"] for row in load_split("rl", limit=3)]


def test_to_dataset_errors():
    rows = load_split("sft", limit=2)
    with pytest.raises(DataError, match="must return a dict"):
        to_dataset(rows, sft_messages)
    with pytest.raises(DataError, match="'answer'"):
        to_dataset(rows, lambda row: {"prompt": prompt_messages(row), "answer": "1"})
    with pytest.raises(DataError, match="no rows"):
        to_dataset([], preference_example)


# ---------------------------------------------------------------- GSM8K

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                 "many clips in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
               "<<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "A farm has 3 barns with 250 cows each, and buys 250 more. How many cows?",
     "answer": "Each barn has 250 cows.\nThere are 3*250 = <<3*250=750>>750 cows.\n"
               "They buy 250 more, so 750+250 = <<750+250=1000>>1000 cows.\n#### 1,000"},
    {"question": "Five steps?", "answer": "a\nb\nc\nd\ne\n#### -3"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_gsm8k_rows_from_a_jsonl_file(tmp_path):
    rows = load_gsm8k("test", path=write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS))
    assert rows[0] == {
        "id": "gsm8k-test-00000", "lang": "en", "level": 1,
        "question": GSM8K_ROWS[0]["question"],
        "reasoning": "Natalia sold 48/2 = 24 clips in May.\n"
                     "Natalia sold 48+24 = 72 clips altogether in April and May.",
        "answer": "72"}
    assert [r["answer"] for r in rows] == ["72", "1000", "-3"]
    assert [r["level"] for r in rows] == [1, 2, 3]
    assert "<<" not in rows[1]["reasoning"] and "750+250 = 1000" in rows[1]["reasoning"]
    for index, row in enumerate(rows):
        data.validate_row(row, SFT, f"row {index}")


def test_gsm8k_level_from_line_count():
    assert [gsm8k_level("\n".join("x" * n)) for n in range(1, 8)] == [1, 1, 2, 2, 3, 3, 3]
    assert gsm8k_level("a\n\nb\n") == 1  # blank lines do not count


def test_gsm8k_from_hub_style_parquet_folder(tmp_path):
    import pandas as pd

    snapshot = tmp_path / "gsm8k"
    (snapshot / "main").mkdir(parents=True)
    (snapshot / "socratic").mkdir()
    pd.DataFrame(GSM8K_ROWS).to_parquet(snapshot / "main" / "test-00000-of-00001.parquet")
    pd.DataFrame(GSM8K_ROWS[:1]).to_parquet(snapshot / "main" / "train-00000-of-00001.parquet")
    pd.DataFrame(GSM8K_ROWS[:2]).to_parquet(snapshot / "socratic" / "test-00000-of-00001.parquet")
    assert [r["answer"] for r in load_gsm8k("test", path=str(snapshot))] == ["72", "1000", "-3"]
    train = load_gsm8k("train", path=snapshot)
    assert [r["id"] for r in train] == ["gsm8k-train-00000"]
    assert load_gsm8k("test", path=snapshot, levels=[2, 3], limit=1)[0]["answer"] == "1000"


def test_gsm8k_from_github_style_folder(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS[1:])
    write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS[:1])
    assert [r["answer"] for r in load_gsm8k("train", path=tmp_path)] == ["1000", "-3"]
    assert load_problems("gsm8k", "eval", path=tmp_path)[0]["answer"] == "72"
    assert len(load_problems("gsm8k", "rl", path=tmp_path)) == 2
    assert len(load_problems("gsm8k", "sft", path=tmp_path, limit=1)) == 1


@pytest.mark.parametrize("bad, expected", [
    ({"question": "q", "answer": "x\n#### 3.5"}, "must be an integer, got '3.5'"),
    ({"question": "q", "answer": "x\n#### 12 apples"}, "must be an integer"),
    ({"question": "q", "answer": "x, no final answer"}, "'####' exactly once"),
    ({"question": "q", "answer": "x\n#### 1\n#### 2"}, "'####' exactly once"),
    ({"answer": "x\n#### 1"}, "field 'question' must be a string"),
    ({"question": " ", "answer": "x\n#### 1"}, "field 'question'"),
    ({"question": "q", "answer": "#### 1"}, "field 'reasoning'"),
])
def test_gsm8k_bad_row_names_file_and_line(tmp_path, bad, expected):
    # One bad row in four is more than MAX_BAD_FRACTION: refused, naming the row's file:line.
    path = write_jsonl(tmp_path / "test.jsonl", [*GSM8K_ROWS, bad])
    with pytest.raises(DataError) as info:
        load_gsm8k("test", path=path)
    assert str(info.value).startswith(f"{path} [test]: 1 of 4 rows are bad"), str(info.value)
    assert f"{path}:4: " in str(info.value) and expected in str(info.value)


def _many_gsm8k(n: int) -> list[dict]:
    return [{"question": f"q{i}", "answer": f"{i} + 1\n#### {i + 1}"} for i in range(n)]


def test_gsm8k_skips_a_few_bad_rows_and_says_where(tmp_path):
    rows = _many_gsm8k(60)
    rows[7] = {"question": "q", "answer": "x\n#### 3.5"}
    rows[30] = {"question": "q", "answer": "x"}
    path = tmp_path / "test.jsonl"
    # Blank lines count as lines: the bad rows are on lines 9 and 34 of the file.
    lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines[:5] + [""] + lines[5:30] + ["", ""] + lines[30:]) + "\n", encoding="utf-8")
    with pytest.warns(data.DataWarning) as caught:
        loaded = load_gsm8k("test", path=path)
    message = str(caught[0].message)
    assert "2 of 60 rows are bad (1 final answer not an integer, 1 no single '####')" in message
    assert f"{path}:9: the number after '####'" in message and f"{path}:34: " in message
    assert len(loaded) == 58
    assert loaded[7]["id"] == "gsm8k-test-00008"  # ids keep the row's place in the file


def test_gsm8k_lines_in_a_second_file_name_that_file(tmp_path):
    write_jsonl(tmp_path / "train-a.jsonl", _many_gsm8k(40))
    bad = _many_gsm8k(3)
    bad[1] = {"question": "q", "answer": "x\n#### one"}
    write_jsonl(tmp_path / "train-b.jsonl", bad)
    with pytest.warns(data.DataWarning, match=re.escape(f"{tmp_path / 'train-b.jsonl'}:2: ")):
        assert len(load_gsm8k("train", path=tmp_path)) == 42


def test_gsm8k_parquet_rows_are_named_by_index(tmp_path):
    import pandas as pd

    rows = _many_gsm8k(5)
    rows[2]["answer"] = "no final answer"
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'test.parquet'} [row 2]: field 'answer'")):
        load_gsm8k("test", path=tmp_path / "test.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_gsm8k("test", path=tmp_path / "broken.parquet")


UNREADABLE_LINES = {
    "bad UTF-8": (b'{"question": "q\xff", "answer": "x\\n#### 1"}', "not valid UTF-8"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "5000 digits": (b'{"question": "q", "answer": "x", "n": ' + b"9" * 5_000 + b"}", "cannot be read"),
    "lone surrogate": (b'{"question": "q\\ud800", "answer": "x\\n#### 1"}', "lone surrogate"),
    "surrogate in a key": (b'{"question": "q", "answer": "x\\n#### 1", "\\udfff": 1}', "lone surrogate"),
    "invalid JSON": (b'{"question": ', "invalid JSON"),
}


@pytest.mark.parametrize("case", UNREADABLE_LINES)
def test_unreadable_lines_name_file_and_line_everywhere(tmp_path, case):
    bad, expected = UNREADABLE_LINES[case]
    good = [json.dumps(r).encode() for r in _many_gsm8k(3)]
    path = tmp_path / "test.jsonl"
    path.write_bytes(b"\n".join(good[:2] + [bad] + good[2:]) + b"\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(expected)):
        load_gsm8k("test", path=path)  # 1 of 4 bad: refused, with the line
    kit = tmp_path / "kit.jsonl"
    kit.write_bytes(line().encode() + b"\n" + bad + b"\n")
    with pytest.raises(DataError, match=re.escape(f"{kit}:2: ") + ".*" + re.escape(expected)):
        load_jsonl(kit, PROBLEM)  # the kit's own files: strict


def test_many_good_rows_carry_one_unreadable_line(tmp_path):
    path = tmp_path / "test.jsonl"
    good = [json.dumps(r).encode() for r in _many_gsm8k(30)]
    path.write_bytes(b"\n".join(good[:10] + [b"[" * 100_000] + good[10:]))
    with pytest.warns(data.DataWarning, match="1 nested too deeply"):
        assert len(load_gsm8k("test", path=path)) == 30


def test_gsm8k_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="'train' or 'test'"):
        load_gsm8k("eval", path=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_gsm8k("test", path=str(tmp_path / "nope" / "test.jsonl"))
    with pytest.raises(DataError, match="no file for split 'test'"):
        load_gsm8k("test", path=tmp_path)  # a folder without GSM8K files
    (tmp_path / "test.csv").write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match="expected a .parquet or .jsonl file"):
        load_gsm8k("test", path=tmp_path / "test.csv")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "x\\n#### 1"}\n{"question"\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{broken}:2: invalid JSON")):
        load_gsm8k("test", path=broken)


def test_gsm8k_hub_id_goes_through_resolve_dataset(monkeypatch, tmp_path):
    """A hub id is fetched by labkit.hub.resolve_dataset (mirror / offline aware) and read from the
    snapshot's main/ folder, as the hub lays GSM8K out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labkit import hub

    (tmp_path / "main").mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(GSM8K_ROWS[:2]), tmp_path / "main" / f"{split}-00000-of-00001.parquet")
    calls = []
    monkeypatch.setattr(hub, "resolve_dataset",
                        lambda dataset_id, data_dir: calls.append((dataset_id, data_dir)) or str(tmp_path))
    rows = load_problems("gsm8k", "eval", limit=1)
    assert calls == [("openai/gsm8k", None)]
    assert [r["id"] for r in rows] == ["gsm8k-test-00000"]
    assert load_gsm8k("train", path="someone/gsm8k-copy")[0]["id"] == "gsm8k-train-00000"
    assert calls[-1] == ("someone/gsm8k-copy", None)
    load_problems("gsm8k", "sft", data_dir="/data")  # DATA_DIR, passed on to the hub's chain
    assert calls[-1] == ("openai/gsm8k", "/data")


def test_gsm8k_from_data_dir_in_both_layouts(tmp_path, monkeypatch):
    """DATA_DIR/openai/gsm8k as the hub lays it out, or DATA_DIR/gsm8k as GitHub's release
    (whose test_socratic.jsonl is the same questions in another format, and is not read)."""
    from labkit import hub

    monkeypatch.delenv("LABKIT_STANDIN", raising=False)
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM8K_ROWS)
    write_jsonl(tmp_path / "gsm8k" / "test_socratic.jsonl", GSM8K_ROWS[:1])
    assert [r["answer"] for r in load_gsm8k("test", data_dir=tmp_path)] == ["72", "1000", "-3"]
    write_jsonl(tmp_path / "openai" / "gsm8k" / "main" / "test-00000-of-00001.jsonl", GSM8K_ROWS[:1])
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    assert [r["answer"] for r in load_gsm8k("test")] == ["72"]


def test_load_problems_dispatch(splits):
    assert load_problems("kit", "eval") == splits["eval"]
    assert load_problems("kit", "rl", levels=[3], limit=2) == \
        [row for row in splits["rl"] if row["level"] == 3][:2]
    with pytest.raises(DataError, match="valid sources"):
        load_problems("math", "eval")
    with pytest.raises(DataError, match="unknown split 'validation' for GSM8K"):
        load_problems("gsm8k", "validation")
