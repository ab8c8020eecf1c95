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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit.profiles import Profile, get_profile
from labkit.runtime import cache_dir

# Bump a stage's version whenever its builder changes what it produces.
VERSIONS = {"base": 2, "sft": 1, "rm": 1, "grpo": 1}
DEPENDS = {"base": [], "sft": ["base"], "rm": ["sft"], "grpo": ["sft"]}
DATA_FILES = {"base": ["pretrain.jsonl"], "sft": ["sft.jsonl"], "rm": ["prefs.jsonl"], "grpo": ["rl.jsonl"]}
BASE_PRETRAIN_STEPS = 2000
# The profile fields a training recipe reads (as the lab of the stage's name sets them).
TRAINING_FIELDS = ("device", "model_id", "dtype", "quant", "system_prompt", "lora_rank",
                   "lora_alpha", "lora_dropout", "lora_targets", "batch_size", "grad_accum",
                   "max_steps", "learning_rate", "max_length", "gradient_checkpointing")
# Profile fields a stage depends on; a field added to Profile for another lab changes no key.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "base": ("model_id", "dtype", "quant"),
    "sft": TRAINING_FIELDS + ("dataset",),
    "rm": TRAINING_FIELDS + ("pref_dataset",),
    "grpo": TRAINING_FIELDS + ("dataset", "num_generations", "rollout_batch_size", "max_new_tokens"),
}


def stage_key(name: str, profile: Profile) -> str:
    """Hash of what determines the stage: version, canonical profile, data, upstream keys."""
    from labkit.data import DATA_DIR

    canonical = canonical_profile(name, profile).to_dict()
    is_tiny = canonical["model_id"] == "tiny"
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
    with _build_lock(path):
        if (path / "stage.json").exists() and not rebuild:
            return path  # another process built it while this one waited
        return _build(name, profile, path, deps)


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock while building `path`, so two notebooks that need the same missing
    stage build it once (the second waits, then reuses it). No lock where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: builds are not serialised
        yield
        return
    locks = cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{path.parent.name}-{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(name: str, profile: Profile, path: Path, deps: dict[str, Path]) -> Path:
    print(f"[labkit] building stage '{name}' for profile '{profile.name}' (cached afterwards) ...")
    info = _write_stage(name, profile, path,
                        lambda tmp: BUILDERS[name](canonical_profile(name, profile), tmp, deps))
    print(f"[labkit] stage '{name}' built in {info['seconds']} s")
    return path


def _write_stage(name: str, profile: Profile, path: Path, fill: Callable[[Path], dict]) -> dict:
    """Fill a temporary folder, record stage.json, then move it into place (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    info = fill(tmp)
    info = {"stage": name, "profile": profile.name, "seconds": round(time.perf_counter() - start, 1),
            **info}
    (tmp / "stage.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return info


def publish_stage(name: str, profile: Profile, save: Callable[[Path], None], info: dict,
                  seed: int = 0) -> Path | None:
    """Keep a model a notebook trained as stage `name`, so later labs reuse it instead of
    training their own. Only when the notebook used the stage's own recipe (the canonical
    settings of every key field, seed 0) and the stage is not cached yet; otherwise say why
    not and return None (or the cached folder). `save(folder)` writes the model there.
    """
    canonical = canonical_profile(name, profile)
    changed = [f for f in KEY_FIELDS[name] if getattr(profile, f) != getattr(canonical, f)]
    if changed or seed != 0:
        why = f"fields {changed} differ from the recipe" if changed else f"seed {seed} != 0"
        print(f"[labkit] not saved as stage '{name}': {why}; later labs build their own")
        return None
    path = stage_dir(name, profile)
    with _build_lock(path):
        if (path / "stage.json").exists():
            print(f"[labkit] stage '{name}' is already cached; kept the cached one")
            return path

        def fill(tmp: Path) -> dict:
            save(tmp)
            return {**info, "published_by": "notebook"}

        _write_stage(name, profile, path, fill)
    print(f"[labkit] saved as stage '{name}': later labs load it from the cache")
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
    tiny.reset_chat_embeddings(model, tokenizer)  # so SFT can make <think> likely, not just argmax
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"model_id": "tiny", "params": sum(p.numel() for p in model.parameters()),
            "log": log}


def build_sft(profile: Profile, out: Path, deps: dict[str, Path]) -> dict:
    """LoRA SFT of the base stage on data/sft.jsonl (or GSM8K), the recipe lab 01 teaches."""
    from labkit.sft import train_sft

    return train_sft(profile, model_path(deps["base"]), out)


def build_rm(profile: Profile, out: Path, deps: dict[str, Path]) -> dict:
    """A reward model trained from the SFT stage on the preference pairs, as lab 02 teaches."""
    from labkit.reward_model import train_reward_model

    return train_reward_model(profile, model_path(deps["sft"]), out)


def build_grpo(profile: Profile, out: Path, deps: dict[str, Path]) -> dict:
    """A GRPO policy trained from the SFT stage with the rule rewards, as lab 05 teaches."""
    from labkit.grpo import train_grpo

    return train_grpo(profile, model_path(deps["sft"]), out)


BUILDERS: dict[str, Callable[[Profile, Path, dict[str, Path]], dict]] = {
    "base": build_base, "sft": build_sft, "rm": build_rm, "grpo": build_grpo,
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
