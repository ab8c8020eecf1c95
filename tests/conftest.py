"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from labkit import tiny
from labkit.data import load_split


@pytest.fixture(scope="module")
def tiny_policy():
    """An untrained tiny model and the tokenizer built from 200 pretraining rows (seconds to make)."""
    rows = load_split("pretrain")[:200]
    tok = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
    return tiny.build_model(tok, seed=0), tok
