"""Tests for labkit.metrics: validation, overwrite order, the runner's JSON file, show()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from labkit import metrics
from labkit.metrics import MetricError


@pytest.fixture(autouse=True)
def fresh_metrics(monkeypatch):
    monkeypatch.setattr(metrics, "_metrics", {})
    monkeypatch.delenv(metrics.METRICS_FILE_ENV, raising=False)


def test_record_overwrites_and_keeps_order():
    metrics.record(b=1, a=0.5)
    metrics.record(b=2, c="cpu")
    assert metrics.recorded() == {"b": 2, "a": 0.5, "c": "cpu"}
    assert list(metrics.recorded()) == ["b", "a", "c"]


def test_recorded_is_a_copy():
    metrics.record(a=1)
    metrics.recorded()["a"] = 99
    assert metrics.recorded() == {"a": 1}


def test_numpy_scalars_become_plain_numbers():
    metrics.record(f=np.float32(0.25), i=np.int64(7))
    values = metrics.recorded()
    assert values == {"f": 0.25, "i": 7}
    assert type(values["f"]) is float and type(values["i"]) is int


def test_writes_file_when_env_var_set(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    monkeypatch.setenv(metrics.METRICS_FILE_ENV, str(path))
    metrics.record(acc=0.5)
    assert json.loads(path.read_text()) == {"acc": 0.5}
    metrics.record(acc=0.75, note="中文")
    assert json.loads(path.read_text(encoding="utf-8")) == {"acc": 0.75, "note": "中文"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_no_file_without_env_var(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics.record(acc=0.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({}, "at least one"),
    ({"a": math.inf}, "infinite"),
    ({"a": -math.inf}, "infinite"),
    ({"a": np.float32("inf")}, "infinite"),
    ({"a": True}, "bool"),
    ({"a": "x" * 201}, "201 characters"),
    ({"a": [1, 2]}, "type list"),
    ({"a": torch.tensor(0.5)}, r"\.item\(\)"),
    ({"a": None}, "type NoneType"),
])
def test_bad_values_are_rejected(kwargs, match):
    with pytest.raises(MetricError, match=match):
        metrics.record(**kwargs)
    assert metrics.recorded() == {}


def test_bad_names_are_rejected():
    with pytest.raises(MetricError, match="identifier"):
        metrics.record(**{"held-out acc": 0.5})
    with pytest.raises(MetricError, match="identifier"):
        metrics.record(**{"1acc": 0.5})


def test_a_bad_value_records_nothing():
    with pytest.raises(MetricError):
        metrics.record(good=1, bad=math.inf)
    assert metrics.recorded() == {}


def test_show_prints_table_outside_ipython(capsys):
    metrics.record(heldout_acc=0.86, profile="cpu")
    metrics.show()
    assert capsys.readouterr().out == "heldout_acc  0.86\nprofile      cpu\n"


def test_nan_is_recorded_shown_as_na_and_written_as_null(tmp_path, monkeypatch, capsys):
    # e.g. an agreement rate over zero (right, wrong) pairs: undefined, not an error
    path = tmp_path / "m.json"
    monkeypatch.setenv(metrics.METRICS_FILE_ENV, str(path))
    metrics.record(agreement=math.nan, n_pairs=0, f32=np.float32("nan"))
    values = metrics.recorded()
    assert math.isnan(values["agreement"]) and type(values["f32"]) is float and math.isnan(values["f32"])
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text  # strict JSON: other tools cannot read NaN
    assert json.loads(text) == {"agreement": None, "n_pairs": 0, "f32": None}
    metrics.show()
    assert capsys.readouterr().out == "agreement  n/a\nn_pairs    0\nf32        n/a\n"


def test_show_without_metrics(capsys):
    metrics.show()
    assert "No metrics recorded" in capsys.readouterr().out
