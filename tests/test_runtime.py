"""Tests for labkit.runtime: process setup in a fresh interpreter, cache location, seeding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from labkit import runtime
from labkit.profiles import ProfileError, get_profile
from labkit.runtime import REPO_ROOT, cache_dir, seed_everything, setup

# Variables setup() writes; each test starts without them (monkeypatch restores them after).
PROCESS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
               "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM",
               "TRANSFORMERS_NO_ADVISORY_WARNINGS")

# Runs in a fresh interpreter, so the environment is what setup() left, and huggingface_hub
# is imported only after setup() (as in a notebook).
SETUP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    assert "huggingface_hub" not in sys.modules and "transformers" not in sys.modules
    from labkit.runtime import setup
    profile = setup("cpu", seed=0)
    import torch
    from huggingface_hub import constants
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
             "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM")
    print("RESULT " + json.dumps({
        "env": {name: os.environ.get(name) for name in names},
        "threads": torch.get_num_threads(),
        "hub_offline": constants.HF_HUB_OFFLINE,
        "profile": profile.name,
    }))
""")


@pytest.fixture
def clean_env(monkeypatch):
    for name in PROCESS_ENV:
        monkeypatch.delenv(name, raising=False)


def test_setup_cpu_in_a_fresh_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_ENV and not k.startswith("HF_")}
    env["OMP_NUM_THREADS"] = "2"  # setup must override it, not keep it
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", SETUP_SCRIPT], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    report = json.loads(lines[-1].removeprefix("RESULT "))
    assert report["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                             "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                             "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    assert report["threads"] == 1
    assert report["hub_offline"] is True  # huggingface_hub saw the variable when imported
    assert report["profile"] == "cpu"
    # The short summary: machine, then model and budget, then where the full table is.
    summary = lines[:-1]
    assert len(summary) == 3 and summary[0].startswith("profile 'cpu' on cpu")
    assert summary[1].startswith("model tiny (fp32, LoRA r=16)")


def test_setup_keeps_telemetry_setting_of_the_user(clean_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    setup("cpu", quiet=True)
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "0"  # setdefault: the user's choice stays
    assert os.environ["HF_HUB_OFFLINE"] == "1"            # the CPU profile is always offline
    assert torch.get_num_threads() == 1


def test_setup_applies_lab_and_caller_overrides(clean_env, monkeypatch, capsys):
    monkeypatch.setattr("labkit.profiles.LAB_OVERRIDES", {"sft": {"cpu": {"max_steps": 5}}})
    profile = setup("cpu", lab="sft", quiet=True, batch_size=3, learning_rate=None)
    assert profile == get_profile("cpu", max_steps=5, batch_size=3)
    assert capsys.readouterr().out == ""  # quiet: no table


def test_setup_prints_a_short_profile_summary(clean_env, capsys):
    profile = setup("cpu", max_new_tokens=7, learning_rate=0.003)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3, out  # the full table only on request
    assert out[0].startswith("profile 'cpu' on ") and "lr 0.003" in out[1] and "up to 7 new tokens" in out[1]
    assert "profile.table()" in out[2]
    assert any(line.split() == ["max_new_tokens", "7"] for line in profile.table().splitlines())


def test_setup_refuses_a_gpu_profile_on_this_cpu_machine(clean_env):
    with pytest.raises(ProfileError, match="CUDA"):
        setup("t4", quiet=True)
    assert "OMP_NUM_THREADS" not in os.environ  # refused before touching the process


def test_setup_seeds_torch(clean_env):
    setup("cpu", seed=123, quiet=True)
    first = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(first, torch.rand(3))


def test_seed_everything_is_reproducible():
    import random

    import numpy as np

    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(8)
    c = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
    assert all(x != y for x, y in zip(a, c))


def test_cache_dir_honours_labkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "stages"))
    assert cache_dir() == tmp_path / "stages"
    monkeypatch.delenv("LABKIT_CACHE")
    assert cache_dir() == REPO_ROOT / ".cache" / "labkit"
    assert REPO_ROOT == Path(runtime.__file__).resolve().parent.parent
