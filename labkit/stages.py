"""Stages: the results one lab hands to the next (base model, SFT model, ...).

`get_stage("sft", profile)` returns a local folder holding that stage:
- cpu profile: the kit ships its stages in data/stages/cpu/<name>/ (weights, tokenizer and a
  stage.json), so every machine starts from the same tiny world and nothing is trained;
- other profiles (and a cpu stage whose recipe was changed): built on demand from the stage's
  recipe into the cache ($LABKIT_CACHE, default .cache/labkit/), then reused.

A stage's key hashes its recipe: builder version, the profile settings it trains with, the
builder's constants, the data files and the upstream stages' keys. stage.json records the key,
the recipe, the sha256 and size of every file and the upstream stages it was built on. A stage is
used only when all of that checks out; otherwise it is rebuilt, saying why (never loaded silently).

    python -m labkit.stages build [NAMES] [--profile P] [--from-scratch]
    python -m labkit.stages check             # are the shipped cpu stages current and intact?
    python -m labkit.stages ship [NAMES]      # refresh the shipped cpu stages (instructors)
    python -m labkit.stages prepare [--profile P]  # lab.py course: cpu checks the shipped stages;
                                              # a GPU profile builds each when a lab needs it
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit.profiles import Profile, get_profile
from labkit.runtime import REPO_ROOT, cache_dir

# Bump a stage's version whenever its builder changes what it produces.
VERSIONS = {"base": 3, "sft": 1, "rm": 1, "grpo": 1}
DEPENDS = {"base": [], "sft": ["base"], "rm": ["sft"], "grpo": ["sft"]}
DATA_FILES = {"base": ["pretrain.jsonl"], "sft": ["sft.jsonl"], "rm": ["prefs.jsonl"], "grpo": ["rl.jsonl"]}
BASE_PRETRAIN_STEPS = 2000
# Where the kit's own stages live, one folder per profile and stage: data/stages/cpu/sft/.
SHIPPED_DIR = REPO_ROOT / "data" / "stages"
SHIPPED_PROFILES = ("cpu",)
# How long a caller waits for another process that is building the same stage.
LOCK_WAIT_ENV, LOCK_WAIT_DEFAULT_S = "LABKIT_LOCK_WAIT_S", 1800.0
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


# Stage folders whose files passed their sha256 check in this process: folder -> [(file, sha256, size, mtime)].
_verified: dict[Path, list] = {}


class StageError(RuntimeError):
    """A stage that cannot be provided: a lock held too long, a profile with no shipped stages."""


# ---------------------------------------------------------------- recipes and keys


def builder_constants(name: str, profile: Profile) -> dict:
    """The settings a builder uses besides the profile (module constants), part of its recipe."""
    if name == "base" and profile.model_id == "tiny":
        from labkit import tiny

        return {"pretrain_steps": BASE_PRETRAIN_STEPS, "batch_size": tiny.PRETRAIN_BATCH_SIZE,
                "lr": tiny.PRETRAIN_LR, "vocab_size": tiny.VOCAB_SIZE, "model": tiny.TINY_MODEL,
                "precision": "fp32"}
    if name == "rm":
        from labkit import preferences

        return {"heldout_pairs": preferences.HELDOUT_PAIRS,
                "hub_heldout_fraction": preferences.HUB_HELDOUT_FRACTION}
    if name == "grpo":
        from labkit import grpo

        return {"beta": grpo.GRPO_STAGE_BETA, "format_weight": grpo.FORMAT_WEIGHT,
                "train_levels": grpo.TRAIN_LEVELS.get(profile.dataset)}
    return {}


def recipe(name: str, profile: Profile) -> dict:
    """Everything that determines stage `name` for `profile` (what its key hashes)."""
    from labkit.data import DATA_DIR

    canonical = canonical_profile(name, profile).to_dict()
    is_tiny = canonical["model_id"] == "tiny"
    return {
        "stage": name, "version": VERSIONS[name],
        "profile": {k: canonical[k] for k in KEY_FIELDS[name]},
        "constants": {**builder_constants(name, profile),
                      # GPU stages since layout 2: QLoRA merged into full weights (it was an adapter
                      # folder), and a tokenizer whose eos is the chat's <|im_end|>
                      **({"gpu_layout": 2} if not is_tiny and name != "base" else {})},
        "data": {f: _file_hash(DATA_DIR / f)[:16] for f in DATA_FILES[name]} if is_tiny else {},
        "upstream": {d: stage_key(d, profile) for d in DEPENDS[name]},
    }


def stage_key(name: str, profile: Profile) -> str:
    """12 hex digits of the sha256 of the stage's recipe."""
    payload = json.dumps(recipe(name, profile), sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def canonical_profile(name: str, profile: Profile) -> Profile:
    """The settings a stage is built with: the profile as lab `name` sets it, ignoring a notebook's
    overrides (steps, learning rate...) except `model_id`, which names the base model itself
    (e.g. a local path on a machine without hub access)."""
    return get_profile(profile.name, lab=name, model_id=profile.model_id)


def stage_dir(name: str, profile: Profile) -> Path:
    """Where stage `name` is built and cached for `profile`."""
    return cache_dir() / profile.name / f"{name}-{stage_key(name, profile)}"


def shipped_dir(name: str, profile: Profile) -> Path:
    """Where the kit ships stage `name` for `profile` (exists for the cpu profile only)."""
    return SHIPPED_DIR / profile.name / name


# ---------------------------------------------------------------- checking a stage folder


def file_records(folder: Path) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} of every file in `folder` except stage.json."""
    return {p.relative_to(folder).as_posix(): {"sha256": _file_hash(p), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "stage.json"}


def stage_digest(folder: Path) -> str:
    """12 hex digits identifying a stage's contents (the hash of its recorded file hashes)."""
    files = _read_info(folder)["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


def check_stage(folder: Path, key: str) -> str | None:
    """What is wrong with the stage in `folder` for recipe `key`, or None when it is intact:
    stage.json readable, same key, and every recorded file present with its size and sha256."""
    try:
        info = _read_info(folder)
    except FileNotFoundError:
        return "stage.json is missing"
    except (OSError, ValueError) as error:
        return f"stage.json is unreadable ({error})"
    if info.get("key") != key:
        return f"it was made with another recipe (key {info.get('key')}, the current recipe is {key})"
    if not isinstance(info.get("files"), dict) or not info["files"]:
        return "stage.json lists no files and their sha256"
    seen = []
    for rel, expected in info["files"].items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        stat = path.stat()
        if stat.st_size != expected["bytes"]:
            return f"{rel} has {stat.st_size} bytes instead of {expected['bytes']} (truncated or replaced)"
        seen.append((rel, expected["sha256"], stat.st_size, stat.st_mtime_ns))
    if _verified.get(folder) == seen:
        return None  # hashed earlier in this process and not touched since (GPU stages are GBs)
    for rel, sha256, _, _ in seen:
        if _file_hash(folder / rel) != sha256:
            return f"{rel} fails its sha256 check (the file was changed or damaged)"
    _verified[folder] = seen
    return None


def _upstream_problem(folder: Path, deps: dict[str, Path]) -> str | None:
    """None when the stage in `folder` was built on exactly the upstream stages in `deps`."""
    recorded = _read_info(folder).get("upstream", {})
    for name, dep in deps.items():
        if recorded.get(name) != stage_digest(dep):
            return (f"it was built on another '{name}' stage ({recorded.get(name)}) than the one in "
                    f"use ({stage_digest(dep)})")
    return None


# ---------------------------------------------------------------- getting a stage


def get_stage(name: str, profile: Profile, rebuild: bool = False) -> Path:
    """The folder of stage `name` for `profile`: the shipped one, else the cached one, else built.

    rebuild=True builds it again from its recipe into the cache, ignoring both.
    """
    if name not in BUILDERS:
        raise KeyError(f"unknown stage {name!r}; known stages: {sorted(BUILDERS)}")
    key = stage_key(name, profile)
    deps = {d: get_stage(d, profile) for d in DEPENDS[name]}
    path = stage_dir(name, profile)
    if not rebuild:
        found = _usable(name, profile, key, deps)
        if found is not None:
            return found
    with _build_lock(path):
        if not rebuild and path.exists() and _problem(path, key, deps) is None:
            return path  # another process built it while this one waited
        return _build(name, profile, path, deps)


def _problem(folder: Path, key: str, deps: dict[str, Path]) -> str | None:
    """What makes the stage in `folder` unusable for recipe `key` on upstream `deps`, or None."""
    return check_stage(folder, key) or _upstream_problem(folder, deps)


def _usable(name: str, profile: Profile, key: str, deps: dict[str, Path]) -> Path | None:
    """The shipped stage if intact and current, else the cached one if so; say why one is not."""
    shipped, cached = shipped_dir(name, profile), stage_dir(name, profile)
    if shipped.exists():
        problem = _problem(shipped, key, deps)
        if problem is None:
            return shipped
        print(f"[labkit] the shipped stage '{name}' ({_show(shipped)}) is not used: {problem}. A damaged file "
              f"is restored by `git checkout -- {_show(shipped)}`; after a recipe change instructors run "
              f"`python -m labkit.stages ship {name}`. Using a stage built from the recipe instead.")
    if cached.exists():
        problem = _problem(cached, key, deps)
        if problem is None:
            return cached
        print(f"[labkit] the cached stage '{name}' ({_show(cached)}) is not used: {problem}; building it again.")
    return None


def ready_stage(name: str, profile: Profile) -> Path | None:
    """The folder get_stage would return for `name` without building anything (the shipped stage,
    else the cached one, on ready upstream stages), or None when it would have to build. Quiet."""
    deps = {}
    for dep in DEPENDS[name]:
        deps[dep] = ready_stage(dep, profile)
        if deps[dep] is None:
            return None
    key = stage_key(name, profile)
    for folder in (shipped_dir(name, profile), stage_dir(name, profile)):
        if folder.exists() and _problem(folder, key, deps) is None:
            return folder
    return None


def _show(path: Path) -> str:
    """`path` relative to the repository when it is inside it (messages stay short)."""
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock while building `path`, so two notebooks that need the same missing
    stage build it once (the second waits, then reuses it). A caller that finds the lock held says
    by whom and gives up after $LABKIT_LOCK_WAIT_S seconds (default 1800). No lock without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows: builds are not serialised
        yield
        return
    locks = cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock_path = locks / f"{path.parent.name}-{path.name}.lock"
    wait_s = float(os.environ.get(LOCK_WAIT_ENV, LOCK_WAIT_DEFAULT_S))
    with open(lock_path, "a+", encoding="utf-8") as lock:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = lock_path.read_text(encoding="utf-8").strip() or "another process"
                if time.monotonic() >= deadline:
                    raise StageError(
                        f"stage {path.name} is still being built by {holder} after {wait_s:g} s of waiting. "
                        f"Let that process finish (or stop it) and run again; {LOCK_WAIT_ENV} sets the wait."
                    ) from None
                if not told:
                    print(f"[labkit] stage {path.name} is being built by {holder}; waiting for it "
                          f"(at most {wait_s:g} s) ...", flush=True)
                    told = True
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} "
                   f"({' '.join(sys.argv)[:80]})")
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()
            lock.flush()
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(name: str, profile: Profile, path: Path, deps: dict[str, Path]) -> Path:
    print(f"[labkit] building stage '{name}' for profile '{profile.name}' (cached afterwards) ...")
    info = _write_stage(name, profile, path, deps,
                        lambda tmp: BUILDERS[name](canonical_profile(name, profile), tmp, deps))
    print(f"[labkit] stage '{name}' built in {info['seconds']} s")
    return path


