"""Load, validate and format the kit's math word problems (and GSM8K) for TRL.

The kit ships its own problems in data/*.jsonl (made by data/generate.py, see data/README.md).
Every row is checked against a small schema when it is loaded; the first bad row raises a
DataError that says where it is, as "<path>:<line>: <what is wrong>". Known fields must be
present with the right type and value; extra fields are allowed and kept (add your own, such
as "source"). The kit's own data is strict: any bad row is an error.

Third-party data (GSM8K, a hub preference set, a local copy of either) is read leniently: a bad
row is skipped, counted by reason and reported in a DataWarning that shows a few of them as
file:line, and the load is refused only when more than MAX_BAD_FRACTION of the rows are bad.

Responses follow the course convention `<think>REASONING</think>ANSWER`. The formatting helpers
turn rows into TRL's conversational formats: "messages" (SFT), "prompt" (GRPO, evaluation)
and "prompt"/"chosen"/"rejected" (DPO, reward models).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

# The repository's data/ folder; set LABKIT_DATA_DIR to use another one.
DATA_DIR = Path(os.environ.get("LABKIT_DATA_DIR")
                or Path(__file__).resolve().parent.parent / "data").expanduser()

LEVELS = (1, 2, 3)
LANGS = ("zh", "en")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# A decimal integer in canonical form: "0", "19", "-3" (no "+", no leading zeros, no "-0").
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")
# Columns that to_dataset carries along (GRPO reward functions receive them as kwargs).
KEPT_COLUMNS = ("id", "lang", "level", "answer")
# Third-party data: the share of bad rows that is skipped (with a warning) rather than refused.
MAX_BAD_FRACTION = 0.05


class DataError(ValueError):
    """A data file, row or argument is invalid; the message says where and what to change.

    `reason` is a short category ("invalid JSON", "bad field 'answer'", ...) used to count skipped rows.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class DataWarning(UserWarning):
    """Rows of third-party data were skipped; the message counts them by reason and shows a few."""


# ---------------------------------------------------------------- schemas


@dataclass(frozen=True)
class Field:
    """One field of a row: what it must be (for error messages) and the check itself."""

    description: str
    check: Callable[[Any], bool]
    required: bool = True


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _integer_string(value: Any) -> bool:
    return isinstance(value, str) and _INTEGER.fullmatch(value) is not None


def _level(value: Any) -> bool:
    return type(value) is int and value in LEVELS  # type() excludes True/False


