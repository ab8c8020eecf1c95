"""Tests for labkit.preferences: the kit's train / held-out split and hub preference sets."""

from __future__ import annotations

import json
import re

import pytest

from labkit.data import DataError, DataWarning
from labkit.preferences import HELDOUT_PAIRS, load_preferences, parse_pair


def test_kit_split_is_disjoint_and_complete():
    train = load_preferences("kit", "train")
    heldout = load_preferences("kit", "heldout")
    assert len(heldout) == HELDOUT_PAIRS == 200
    assert len(train) == 1300
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert heldout[0]["id"] == "prefs-01300"           # the last 200 rows, in file order
    assert {"question", "chosen", "rejected", "rejected_kind", "answer"} <= heldout[0].keys()


def test_kit_pairs_have_every_rejected_kind_in_both_splits():
    for split in ("train", "heldout"):
        kinds = {r["rejected_kind"] for r in load_preferences("kit", split)}
        assert kinds == {"bad_format", "no_reasoning", "wrong_final", "wrong_step"}


def test_limit_and_unknown_split():
    assert len(load_preferences("kit", "train", limit=5)) == 5
    with pytest.raises(DataError, match="valid splits: train, heldout"):
        load_preferences("kit", "test")


@pytest.mark.parametrize("raw, question, chosen", [
    ({"prompt": "1+1?", "chosen": "2", "rejected": "3"}, "1+1?", "2"),
    ({"prompt": [{"role": "user", "content": "1+1?"}],
      "chosen": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
      "rejected": [{"role": "assistant", "content": "3"}]}, "1+1?", "2"),
    ({"instruction": "1+1?", "chosen_response": "2", "rejected_response": "3", "chosen_rating": 9},
     "1+1?", "2"),
])
def test_parse_pair_reads_known_layouts(raw, question, chosen):
    pair = parse_pair(raw, 7, "some/set")
    assert pair == {"id": "pair-00007", "question": question, "chosen": chosen, "rejected": "3"}


@pytest.mark.parametrize("raw, message", [
    ({"text": "x"}, r"^train.jsonl:4: no known preference columns"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, r"^train.jsonl:4: chosen and rejected are the same"),
    ({"prompt": "q", "chosen": " ", "rejected": "b"}, r"^train.jsonl:4: chosen is empty"),
    ({"prompt": "q", "chosen": 5, "rejected": "b"}, r"^train.jsonl:4: expected a string or a list of messages"),
    ("not a dict", r"^train.jsonl:4: expected a JSON object"),
])
def test_parse_pair_names_the_bad_row(raw, message):
    with pytest.raises(DataError, match=message):
        parse_pair(raw, 3, "train.jsonl:4")


def _pairs(n: int) -> list[dict]:
    return [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def test_a_few_bad_hub_pairs_are_skipped_and_named(tmp_path):
    rows = _pairs(40)
    rows[5] = {"prompt": "q", "chosen": "same", "rejected": "same"}
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.warns(DataWarning,
                      match=re.escape(f"1 of 40 rows are bad (1 chosen == rejected); first: {path}:6: ")):
        train = load_preferences(str(path), "train")
    assert len(train) == 36 and train[5]["id"] == "pair-00006"


def test_mostly_bad_hub_pairs_are_refused(tmp_path):
    rows = [{"prompt": "q", "chosen": "same", "rejected": "same"}] * 3 + _pairs(5)
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: 3 of 8 rows are bad")):
        load_preferences(str(path), "train")


def test_a_one_pair_set_and_bad_limits_are_refused_with_the_source(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(_pairs(1)[0]), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: 1 usable pair(s); a preference set needs at least 2")):
        load_preferences(str(path), "train")
    for limit in (-5, 0, 2.5, "3"):
        with pytest.raises(DataError, match="limit must be None or an integer >= 1"):
            load_preferences("kit", "train", limit=limit)


def test_local_hub_snapshot_is_split_by_fraction(tmp_path):
    folder = tmp_path / "snapshot" / "data"
    folder.mkdir(parents=True)
    rows = [{"instruction": f"q{i}", "chosen_response": f"good {i}", "rejected_response": f"bad {i}"}
            for i in range(30)]
    (folder / "train-00000.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    train = load_preferences(str(tmp_path / "snapshot"), "train")
    heldout = load_preferences(str(tmp_path / "snapshot"), "heldout")
    assert [r["question"] for r in heldout] == ["q27", "q28", "q29"]   # the last 10 %
    assert len(train) == 27


def test_hub_id_is_read_from_data_dir(tmp_path, monkeypatch):
    """argilla/distilabel-math-preference-dpo put by hand into DATA_DIR, in the hub's layout
    (data/train-00000-of-00001.parquet), with no hub access at all."""
    import urllib.request

    import pandas as pd

    from labkit import hub

    monkeypatch.delenv("LABKIT_STANDIN", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("used the network"))
    folder = tmp_path / "argilla" / "distilabel-math-preference-dpo" / "data"
    folder.mkdir(parents=True)
    pd.DataFrame([{"instruction": f"q{i}", "chosen_response": f"good {i}", "rejected_response": f"bad {i}"}
                  for i in range(10)]).to_parquet(folder / "train-00000-of-00001.parquet")
    pairs = load_preferences("argilla/distilabel-math-preference-dpo", "heldout", data_dir=tmp_path)
    assert [p["question"] for p in pairs] == ["q9"]
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    assert len(load_preferences("argilla/distilabel-math-preference-dpo", "train")) == 9


def test_folder_without_train_files_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no train"):
        load_preferences(str(tmp_path), "train")


def test_hub_pairs_become_a_trl_dataset(tmp_path):
    """Regression (GPU profiles stopped here): hub pairs have no lang / level / answer, and
    pair_dataset must still build TRL's conversational preference dataset from them."""
    from labkit.preferences import pair_dataset

    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"instruction": f"q{i}", "chosen_response": f"good {i}", "rejected_response": f"bad {i}"}
            for i in range(20)]
    (folder / "train-00000.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    dataset = pair_dataset(load_preferences(str(tmp_path), "train"), system_prompt="S")
    assert dataset.column_names == ["prompt", "chosen", "rejected", "id"]
    assert dataset[0]["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "q0"}]
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": "good 0"}]
