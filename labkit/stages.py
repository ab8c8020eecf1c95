"""Stages: the results one lab hands to the next (base model, SFT model, ...), built on demand.

`get_stage("sft", profile)` returns a local folder holding that stage, building it (and the
stages it needs) if it is not in the cache yet. The cache key hashes everything that changes
the result (builder version, the profile's canonical settings, the data files), so a stale
stage is rebuilt instead of silently reused. Run `python -m labkit.stages build` to build all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from labkit.profiles import Profile, get_profile
from labkit.runtime import cache_dir

# Bump a stage's version whenever its builder changes what it produces.
VERSIONS = {"base": 1, "sft": 1}
DEPENDS = {"base": [], "sft": ["base"]}
DATA_FILES = {"base": ["pretrain.jsonl"], "sft": ["sft.jsonl"]}
BASE_PRETRAIN_STEPS = 2000
# Profile fields a stage depends on (None: all of them, as the lab of that name sets them).
KEY_FIELDS: dict[str, tuple[str, ...] | None] = {"base": ("model_id", "dtype", "quant"), "sft": None}


def stage_key(name: str, profile: Profile) -> str:
    """Hash of what determines the stage: version, canonical profile, data, upstream keys."""
    from labkit.data import DATA_DIR

    canonical = canonical_profile(name, profile).to_dict()
    is_tiny = canonical["model_id"] == "tiny"
    if KEY_FIELDS[name] is not None:
        canonical = {k: canonical[k] for k in KEY_FIELDS[name]}
    payload = {
        "stage": name, "version": VERSIONS[name], "profile": canonical,
        "data": {f: _file_hash(DATA_DIR / f) for f in DATA_FILES[name]} if is_tiny else {},
        "upstream": {d: stage_key(d, profile) for d in DEPENDS[name]},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def canonical_profile(name: str, profile: Profile) -> Profile:
    """The settings a stage is built with: the profile as lab `name` sets it, ignoring a notebook's
    overrides (steps, learning rate...) except `model_id`, which names the base model itself
    (e.g. a local path on a machine without hub access)."""
    return get_profile(profile.name, lab=name, model_id=profile.model_id)


def stage_dir(name: str, profile: Profile) -> Path:
    return cache_dir() / profile.name / f"{name}-{stage_key(name, profile)}"


def get_stage(name: str, profile: Profile, rebuild: bool = False) -> Path:
    """The folder of stage `name` for `profile`, built first if missing."""
    if name not in BUILDERS:
        raise KeyError(f"unknown stage {name!r}; known stages: {sorted(BUILDERS)}")
    path = stage_dir(name, profile)
    if (path / "stage.json").exists() and not rebuild:
        return path
    deps = {d: get_stage(d, profile) for d in DEPENDS[name]}
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"[labkit] building stage '{name}' for profile '{profile.name}' (cached afterwards) ...")
    start = time.perf_counter()
    info = BUILDERS[name](canonical_profile(name, profile), tmp, deps)
    info = {"stage": name, "profile": profile.name, "seconds": round(time.perf_counter() - start, 1),
            **info}
    (tmp / "stage.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    print(f"[labkit] stage '{name}' built in {info['seconds']} s")
    return path


def stage_info(name: str, profile: Profile) -> dict:
    """The metadata a stage's builder recorded (build time, training log, ...)."""
    return json.loads((get_stage(name, profile) / "stage.json").read_text(encoding="utf-8"))


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------- builders

def build_base(profile: Profile, out: Path, deps: dict[str, Path]) -> dict:
    """CPU: train the tiny tokenizer and pretrain the tiny model. GPU: download the real model."""
    if profile.model_id != "tiny":
        from labkit.hub import resolve_model

        (out / "model_path.txt").write_text(resolve_model(profile.model_id), encoding="utf-8")
        return {"model_id": profile.model_id}
    from labkit import tiny
    from labkit.data import load_split

    rows = load_split("pretrain")
    tokenizer = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
    model = tiny.build_model(tokenizer, seed=0)
    log = tiny.pretrain(model, tokenizer, rows, steps=BASE_PRETRAIN_STEPS)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"model_id": "tiny", "params": sum(p.numel() for p in model.parameters()),
            "log": log}


def build_sft(profile: Profile, out: Path, deps: dict[str, Path]) -> dict:
    """LoRA SFT of the base stage on data/sft.jsonl (or GSM8K), the recipe lab 01 teaches."""
    from labkit.sft import train_sft

    return train_sft(profile, model_path(deps["base"]), out)


BUILDERS: dict[str, Callable[[Profile, Path, dict[str, Path]], dict]] = {
    "base": build_base, "sft": build_sft,
}


def model_path(stage: Path) -> Path:
    """Where a stage's model lives: the stage folder itself, or the path a GPU base points at."""
    pointer = stage / "model_path.txt"
    return Path(pointer.read_text(encoding="utf-8").strip()) if pointer.exists() else stage


def main(argv: list[str] | None = None) -> None:
    import argparse

    from labkit.runtime import setup

    parser = argparse.ArgumentParser(description="Build (or check) labkit stages.")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("stages", nargs="*", default=list(BUILDERS))
    parser.add_argument("--profile", default="auto")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    profile = setup(args.profile, quiet=True)
    for name in args.stages:
        start = time.perf_counter()
        path = get_stage(name, profile, rebuild=args.rebuild)
        print(f"{name:<6} {time.perf_counter() - start:7.1f} s  {path.name}")


if __name__ == "__main__":
    main()