PROBLEM = {
    "id": Field("a non-empty string", _non_empty_string),
    "lang": Field("'zh' or 'en'", lambda value: isinstance(value, str) and value in LANGS),
    "level": Field("an integer 1, 2 or 3", _level),
    "question": Field("a non-empty string", _non_empty_string),
    "answer": Field("a decimal integer string", _integer_string),
}
SFT = {**PROBLEM, "reasoning": Field("a non-empty string", _non_empty_string)}
PREFERENCE = {
    **SFT,
    "chosen": Field("a non-empty string", _non_empty_string),
    "rejected": Field("a non-empty string", _non_empty_string),
    "rejected_kind": Field("a non-empty string", _non_empty_string, required=False),
}
SPLIT_SCHEMAS = {"pretrain": SFT, "sft": SFT, "prefs": PREFERENCE, "rl": PROBLEM, "eval": PROBLEM}


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters so error messages stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_row(row: Any, schema: dict[str, Field], where: str) -> None:
    """Raise DataError("<where>: ...") unless `row` is a dict that satisfies `schema`."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}", "not an object")
    for name, field in schema.items():
        if name not in row:
            if field.required:
                raise DataError(f"{where}: missing field {name!r} (must be {field.description})",
                                f"missing field {name!r}")
            continue
        if not field.check(row[name]):
            raise DataError(f"{where}: field {name!r} must be {field.description}, "
                            f"got {_short(row[name])}", f"bad field {name!r}")
    if "chosen" in schema and row["chosen"] == row["rejected"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same response", "chosen == rejected")


def check_unicode(value: Any, where: str) -> None:
    """Raise DataError if any string inside `value` (nested lists/dicts too) is not valid Unicode.

    JSON may spell a lone surrogate ("\\ud800"); Python accepts it, but it cannot be written as
    UTF-8, so Arrow (datasets) would fail on it much later, far from the file.
    """
    stack = [value]
    while stack:  # iterative: a deeply nested row must not overflow Python's stack here
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise DataError(f"{where}: text holds a lone surrogate {item[error.start]!r} at "
                                f"character {error.start} (not valid Unicode)", "lone surrogate") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def jsonl_lines(path: Path, skip_blank: bool = False) -> Iterator[tuple[str, Any]]:
    """(where, row) for each line of a JSONL file, where = "<path>:<line>" (lines count from 1).

    A line that is not a valid row comes back as a DataError in place of the row, naming its line:
    bad UTF-8, invalid JSON, nesting too deep for the parser, a number too long to read, a lone
    surrogate. Blank lines: skipped with `skip_blank`, else a DataError unless they end the file.
    """
    lines = path.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not raw.strip():
            if not skip_blank:
                yield where, DataError(f"{where}: blank line (only blank lines at the end are allowed)",
                                       "blank line")
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            check_unicode(row, where)
        except UnicodeDecodeError as error:
            row = DataError(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start})",
                            "not valid UTF-8")
        except json.JSONDecodeError as error:
            row = DataError(f"{where}: invalid JSON ({error.msg} at column {error.colno})", "invalid JSON")
        except RecursionError:
            row = DataError(f"{where}: JSON nested too deeply to read", "nested too deeply")
        except DataError as error:  # check_unicode (before ValueError: DataError is one)
            row = error
        except ValueError as error:  # e.g. an integer of more than 4300 digits
            row = DataError(f"{where}: JSON value cannot be read ({error})", "unreadable value")
        yield where, row


# ---------------------------------------------------------------- loading


def load_jsonl(path: str | Path, schema: dict[str, Field]) -> list[dict]:
    """Every row of a UTF-8 JSONL file, each checked against `schema`.

    Raises DataError "<path>:<line>: ..." (lines count from 1) at the first invalid line:
    bad UTF-8, invalid or too deeply nested JSON, a lone surrogate, a row that is not an object or
    breaks the schema, a duplicate id, or a blank line before the end of the file (blank lines at
    the end are fine).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows: list[dict] = []
    first_line_of_id: dict[str, int] = {}
    # Without skip_blank, jsonl_lines yields one item per line (a blank one as an error), so the
    # item's position is its line number.
    for number, (where, row) in enumerate(jsonl_lines(path), start=1):
        if isinstance(row, DataError):
            raise row
        validate_row(row, schema, where)
        if row["id"] in first_line_of_id:
            raise DataError(f"{where}: duplicate id {row['id']!r} "
                            f"(first used on line {first_line_of_id[row['id']]})")
        first_line_of_id[row["id"]] = number
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: the file has no rows")
    return rows


def _select(rows: list[dict], levels: Iterable[int] | None, limit: int | None) -> list[dict]:
    """The rows whose level is in `levels` (all if None), then at most the first `limit`."""
    if levels is not None:
        levels = set(levels)
        if not levels or not levels <= set(LEVELS):
            raise DataError(f"levels must be a non-empty subset of {list(LEVELS)}, "
                            f"got {sorted(levels, key=repr)}")
        rows = [row for row in rows if row["level"] in levels]
    if limit is not None:
        if type(limit) is not int or limit < 0:
            raise DataError(f"limit must be None or an integer >= 0, got {limit!r} "
                            "(e.g. limit=100, or None for all rows)")
        rows = rows[:limit]
    return rows


