"""The kit's shipped cpu stages (data/stages/cpu/): current with their recipes, intact, loadable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from labkit import models, stages
from labkit.profiles import get_profile

LAB_PY = Path(__file__).resolve().parent.parent / "lab.py"


def torch_pin() -> str:
    """The torch version lab.py installs (TORCH_PIN)."""
    spec = importlib.util.spec_from_file_location("lab_script", LAB_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TORCH_PIN


def test_shipped_stages_match_their_recipes():
    """Fails when a recipe (builder version, profile settings, constants, data) changed and the
    shipped artifact was not refreshed."""
    problems = stages.shipped_problems()
    assert not problems, ("shipped cpu stages are stale or damaged: " + "; ".join(
        f"{name}: {why}" for name, why in problems.items())
        + f". Refresh them with `python -m labkit.stages ship {' '.join(problems)}` and commit data/stages/.")


@pytest.mark.parametrize("name", list(stages.BUILDERS))
def test_shipped_stage_loads_finite_weights(name):
    profile = get_profile("cpu")
    folder = stages.shipped_dir(name, profile)
    info = json.loads((folder / "stage.json").read_text(encoding="utf-8"))
    assert info["built_with"]["torch"].split("+")[0] == torch_pin()     # built with the pinned stack
    assert info["recipe"] == json.loads(json.dumps(stages.recipe(name, profile)))
    tok = models.load_tokenizer(folder)
    if name == "rm":
        from labkit.reward_model import load_reward_model

        model = load_reward_model(folder, profile, tok)
    else:
        model = models.load_model(folder, profile)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(f["bytes"] for f in info["files"].values()) < 8 * 2**20   # a few MB each
