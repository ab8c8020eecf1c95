"""Start of every notebook: pick the profile, set the process up for it, print the table.

`setup()` must run before transformers / datasets are imported, because they read
HF_HUB_OFFLINE, HF_ENDPOINT and the cache locations when they are imported.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path
from typing import Any

from labkit.profiles import Profile, get_profile

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where stages and other built artefacts live: $LABKIT_CACHE, else <repo>/.cache/labkit."""
    return Path(os.environ.get("LABKIT_CACHE", REPO_ROOT / ".cache" / "labkit"))


def configure_process(profile: Profile) -> None:
    """Environment that must be in place before Hugging Face libraries are imported."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from labkit.standin import world

    on_cpu = profile.device == "cpu" or world() is not None  # a stand-in run computes on the CPU
    if on_cpu:
        # One OpenMP thread: on 2 shared cores, 2 threads made a 0.7 s run take 10.7 s.
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        # The CPU profile never needs the hub: fail fast instead of waiting on timeouts.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    import torch

    if on_cpu:
        torch.set_num_threads(1)
    if world() is not None and profile.dtype == "fp16":
        from labkit.standin import emulate_fp16_amp

        emulate_fp16_amp()  # the T4's fp16 autocast + GradScaler, on the CPU
    quiet_known_noise()
    # TRL 1.16 still calls a transformers 5 method that was renamed; nothing for a student to do.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def quiet_known_noise() -> None:
    """Silence harmless noise: bitsandbytes looks for an optional CPU kernel package (a warning in
    some versions, a log record in 0.50)."""
    warnings.filterwarnings("ignore", message=".*kernels-community.*")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(profile: str = "auto", lab: str | None = None, seed: int = 0, mirror: str | None = None,
          quiet: bool = False, time_budget_min: float | None = None,
          lab_params: dict[str, Any] | None = None, **overrides: Any) -> Profile:
    """Resolve the profile for `lab`, configure the process, seed RNGs and print a short summary
    (`profile.table()` has every field).

    `mirror` (e.g. "https://hf-mirror.com") sets HF_ENDPOINT for GPU profiles in China; see
    labkit.hub. `overrides` are profile fields set in the notebook's parameters cell, e.g.
    `data_dir` (a folder of hand-downloaded datasets and models, tried before any download).
    On a GPU profile the lab's time plan is printed (labkit.timeplan) and a plan over
    `time_budget_min` (None: the profile's budget) raises TimeBudgetError before any model loads.
    `lab_params`: the notebook parameters the plan counts that are not profile fields
    (e.g. {"EVAL_SAMPLES": 4}; None values mean the profile's, see profiles.notebook_params).
    """
    from labkit.hardware import detect

    hardware = detect()
    prof = get_profile(profile, lab=lab, hardware=hardware, **overrides)
    if prof.device == "cuda" or prof.data_dir:
        from labkit.hub import configure_hub

        # DATA_DIR (hand-downloaded datasets / models) is read by every loader, stage builders included.
        configure_hub(mirror=mirror if prof.device == "cuda" else None, data_dir=prof.data_dir)
    configure_process(prof)
    seed_everything(seed)
    if not quiet:
        print(prof.summary(hardware))
    if prof.device == "cuda":
        from labkit.timeplan import time_preflight

        time_preflight(prof, hardware, lab, budget_min=time_budget_min, params=lab_params, quiet=quiet)
    return prof