def load_split(name: str, levels: Iterable[int] | None = None,
               limit: int | None = None) -> list[dict]:
    """The kit's split `name` (see SPLIT_SCHEMAS) from DATA_DIR, validated.

    levels keeps only rows of those levels; limit then keeps at most the first `limit` rows
    (file order, which is already shuffled).
    """
    if name not in SPLIT_SCHEMAS:
        raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLIT_SCHEMAS)}")
    path = DATA_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file. Run `python data/generate.py` in the repository, or set "
            "the LABKIT_DATA_DIR environment variable to the folder that holds the .jsonl files."
        )
    return _select(load_jsonl(path, SPLIT_SCHEMAS[name]), levels, limit)


# ---------------------------------------------------------------- GSM8K

_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<48/2=24>>" annotations


def gsm8k_level(reasoning: str) -> int:
    """Difficulty from the number of solution lines: 1-2 -> 1, 3-4 -> 2, 5 or more -> 3."""
    lines = sum(1 for line in reasoning.splitlines() if line.strip())
    return 1 if lines <= 2 else 2 if lines <= 4 else 3


def parse_gsm8k_row(raw: Any, index: int, split: str, where: str) -> dict:
    """One GSM8K row {"question", "answer": "...\\n#### 72"} as a row in the SFT schema.

    index numbers the row among all rows of the split (its id is gsm8k-<split>-<index>);
    where locates it for error messages ("test.jsonl:4", "test-0.parquet [row 3]").
    """
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {type(raw).__name__}", "not an object")
    for name in ("question", "answer"):
        if not isinstance(raw.get(name), str):
            raise DataError(f"{where}: field {name!r} must be a string, "
                            f"got {_short(raw.get(name))}", f"bad field {name!r}")
    if raw["answer"].count("####") != 1:
        raise DataError(f"{where}: field 'answer' must contain '####' exactly once, "
                        f"got {_short(raw['answer'])}", "no single '####'")
    solution, final = raw["answer"].split("####")
    answer = final.strip().replace(",", "")
    if not _integer_string(answer):
        raise DataError(f"{where}: the number after '####' must be an integer, "
                        f"got {final.strip()!r}", "final answer not an integer")
    reasoning = _CALCULATOR.sub("", solution).strip()
    row = {"id": f"gsm8k-{split}-{index:05d}", "lang": "en", "level": gsm8k_level(reasoning),
           "question": raw["question"].strip(), "reasoning": reasoning, "answer": answer}
    validate_row(row, SFT, where)
    return row


def _read_local(path: Path, split: str) -> list[tuple[str, Any]]:
    """(where, raw row) for every row of a .parquet or .jsonl file, or of the files for `split` in
    a folder; where = "<file>:<line>" (JSONL) or "<file> [row i]" (parquet, i from 0 as in pandas).
    A JSONL line that cannot be read comes back as a DataError instead of the row (see jsonl_lines).

    A folder may be a hub snapshot of openai/gsm8k (main/test-00000-of-00001.parquet) or the
    original GitHub release (test.jsonl): files named `<split>.parquet`, `<split>-*.parquet`,
    `<split>.jsonl` or `<split>-*.jsonl` are read, from its main/ subfolder if there is one
    (not GitHub's test_socratic.jsonl: the same questions in another answer format).
    """
    if path.is_dir():
        folder = path / "main" if (path / "main").is_dir() else path
        files = [file for ext in ("parquet", "jsonl")
                 for pattern in (f"{split}.{ext}", f"{split}-*.{ext}")
                 for file in sorted(folder.glob(pattern))]
        if not files:
            raise DataError(f"{folder}: no file for split {split!r} ({split}.parquet, "
                            f"{split}-*.parquet, {split}.jsonl or {split}-*.jsonl)")
    else:
        files = [path]
    raw: list[tuple[str, Any]] = []
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet

            try:
                table = pyarrow.parquet.read_table(file)
            except Exception as error:  # pyarrow raises several types for a broken file
                raise DataError(f"{file}: not a readable parquet file ({error})") from None
            raw += [(f"{file} [row {i}]", row) for i, row in enumerate(table.to_pylist())]
        elif file.suffix == ".jsonl":
            raw += list(jsonl_lines(file, skip_blank=True))
        else:
            raise DataError(f"{file}: expected a .parquet or .jsonl file (or a folder)")
    return raw