def _write_stage(name: str, profile: Profile, path: Path, deps: dict[str, Path],
                 fill: Callable[[Path], dict]) -> dict:
    """Fill a temporary folder, record stage.json, then move it into place (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    built = fill(tmp)
    for folder in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()  # e.g. a trainer's output_dir it wrote nothing to
    info = {"stage": name, "profile": profile.name, "key": stage_key(name, profile),
            "recipe": recipe(name, profile), "upstream": {d: stage_digest(p) for d, p in deps.items()},
            "files": file_records(tmp), "built_with": _versions(),
            "seconds": round(time.perf_counter() - start, 1), **built}
    (tmp / "stage.json").write_text(json.dumps(info, indent=1, default=list) + "\n", encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return info


def publish_stage(name: str, profile: Profile, save: Callable[[Path], None], info: dict,
                  seed: int = 0) -> Path | None:
    """Keep a model a notebook trained as stage `name`, so later labs reuse it instead of
    training their own. Only when the notebook used the stage's own recipe (the canonical
    settings of every key field, seed 0), the kit ships no such stage and none is cached;
    otherwise say why not and return None (or the stage in use). `save(folder)` writes the model.
    """
    canonical = canonical_profile(name, profile)
    changed = [f for f in KEY_FIELDS[name] if getattr(profile, f) != getattr(canonical, f)]
    if changed or seed != 0:
        why = f"fields {changed} differ from the recipe" if changed else f"seed {seed} != 0"
        print(f"[labkit] not saved as stage '{name}': {why}; later labs build their own")
        return None
    key = stage_key(name, profile)
    deps = {d: get_stage(d, profile) for d in DEPENDS[name]}
    shipped = shipped_dir(name, profile)
    if shipped.exists() and _problem(shipped, key, deps) is None:
        print(f"[labkit] stage '{name}' ships with the kit ({_show(shipped)}); later labs use the shipped one")
        return shipped
    path = stage_dir(name, profile)
    with _build_lock(path):
        if path.exists() and _problem(path, key, deps) is None:
            print(f"[labkit] stage '{name}' is already cached; kept the cached one")
            return path

        def fill(tmp: Path) -> dict:
            save(tmp)
            return {**info, "published_by": "notebook"}

        _write_stage(name, profile, path, deps, fill)
    print(f"[labkit] saved as stage '{name}': later labs load it from the cache")
    return path


def stage_info(name: str, profile: Profile) -> dict:
    """The metadata a stage's builder recorded (build time, training log, ...)."""
    return _read_info(get_stage(name, profile))


