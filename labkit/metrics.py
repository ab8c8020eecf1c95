"""Headline metrics of one notebook run: record them as you go, show them in the last cell.

    from labkit import metrics
    metrics.record(heldout_acc_before=0.05)
    ...
    metrics.record(heldout_acc_after=0.86)
    metrics.show()                      # the notebook's last cell

Names are identifier-like ("heldout_acc_after"); values are numbers or short strings. NaN is
allowed and means "not defined on this run" (e.g. an agreement rate over zero pairs): `show`
prints it as "n/a" and the JSON file holds null. Infinities are refused (they are bugs).
Recording a name again overwrites it. When the environment variable LABKIT_METRICS_FILE is set
(the course runner, `python -m labkit.course`, sets it), every `record` rewrites that JSON file
with all metrics so far, so the runner still gets them if a later cell fails. Without it
(JupyterLab, Colab) nothing is written: notebooks never depend on the runner.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from pathlib import Path

METRICS_FILE_ENV = "LABKIT_METRICS_FILE"
MAX_STRING_CHARS = 200
NOT_AVAILABLE = "n/a"  # how show() prints a NaN metric

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_metrics: dict[str, float | int | str] = {}


class MetricError(ValueError):
    """A metric name or value that cannot be recorded; the message says what to pass instead."""


def record(**metrics: float | int | str) -> None:
    """Store headline metrics for this run (later values overwrite earlier ones)."""
    if not metrics:
        raise MetricError("record() needs at least one metric, e.g. record(heldout_acc=0.86).")
    checked = {name: _check(name, value) for name, value in metrics.items()}
    _metrics.update(checked)
    path = os.environ.get(METRICS_FILE_ENV)
    if path:
        _write_json(Path(path), _metrics)


def recorded() -> dict[str, float | int | str]:
    """A copy of the metrics recorded so far, in recording order."""
    return dict(_metrics)


def show() -> None:
    """Display the recorded metrics as a table (a pandas DataFrame in Jupyter, else plain text)."""
    if not _metrics:
        print("No metrics recorded yet (call labkit.metrics.record(name=value)).")
        return
    try:
        import pandas as pd
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        pd = None
    shown = [_shown(value) for value in _metrics.values()]
    if pd is not None and get_ipython() is not None:
        display(pd.DataFrame({"metric": list(_metrics), "value": shown}))
        return
    width = max(len(name) for name in _metrics)
    for name, value in zip(_metrics, shown):
        print(f"{name.ljust(width)}  {value}")


def _is_nan(value: object) -> bool:
    """Whether `value` is a float NaN (the only non-finite number `record` keeps)."""
    return isinstance(value, float) and math.isnan(value)


def _shown(value: float | int | str) -> float | int | str:
    """The value as show() displays it: NaN becomes "n/a"."""
    return NOT_AVAILABLE if _is_nan(value) else value


def _check(name: str, value: object) -> float | int | str:
    """Return `value` as a plain float, int or str (NaN kept: written as null), or raise
    MetricError."""
    if not _NAME_RE.fullmatch(name):
        raise MetricError(f"Metric name {name!r} must look like a Python identifier, e.g. 'heldout_acc'.")
    if isinstance(value, bool):
        raise MetricError(f"Metric {name!r} is a bool; record 1/0 or a string such as 'yes' instead.")
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise MetricError(f"Metric {name!r} is a string of {len(value)} characters; "
                              f"headline metrics are short (at most {MAX_STRING_CHARS}).")
        return value
    if isinstance(value, numbers.Integral):  # int, numpy.int64, ...
        return int(value)
    if isinstance(value, numbers.Real):  # float, numpy.float32, ...
        if math.isinf(float(value)):
            raise MetricError(f"Metric {name!r} is infinite ({value}); record a finite number, "
                              "or NaN if it is not defined on this run.")
        return float(value)
    hint = " Call .item() on a one-element tensor first." if hasattr(value, "item") else ""
    raise MetricError(f"Metric {name!r} has type {type(value).__name__}; "
                      f"record a number or a short string.{hint}")


def _write_json(path: Path, metrics: dict[str, float | int | str]) -> None:
    """Write all metrics to `path` atomically (a reader never sees a half-written file), as strict
    JSON: NaN becomes null."""
    ready = {name: None if _is_nan(value) else value for name, value in metrics.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ready, ensure_ascii=False, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