def parse_lenient(raw: list[tuple[str, Any]], parse: Callable[[Any, int, str], dict],
                  source: str) -> list[dict]:
    """parse(row, index, where) for every (where, row) of third-party data, skipping bad rows.

    A row that raises DataError (or was already a DataError: an unreadable line) is skipped. The
    skipped rows are counted by reason in one DataWarning that shows the first few as file:line;
    if more than MAX_BAD_FRACTION of the rows are bad, DataError instead (the data is not what
    the loader expects: wrong file, wrong columns).
    """
    if not raw:
        raise DataError(f"{source}: no rows")
    rows, bad = [], []
    for index, (where, item) in enumerate(raw):
        try:
            if isinstance(item, DataError):
                raise item
            rows.append(parse(item, index, where))
        except DataError as error:
            bad.append(error)
    if not bad:
        return rows
    counts = Counter(error.reason for error in bad)
    summary = (f"{source}: {len(bad)} of {len(raw)} rows are bad ("
               + ", ".join(f"{n} {reason}" for reason, n in counts.most_common()) + "); first: "
               + "; ".join(str(error) for error in bad[:3]))
    if len(bad) > MAX_BAD_FRACTION * len(raw):
        raise DataError(f"{summary}. More than {MAX_BAD_FRACTION:.0%} bad: is this the right dataset "
                        "and file? (labkit.data.MAX_BAD_FRACTION sets the share that is skipped)")
    warnings.warn(f"{summary}. Skipped them (at most {MAX_BAD_FRACTION:.0%} are skipped).", DataWarning,
                  stacklevel=3)
    return rows


