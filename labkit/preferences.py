"""Preference pairs for the reward-model and DPO labs: the kit's pairs or a hub preference set.

Every pair comes back as a dict with at least "id", "question", "chosen" and "rejected"
(the two responses as plain text), split into "train" and "heldout" the same way every time,
so the reward model, DPO and their evaluations never see their held-out pairs in training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.data import DataError, load_split, parse_lenient, preference_example, to_dataset

if TYPE_CHECKING:
    from datasets import Dataset

HELDOUT_PAIRS = 200          # the kit's last 200 pairs are held out
HUB_HELDOUT_FRACTION = 0.1   # a hub set with one split: its last 10 % is held out
SPLITS = ("train", "heldout")

# Column names of public preference sets, tried in order: (prompt, chosen, rejected).
HUB_COLUMNS = (
    ("prompt", "chosen", "rejected"),                          # TRL's format (text or messages)
    ("instruction", "chosen_response", "rejected_response"),   # argilla/distilabel-math-preference-dpo
    ("question", "chosen", "rejected"),
)


def load_preferences(source: str, split: str, limit: int | None = None,
                     data_dir: str | Path | None = None) -> list[dict]:
    """Pairs of `split` ("train" or "heldout") from "kit" (data/prefs.jsonl), a hub id or a path.

    Kit rows keep every field of data/prefs.jsonl (answer, level, rejected_kind, ...). A hub id
    is found by labkit.hub.resolve_dataset (DATA_DIR, the hub or its mirror, ModelScope; data_dir
    defaults to $LABKIT_HUB_DATA_DIR); a local .parquet, .jsonl or folder is read directly.
    limit keeps the first `limit` pairs of the split. Bad hub rows are skipped with a warning
    (labkit.data.parse_lenient); the kit's own pairs are strict.
    """
    if split not in SPLITS:
        raise DataError(f"unknown preference split {split!r}; valid splits: {', '.join(SPLITS)}")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise DataError(f"limit must be None or an integer >= 1, got {limit!r} (e.g. limit=100)")
    if source == "kit":
        rows = load_split("prefs")
        cut = len(rows) - HELDOUT_PAIRS
    else:
        rows = _load_hub_pairs(source, data_dir)
        if len(rows) < 2:
            raise DataError(f"{source}: {len(rows)} usable pair(s); a preference set needs at least 2 "
                            "(the last 10 % of the pairs, at least one, are held out)")
        cut = len(rows) - max(1, int(len(rows) * HUB_HELDOUT_FRACTION))
    rows = rows[:cut] if split == "train" else rows[cut:]
    return rows[:limit] if limit is not None else rows


def pair_dataset(rows: list[dict], system_prompt: str | None = None) -> Dataset:
    """Pairs in TRL's conversational preference format, for RewardTrainer and DPOTrainer."""
    return to_dataset(rows, lambda r: preference_example(r, system_prompt))


def _load_hub_pairs(source: str, data_dir: str | Path | None = None) -> list[dict]:
    """Every pair of a local file or folder, or of hub id `source` (see load_preferences)."""
    from labkit.data import _read_local  # the parquet/jsonl reader the GSM8K loader uses

    text = os.path.expanduser(source)
    if not os.path.exists(text):
        from labkit.hub import resolve_dataset

        text = resolve_dataset(source, data_dir=data_dir)
    path = Path(text)
    if path.is_dir():
        files = sorted(path.rglob("train*.parquet")) + sorted(path.rglob("train*.jsonl"))
        if not files:
            raise DataError(f"{path}: no train*.parquet or train*.jsonl file in this folder")
        raw = [row for file in files for row in _read_local(file, "train")]
    else:
        raw = _read_local(path, "train")
    return parse_lenient(raw, parse_pair, source)


def parse_pair(raw: Any, index: int, where: str) -> dict:
    """One hub row as {"id": "pair-<index>", "question", "chosen", "rejected"}.

    index numbers the row among all rows read; where locates it for error messages
    ("train.jsonl:4", "train-0.parquet [row 3]").
    """
    at = where
    if not isinstance(raw, dict):
        raise DataError(f"{at}: expected a JSON object, got {type(raw).__name__}", "not an object")
    for prompt_key, chosen_key, rejected_key in HUB_COLUMNS:
        if {prompt_key, chosen_key, rejected_key} <= raw.keys():
            break
    else:
        known = "; ".join(", ".join(cols) for cols in HUB_COLUMNS)
        raise DataError(f"{at}: no known preference columns (have {sorted(raw)}; expected one of: "
                        f"{known})", "no known preference columns")
    pair = {"id": f"pair-{index:05d}", "question": _text(raw[prompt_key], "user", at),
            "chosen": _text(raw[chosen_key], "assistant", at),
            "rejected": _text(raw[rejected_key], "assistant", at)}
    for key in ("question", "chosen", "rejected"):
        if not pair[key].strip():
            raise DataError(f"{at}: {key} is empty", f"empty {key}")
    if pair["chosen"] == pair["rejected"]:
        raise DataError(f"{at}: chosen and rejected are the same text", "chosen == rejected")
    return pair


def _text(value: Any, role: str, at: str) -> str:
    """A plain string, or the last `role` message of a conversational (TRL) column."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        contents = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == role]
        if contents and isinstance(contents[-1], str):
            return contents[-1]
    raise DataError(f"{at}: expected a string or a list of messages with a {role!r} message, "
                    f"got {str(value)[:60]!r}", "not text or messages")