def _read_info(folder: Path) -> dict:
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    """The libraries and CPU kernels a stage was built with (recorded, not part of the key)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    found = {"python": sys.version.split()[0], "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for package in ("torch", "transformers", "trl", "peft", "tokenizers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


# ---------------------------------------------------------------- the shipped stages


def _with_upstream(names: list[str]) -> list[str]:
    """`names` and every stage they depend on, each after its dependencies."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for dep in DEPENDS[name]:
            visit(dep)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def shipped_problems(profile_name: str = "cpu") -> dict[str, str]:
    """{stage: what is wrong} for the shipped stages of a profile; empty when all are current."""
    profile = get_profile(profile_name)
    problems: dict[str, str] = {}
    for name in _with_upstream(list(BUILDERS)):
        folder = shipped_dir(name, profile)
        if not folder.exists():
            problem = f"{_show(folder)} is missing"
        elif any(d in problems for d in DEPENDS[name]):
            problem = "a stage it is built on is not current"
        else:
            problem = _problem(folder, stage_key(name, profile), {d: shipped_dir(d, profile) for d in DEPENDS[name]})
        if problem:
            problems[name] = problem
    return problems


def ship(names: list[str], force: bool = False, profile_name: str = "cpu") -> list[str]:
    """Rebuild stale shipped stages (and `names` themselves when `force`) from their recipes and
    copy them into data/stages/<profile>/; returns the stages refreshed."""
    if profile_name not in SHIPPED_PROFILES:
        raise StageError(f"only the {SHIPPED_PROFILES} profile ships stages; {profile_name!r} builds them on demand")
    profile = get_profile(profile_name)
    refreshed = []
    for name in _with_upstream(names):
        stale = shipped_problems(profile_name)
        if name not in stale and not (force and name in names):
            print(f"{name:<6} up to date  {_show(shipped_dir(name, profile))}")
            continue
        print(f"[labkit] shipping stage '{name}': {stale.get(name, 'forced')}")
        built = get_stage(name, profile, rebuild=True)
        target = shipped_dir(name, profile)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(built, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        refreshed.append(name)
        print(f"{name:<6} shipped     {_show(target)}  ({stage_digest(target)})")
    return refreshed


# ---------------------------------------------------------------- builders


def build_base(profile: Profile, out: Path, deps: dict[str, Path]) -> dict:
    """CPU: train the tiny tokenizer and pretrain the tiny model. GPU: download the real model."""
    if profile.model_id != "tiny":
        from labkit.hub import resolve_model

        # An absolute path: the stage is read later from other working directories.
        path = Path(resolve_model(profile.model_id)).resolve()
        (out / "model_path.txt").write_text(str(path), encoding="utf-8")
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    from labkit.runtime import setup

    parser = argparse.ArgumentParser(prog="python -m labkit.stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "check", "ship", "prepare"])
    parser.add_argument("stages", nargs="*", help=f"stages (default: all of {list(BUILDERS)})")
    parser.add_argument("--profile", default="auto", help="build: the profile (default: auto)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="build: train again from the recipe, ignoring shipped and cached stages")
    parser.add_argument("--force", action="store_true", help="ship: rebuild the named stages even if current")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.stages) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; known stages: {list(BUILDERS)}")
    names = args.stages or list(BUILDERS)
    if args.command == "check":
        problems = shipped_problems()
        for name in names:
            print(f"{name:<6} {problems.get(name, 'ok')}")
        stale = [n for n in names if n in problems]
        if stale:
            print(f"refresh with: python -m labkit.stages ship {' '.join(stale)}")
        return 1 if stale else 0
    profile = setup("cpu" if args.command == "ship" else args.profile, quiet=True)
    if args.command == "ship":
        ship(names, force=args.force)
        return 0
    if args.command == "prepare" and profile.device != "cpu":
        print(f"profile {profile.name}: each stage is built (and cached) by the first lab that needs it")
        return 0
    for name in names:
        start = time.perf_counter()
        path = get_stage(name, profile, rebuild=args.from_scratch)
        print(f"{name:<6} {time.perf_counter() - start:7.1f} s  {_show(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