def _looks_like_path(text: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else can only be meant as a path."""
    return (text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
            or text.endswith((".parquet", ".jsonl")))


def load_gsm8k(split: str = "test", path: str | Path = "openai/gsm8k",
               levels: Iterable[int] | None = None, limit: int | None = None,
               data_dir: str | Path | None = None) -> list[dict]:
    """GSM8K's "main" config as rows in the SFT schema (lang "en", ids "gsm8k-<split>-00042").

    reasoning: the solution before "####", without the <<48/2=24>> calculator annotations.
    answer: the number after "####" without thousands commas. Bad rows (a final answer that is
    not an integer, a line that is not JSON, ...) are skipped with a DataWarning naming their
    file:line, up to MAX_BAD_FRACTION of the rows; more than that raises DataError (parse_lenient).
    level: from the number of solution lines, see gsm8k_level.
    path: a local file or folder (see _read_local), or a hub id found by labkit.hub.resolve_dataset
    (DATA_DIR, the hub or its mirror, ModelScope) and read from its main/ folder. data_dir: the
    folder of repos downloaded by hand (default: $LABKIT_HUB_DATA_DIR, which setup() sets from the
    profile's data_dir), e.g. DATA_DIR/openai/gsm8k/main/test-00000-of-00001.parquet.
    levels and limit work as in load_split.
    """
    if split not in ("train", "test"):
        raise DataError(f"GSM8K split must be 'train' or 'test', got {split!r}")
    text = os.path.expanduser(str(path))
    if os.path.exists(text):
        raw = _read_local(Path(text), split)
    elif _looks_like_path(text):
        raise FileNotFoundError(f"{text}: no such file or folder (pass an existing local path, "
                                "or a hub id such as 'openai/gsm8k')")
    else:
        from labkit.hub import resolve_dataset  # DATA_DIR, the hub, a mirror or ModelScope

        raw = _read_local(Path(resolve_dataset(text, data_dir=data_dir)), split)
    rows = parse_lenient(raw, lambda item, index, where: parse_gsm8k_row(item, index, split, where),
                         f"{text} [{split}]")
    return _select(rows, levels, limit)


def load_problems(source: str, split: str, **kwargs: Any) -> list[dict]:
    """Problems from the kit ("kit", see load_split) or from GSM8K ("gsm8k", see load_gsm8k).

    split uses the kit's names; for GSM8K "eval" means its test split and every other name
    its train split ("test" and "train" are accepted too). GSM8K rows have reasoning but no
    chosen/rejected. kwargs go to load_split / load_gsm8k (levels, limit; path and data_dir for
    GSM8K).
    """
    if source == "kit":
        return load_split(split, **kwargs)
    if source == "gsm8k":
        names = {**{name: "train" for name in SPLIT_SCHEMAS}, "eval": "test", "train": "train",
                 "test": "test"}
        if split not in names:
            raise DataError(f"unknown split {split!r} for GSM8K; valid splits: {', '.join(names)}")
        return load_gsm8k(names[split], **kwargs)
    raise DataError(f"unknown source {source!r}; valid sources: 'kit', 'gsm8k'")


# ---------------------------------------------------------------- formatting


def format_response(reasoning: str, answer: str) -> str:
    """The course's response format: `<think>REASONING</think>ANSWER`."""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{answer}"


def _need(row: dict, fields: tuple[str, ...], helper: str) -> None:
    missing = [name for name in fields if name not in row]
    if missing:
        raise DataError(f"{helper} needs a row with {', '.join(map(repr, missing))}; "
                        f"this row (id {row.get('id')!r}) has only {', '.join(map(repr, row))}")


def prompt_messages(row: dict, system_prompt: str | None = None) -> list[dict]:
    """The conversational prompt (GRPO, evaluation): optional system message, then the question."""
    _need(row, ("question",), "prompt_messages")
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return system + [{"role": "user", "content": row["question"]}]


def sft_messages(row: dict, system_prompt: str | None = None) -> list[dict]:
    """The prompt plus the assistant's `<think>reasoning</think>answer` (TRL's "messages")."""
    _need(row, ("question", "reasoning", "answer"), "sft_messages")
    response = format_response(row["reasoning"], row["answer"])
    return prompt_messages(row, system_prompt) + [{"role": "assistant", "content": response}]


def preference_example(row: dict, system_prompt: str | None = None) -> dict:
    """TRL's conversational preference format: {"prompt", "chosen", "rejected"} message lists."""
    _need(row, ("question", "chosen", "rejected"), "preference_example")
    return {"prompt": prompt_messages(row, system_prompt),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def to_dataset(rows: list[dict], fn: Callable[[dict], dict]) -> Dataset:
    """A datasets.Dataset with the columns fn(row) returns, plus the row's own id and those of
    lang, level and answer that every row has (hub preference pairs have none of the three).

    fn must return a dict of columns, for example preference_example, or
    `lambda row: {"messages": sft_messages(row)}` for SFT and
    `lambda row: {"prompt": prompt_messages(row)}` for GRPO (whose reward functions then
    receive answer=[...] as a keyword argument).
    """
    from datasets import Dataset

    if not rows:
        raise DataError("to_dataset got no rows: the split, levels or limit you loaded left none")
    kept = ["id"] + [name for name in KEPT_COLUMNS[1:] if all(name in row for row in rows)]
    records = []
    for row in rows:
        columns = fn(row)
        if not isinstance(columns, dict):
            raise DataError(f"fn must return a dict of columns, such as "
                            f"{{'messages': sft_messages(row)}}; got {type(columns).__name__}")
        clash = [name for name in KEPT_COLUMNS if name in columns]
        if clash:
            raise DataError(f"fn returned {', '.join(map(repr, clash))}, which to_dataset "
                            "copies from the row itself; rename those columns")
        _need(row, ("id",), "to_dataset")
        records.append({**columns, **{name: row[name] for name in kept}})
    return Dataset.from_list(records)
