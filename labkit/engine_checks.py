"""labkit.engines' settings checked against the real schemas of the pinned engines (lab 08).

    checks = check_all(recipe)                    # builds the engines once (~20 s), then ~15 s
    for check in checks.values(): print(check)    # OK   verl_overrides: ...
    metrics = {check.metric: check.ok for check in checks.values()}   # verl_overrides_ok, ...

- check_verl: veRL 0.9.1's ppo_trainer.yaml composed by Hydra with verl_overrides(recipe) (Hydra
  refuses a key the yaml lacks); every value read back; the named choices (advantage estimator,
  loss aggregation, KL estimator, LR schedule) found in veRL's source, since Hydra does not check them.
- check_openrlhf: openrlhf_flags(recipe) parsed by OpenRLHF 0.11.2's own parser and argument checks
  (train_ppo_ray.py's __main__ block, prefix matching off); every value read back.
- check_deepspeed: deepspeed_config(2 and 3, recipe) through GRPOConfig(deepspeed=...), which fills
  the "auto" values as a TRL run does, then DeepSpeed 0.19.8's DeepSpeedConfig, whose pydantic
  models forbid unknown keys in each section (top-level keys: must be ones its runtime reads).
Each check also runs deliberate misspellings of the recipe's own settings and requires the engine
to reject them (else the check would prove nothing). A check never raises on a validation failure:
it returns Check(ok=False, detail=the reason). Problems with the environment raise EngineEnvError.

The engines cannot live in the kit's venv (their torch / transformers / Ray pins), so engines_env()
builds them once per version of requirements/engines.txt (and Python) under
labkit.runtime.cache_dir()/engines/<hash>/, with `pip --no-deps` and exact pins:
- venv/: Hydra and OmegaConf in a venv of their own (`pip --python venv/bin/python install`);
- site/: veRL's and OpenRLHF's wheels, unpacked and only read (their yaml, enums, argparse source);
- deepspeed/: DeepSpeed and its small requirements (`pip install --target`), imported by the kit's
  Python (DeepSpeed needs its torch) in a subprocess with deepspeed/ on PYTHONPATH.
The build needs the package index once (~20 s); the checks then run offline.
`python -m labkit.engine_checks [--profile cpu]` prints the three results.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import engines
from labkit.engines import EngineError, GRPORecipe, deepspeed_config, engine_settings, openrlhf_flags, verl_overrides
from labkit.runtime import REPO_ROOT, cache_dir

REQUIREMENTS = REPO_ROOT / "requirements" / "engines.txt"
SUBPROCESS_TIMEOUT_S = 300
# Signs that pip could not reach the package index at all.
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
           "Name or service not known", "No route to host", "ProxyError")
# The wheel tags OpenRLHF 0.11.2 and veRL 0.9.1 publish for Linux / Python 3.11: fixed, so that any
# machine downloads the same (pure-Python) files.
WHEEL_TAGS = ["--only-binary=:all:", "--platform", "manylinux1_x86_64", "--python-version", "3.11",
              "--implementation", "cp", "--abi", "cp311"]


class EngineEnvError(RuntimeError):
    """The engines' environment could not be built or used (not a verdict on the settings)."""


class EnginesOfflineError(EngineEnvError):
    """The package index could not be reached to build the engines' environment."""


# ---------------------------------------------------------------- the environment


@dataclass(frozen=True)
class EnginesEnv:
    root: Path          # cache_dir()/engines/<hash>
    python: Path        # the Hydra venv's interpreter
    site: Path          # unpacked veRL and OpenRLHF
    deepspeed: Path     # DeepSpeed, for the kit's Python

    @property
    def build_note(self) -> str:
        """What the build wrote when it finished, e.g. "built in 17 s"."""
        return (self.root / "ready").read_text(encoding="utf-8").strip()


def requirement_groups(text: str) -> dict[str, list[str]]:
    """The `# [name]` groups of requirements/engines.txt."""
    groups: dict[str, list[str]] = {}
    group: list[str] | None = None
    for line in text.splitlines():
        if match := re.match(r"#\s*\[(\w+)\]", line):
            group = groups.setdefault(match.group(1), [])
        elif requirement := line.split("#")[0].strip():
            if group is None:
                raise EngineEnvError(f"{REQUIREMENTS.name}: {requirement!r} comes before the first `# [group]` line")
            group.append(requirement)
    return groups


def pinned_version(package: str) -> str:
    """The version requirements/engines.txt pins for `package`."""
    for requirement in [r for group in requirement_groups(REQUIREMENTS.read_text("utf-8")).values() for r in group]:
        name, _, version = requirement.partition("==")
        if name.strip().lower() == package.lower():
            return version.strip()
    raise KeyError(package)


def _pip(args: list[str], what: str, **env: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode == 0:
        return
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and not line.startswith("WARNING: Location")]
    offline = [line for line in lines if any(sign in line for sign in OFFLINE)]
    if offline:
        reason = re.search(r"\[Errno [^\]]*\][^'\")]*", offline[-1])  # e.g. [Errno -3] Temporary failure ...
        raise EnginesOfflineError(f"no network: could not reach the package index to install {what} "
                                  f"(needed once, then cached): {reason[0] if reason else offline[-1].strip()[:300]}")
    tail = "\n".join(lines[-15:])
    raise EngineEnvError(f"could not install {what} (pip exit {done.returncode}):\n{tail}")


def _unpack(wheel: Path, site: Path) -> None:
    """A pure-Python wheel's files into `site` (what an install does, minus scripts and metadata)."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = re.sub(r"^[^/]+\.data/(purelib|platlib)/", "", info.filename)
            if info.is_dir() or ".." in name.split("/") or name.split("/")[0].endswith((".dist-info", ".data")):
                continue
            target = site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))


def _venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _build(root: Path, groups: dict[str, list[str]]) -> None:
    """Install the three groups into a fresh folder, then move it to `root` (never half-built there)."""
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    try:
        venv.EnvBuilder(with_pip=False).create(tmp / "venv")  # pip: the kit's, through --python
        _pip(["--python", str(_venv_python(tmp / "venv")), "install", "--no-deps", "-q", *groups["venv"]],
             "Hydra (for veRL's config)")
        _pip(["download", "--no-deps", "-q", "-d", str(tmp / "downloads"), *WHEEL_TAGS, *groups["wheels"]],
             "the veRL and OpenRLHF wheels")
        for wheel in sorted((tmp / "downloads").glob("*.whl")):
            _unpack(wheel, tmp / "site")
        _pip(["install", "--no-deps", "-q", "--target", str(tmp / "deepspeed"), *groups["deepspeed"]],
             "DeepSpeed", DS_BUILD_OPS="0")
        (tmp / "ready").write_text(f"built in {time.monotonic() - started:.0f} s\n")
        if root.exists() and not (root / "ready").exists():
            shutil.rmtree(root, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            if not (root / "ready").exists():  # else another process finished the same build first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def engines_env(build: bool = True) -> EnginesEnv:
    """The pinned engines, built on first use (`build=False`: EngineEnvError instead of building)."""
    text = REQUIREMENTS.read_text(encoding="utf-8")
    key = hashlib.sha256(f"{text}\n{sys.version}\n{platform.machine()}".encode()).hexdigest()[:16]
    root = cache_dir() / "engines" / key
    if not (root / "ready").exists():
        if not build:
            raise EngineEnvError(f"the engines are not built in {root}: call engines_env() or run "
                                 "`python -m labkit.engine_checks` (needs the package index once)")
        root.parent.mkdir(parents=True, exist_ok=True)
        _build(root, requirement_groups(text))
    return EnginesEnv(root, _venv_python(root / "venv"), root / "site", root / "deepspeed")


def _run_json(command: list[str], payload: Any, what: str, **env: str) -> list[dict[str, Any]]:
    """Run a check script that reads JSON on stdin and prints a JSON list as its last line. A script
    that does not get there is an environment problem (its per-case errors are in the list)."""
    with tempfile.TemporaryDirectory(prefix="labkit-engine-check-") as cwd:
        try:
            done = subprocess.run(command, input=json.dumps(payload), capture_output=True, text=True, cwd=cwd,
                                  env={**os.environ, **env}, timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise EngineEnvError(f"the {what} check ran over {SUBPROCESS_TIMEOUT_S} s") from error
    try:
        results = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        results = None
    if done.returncode != 0 or not isinstance(results, list):
        raise EngineEnvError(f"the {what} check script failed (exit {done.returncode}):\n"
                             f"{done.stdout[-1500:]}\n{done.stderr[-3000:]}")
    return results


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Check:
    name: str       # "verl_overrides", "openrlhf_args" or "deepspeed_configs"
    ok: bool
    detail: str     # what was validated and the misspellings rejected; or why it failed

    @property
    def metric(self) -> str:
        return f"{self.name}_ok"

    def __str__(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def short(message: str, limit: int = 160) -> str:
    """An engine's error on one line: pydantic's links and [type=...] and blank lines dropped."""
    lines = [re.sub(r"\s*\[type=[^\]]*\]", "", line).strip() for line in message.splitlines()]
    text = " | ".join(line for line in lines if line and not line.startswith("For further information"))
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Verdict:
    """Collects one recipe's findings into a Check."""

    def __init__(self, name: str) -> None:
        self.name, self.problems, self.validated, self.rejected = name, [], [], []

    def require(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition

    def misspelt(self, what: str, result: dict[str, Any], *expected: str) -> None:
        """`result` of a deliberate misspelling: it must fail with `expected` in the engine's error."""
        error = result.get("error", "")
        if result["ok"]:
            self.problems.append(f"{what} was accepted: the check cannot catch a wrong name")
        elif missing := [text for text in expected if text not in error]:
            self.problems.append(f"{what} failed for another reason than {missing}: {short(error, 300)}")
        else:
            self.rejected.append(f"{what} -> {short(error)}")

    def check(self) -> Check:
        if self.problems:
            return Check(self.name, False, "; ".join(self.problems))
        return Check(self.name, True, "; ".join(self.validated) + "; rejected as they should be: "
                     + "; ".join(self.rejected))


def _checked(name: str, recipes: Sequence[GRPORecipe], prepare: Callable[[GRPORecipe], Any],
             run: Callable[[list[Any]], list[Check]]) -> list[Check]:
    """Recipes an engine cannot express fail at once; the others are checked in one subprocess."""
    prepared: dict[int, Any] = {}
    checks: dict[int, Check] = {}
    for i, recipe in enumerate(recipes):
        try:
            prepared[i] = prepare(recipe)
        except EngineError as error:
            checks[i] = Check(name, False, str(error))
    if prepared:
        checks.update(zip(prepared, run(list(prepared.values())), strict=True))
    return [checks[i] for i in range(len(recipes))]


# ---------------------------------------------------------------- DeepSpeed

DEEPSPEED_SCRIPT = r'''
"""GRPOConfig(deepspeed=...) fills the "auto" values (transformers' HfTrainerDeepSpeedConfig, as a
TRL run does); DeepSpeed's DeepSpeedConfig then reads the result with its pydantic models, which
forbid unknown keys in every section. DeepSpeed ignores unknown top-level keys, so each must be a
string its runtime source spells out."""
import ast, json, sys, tempfile, types
from pathlib import Path

import deepspeed
from deepspeed.runtime.config import DeepSpeedConfig
from trl import GRPOConfig

runtime = Path(deepspeed.__file__).parent / "runtime"
known = {node.value for path in runtime.rglob("*.py") for node in ast.walk(ast.parse(path.read_text("utf-8")))
         if isinstance(node, ast.Constant) and isinstance(node.value, str)}
results = []
for case in json.load(sys.stdin):
    try:
        unknown = sorted(set(case["ds_config"]) - known)
        if unknown:
            raise KeyError(f"top-level keys DeepSpeed does not read: {unknown}")
        args = GRPOConfig(**case["grpo_kwargs"], deepspeed=case["ds_config"], output_dir=tempfile.mkdtemp(),
                          use_cpu=True, report_to="none")
        filled = args.hf_deepspeed_config
        model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=case["hidden_size"]))
        filled.trainer_config_finalize(args, model, case["max_steps"])
        ds = DeepSpeedConfig(filled.config)
        results.append({"ok": True, "version": deepspeed.__version__, "stage": ds.zero_optimization_stage,
                        "train_batch_size": ds.train_batch_size, "micro": ds.train_micro_batch_size_per_gpu,
                        "accum": ds.gradient_accumulation_steps, "bf16": ds.bfloat16_config.enabled,
                        "fp16": ds.float16_config.enabled, "config": filled.config})
    except Exception as error:
        results.append({"ok": False, "error": f"{type(error).__name__}: {error}"})
print(json.dumps(results, default=str))
'''
# Only sizes DeepSpeed's buckets ("auto" + the model's hidden size): any value works.
HIDDEN_SIZE = 2048


def _deepspeed_cases(recipe: GRPORecipe) -> list[dict[str, Any]]:
    case = dict(grpo_kwargs=engines.trl_grpo_kwargs(recipe), hidden_size=HIDDEN_SIZE, max_steps=recipe.max_steps)
    misspelt_zero = deepspeed_config(3, recipe)
    zero = misspelt_zero["zero_optimization"]
    zero["overlap_com"] = zero.pop("overlap_comm", True)
    misspelt_top = deepspeed_config(2, recipe)
    misspelt_top["gradient_clippin"] = misspelt_top.pop("gradient_clipping", 1.0)
    return [dict(case, ds_config=config) for config in
            (deepspeed_config(2, recipe), deepspeed_config(3, recipe), misspelt_zero, misspelt_top)]


def _deepspeed_verdict(recipe: GRPORecipe, results: list[dict[str, Any]]) -> Check:
    v = _Verdict("deepspeed_configs")
    zero2, zero3, bad_zero, bad_top = results
    version = pinned_version("deepspeed")
    for stage, result in ((2, zero2), (3, zero3)):
        if not v.require(result["ok"], f"ZeRO-{stage}: {short(result.get('error', ''), 400)}"):
            continue
        got = {k: result[k] for k in ("version", "stage", "micro", "accum", "train_batch_size", "bf16", "fp16")}
        want = dict(version=version, stage=stage, micro=recipe.micro_batch_size, accum=recipe.grad_accum,
                    train_batch_size=recipe.micro_batch_size * recipe.grad_accum,  # one process here
                    bf16=recipe.precision == "bf16", fp16=recipe.precision == "fp16")
        v.require(got == want, f"ZeRO-{stage}: DeepSpeed read {got}, expected {want}")
        v.require('"auto"' not in json.dumps(result["config"]), f"ZeRO-{stage}: an \"auto\" value was left unfilled")
    if v.problems:  # the misspellings' errors would only repeat the reason
        return v.check()
    v.validated.append(f"ZeRO-2 and ZeRO-3 configs, filled by GRPOConfig, read by DeepSpeed {version}'s "
                       f"DeepSpeedConfig (micro batch {recipe.micro_batch_size} x accumulation "
                       f"{recipe.grad_accum} per process, precision {recipe.precision})")
    v.misspelt("zero_optimization.overlap_com", bad_zero, "overlap_com", "Extra inputs")
    v.misspelt("top-level gradient_clippin", bad_top, "gradient_clippin")
    return v.check()


def _deepspeed_checks(env: EnginesEnv, recipes: Sequence[GRPORecipe]) -> list[Check]:
    def run(prepared: list[tuple[GRPORecipe, list[dict[str, Any]]]]) -> list[Check]:
        flat = _run_json([sys.executable, "-c", DEEPSPEED_SCRIPT], [c for _, cases in prepared for c in cases],
                         "DeepSpeed", PYTHONPATH=str(env.deepspeed), DS_ACCELERATOR="cpu")
        return [_deepspeed_verdict(recipe, flat[4 * i:4 * i + 4]) for i, (recipe, _) in enumerate(prepared)]

    return _checked("deepspeed_configs", recipes, lambda recipe: (recipe, _deepspeed_cases(recipe)), run)


# ---------------------------------------------------------------- veRL

VERL_SCRIPT = r'''
"""Compose veRL's ppo_trainer.yaml with Hydra (as verl.trainer.main_ppo does) and read keys back.
Hydra refuses to override a key the composed config does not have."""
import json, sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

job = json.load(sys.stdin)
results = []
with initialize_config_dir(config_dir=job["config_dir"], version_base=None):
    for case in job["cases"]:
        try:
            cfg = compose(config_name="ppo_trainer", overrides=case["overrides"])
            values = {key: OmegaConf.to_container(v) if OmegaConf.is_config(v := OmegaConf.select(cfg, key)) else v
                      for key in case["keys"]}
            results.append({"ok": True, "values": values})
        except Exception as error:
            results.append({"ok": False, "error": f"{type(error).__name__}: {error}"})
print(json.dumps(results))
'''
_A = "actor_rollout_ref.actor"
# Keys whose values are names veRL's code checks at run time (Hydra takes any string): where to find them.
VERL_NAMED = {"algorithm.adv_estimator": "adv_estimator", f"{_A}.loss_agg_mode": "loss_agg_mode",
              f"{_A}.kl_loss_type": "kl_loss_type", f"{_A}.optim.lr_scheduler_type": "lr_scheduler_type"}
VERL_MISSPELT = (f"{_A}.loss_agg_mode", f"{_A}.loss_agg_mod")


def _strings(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def verl_names(env: EnginesEnv) -> dict[str, set[str]]:
    """The names veRL's code accepts, read from its source: advantage estimators (the enum), loss
    aggregation modes (ActorConfig's check), KL estimators (kl_penalty_forward) and LR schedules."""
    def tree(path: str) -> ast.Module:
        return ast.parse((env.site / "verl" / path).read_text(encoding="utf-8"))

    def function(module: ast.Module, name: str) -> ast.AST:
        return next(n for n in ast.walk(module) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)

    try:
        algos = tree("trainer/ppo/core_algos.py")
        [modes] = [n.value for n in ast.walk(tree("workers/config/actor.py"))
                   if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "valid_loss_agg_modes"]
        compares = [n for n in ast.walk(function(algos, "kl_penalty_forward")) if isinstance(n, ast.Compare)]
        schedules = [n for n in ast.walk(tree("workers/engine/fsdp/transformer_impl.py"))
                     if isinstance(n, ast.Compare) and ast.unparse(n.left) == "lr_scheduler_type"]
        return {"adv_estimator": _strings(function(algos, "AdvantageEstimator")),
                "loss_agg_mode": {e.value for e in modes.elts},
                "kl_loss_type": set().union(*(_strings(c) for c in compares)),
                "lr_scheduler_type": set().union(*(_strings(c) for c in schedules))}
    except (OSError, StopIteration, ValueError, SyntaxError) as error:
        raise EngineEnvError(f"cannot read veRL's names from {env.site / 'verl'}: {error!r}") from error


def _hydra_plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _verl_case(recipe: GRPORecipe) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    overrides = verl_overrides(recipe)
    expected = {key: _hydra_plain(value) for key, value in [*engine_settings(recipe, "verl"), *engines.VERL_FIXED]}
    right, wrong = VERL_MISSPELT
    misspelt = [o.replace(f"{right}=", f"{wrong}=") if o.startswith(f"{right}=") else o for o in overrides]
    keys = sorted(expected)
    return dict(overrides=overrides, keys=keys), dict(overrides=misspelt, keys=keys), expected


def _verl_verdict(names: dict[str, set[str]], expected: dict[str, Any], result: dict[str, Any],
                  bad: dict[str, Any]) -> Check:
    v = _Verdict("verl_overrides")
    if v.require(result["ok"], f"ppo_trainer.yaml: {short(result.get('error', ''), 400)}"):
        differ = {k: (result["values"][k], want) for k, want in expected.items() if result["values"][k] != want}
        v.require(not differ, f"Hydra read back other values (got, set): {differ}")
    for key, kind in VERL_NAMED.items():
        if key in expected:
            v.require(expected[key] in names[kind],
                      f"{key}={expected[key]!r} is not one of veRL's {kind} names {sorted(names[kind])}")
    if v.problems:
        return v.check()
    v.validated.append(f"{len(expected)} overrides composed into veRL {pinned_version('verl')}'s "
                       f"ppo_trainer.yaml by Hydra and read back; {', '.join(VERL_NAMED.values())} "
                       "names found in veRL's source")
    v.misspelt(VERL_MISSPELT[1], bad, f"Could not override '{VERL_MISSPELT[1]}'")
    return v.check()


def _verl_checks(env: EnginesEnv, recipes: Sequence[GRPORecipe]) -> list[Check]:
    def run(cases: list[tuple[dict, dict, dict]]) -> list[Check]:
        job = dict(config_dir=str(env.site / "verl/trainer/config"),
                   cases=[c for good, bad, _ in cases for c in (good, bad)])
        flat = _run_json([str(env.python), "-c", VERL_SCRIPT], job, "veRL (Hydra)")
        names = verl_names(env)
        return [_verl_verdict(names, expected, flat[2 * i], flat[2 * i + 1])
                for i, (_, _, expected) in enumerate(cases)]

    return _checked("verl_overrides", recipes, _verl_case, run)


# ---------------------------------------------------------------- OpenRLHF

OPENRLHF_SCRIPT = r'''
"""Parse command lines with openrlhf/cli/train_ppo_ray.py's own parser and argument checks: its
`if __name__ == "__main__":` block runs (parser, parse_args, hierarchize, the asserts) with
allow_abbrev=False and `train` replaced by a recorder; nothing else of OpenRLHF is imported."""
import argparse, ast, contextlib, datetime, functools, importlib.util, io, json, os, sys, types
from pathlib import Path

site = Path(sys.argv[1])
source = site / "openrlhf/cli/train_ppo_ray.py"
[main] = [node for node in ast.parse(source.read_text("utf-8")).body
          if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"]
code = compile(ast.Module(body=main.body, type_ignores=[]), str(source), "exec")
for name in ("openrlhf", "openrlhf.utils"):  # hierarchize's module, without openrlhf.utils' imports
    sys.modules[name] = types.ModuleType(name)
spec = importlib.util.spec_from_file_location("openrlhf.utils.config", site / "openrlhf/utils/config.py")
sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
strict = types.SimpleNamespace(**vars(argparse))  # prefix matching would hide renamed flags
strict.ArgumentParser = functools.partial(argparse.ArgumentParser, allow_abbrev=False)


def plain(x):
    return {k: plain(v) for k, v in vars(x).items()} if isinstance(x, types.SimpleNamespace) else x


results = []
for argv in json.load(sys.stdin):
    trained, err = [], io.StringIO()
    sys.argv = ["train_ppo_ray.py", *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            exec(code, {"__name__": "__main__", "argparse": strict, "os": os, "datetime": datetime.datetime,
                        "train": trained.append})
        results.append({"ok": True, "args": plain(trained[0])})
    except SystemExit as exit:
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        results.append({"ok": False, "error": f"exit {exit.code}: {last}"})
    except Exception as error:
        results.append({"ok": False, "error": f"{type(error).__name__}: {error}"})
print(json.dumps(results, default=str))
'''
# (what, a change of the recipe's flags, the parser's error). The abbreviation would be accepted
# with argparse's default prefix matching; the flat flag is the name before OpenRLHF 0.11.
OPENRLHF_MUTATIONS: tuple[tuple[str, Callable[[list[str]], list[str]], str], ...] = (
    ("abbreviated --rollout.n_samples",
     lambda flags: ["--rollout.n_samples" if f == "--rollout.n_samples_per_prompt" else f for f in flags],
     "unrecognized arguments: --rollout.n_samples "),
    ("veRL's loss name seq-mean-token-sum-norm",
     lambda flags: [*flags, "--actor.loss_agg_mode", "seq-mean-token-sum-norm"],
     "invalid choice: 'seq-mean-token-sum-norm'"),
    ("pre-0.11 flag --advantage_estimator", lambda flags: [*flags, "--advantage_estimator", "group_norm"],
     "unrecognized arguments: --advantage_estimator group_norm"),
)


def _parsed(args: dict[str, Any], flag: str) -> Any:
    node = args
    for part in flag.removeprefix("--").split("."):
        node = node[part]
    return node


def _openrlhf_case(recipe: GRPORecipe) -> tuple[list[list[str]], dict[str, Any]]:
    flags = openrlhf_flags(recipe)
    expected = {flag: _hydra_plain(value) for flag, value in [*engine_settings(recipe, "openrlhf"),
                                                              *engines.OPENRLHF_FIXED]}
    return [flags, *(change(flags) for _, change, _ in OPENRLHF_MUTATIONS)], expected


def _openrlhf_verdict(expected: dict[str, Any], result: dict[str, Any], bad: list[dict[str, Any]]) -> Check:
    v = _Verdict("openrlhf_args")
    if v.require(result["ok"], f"train_ppo_ray: {short(result.get('error', ''), 400)}"):
        got = {}
        for flag in expected:
            try:
                got[flag] = _parsed(result["args"], flag)
            except (KeyError, TypeError):
                got[flag] = "(missing)"
        differ = {flag: (got[flag], want) for flag, want in expected.items() if got[flag] != want}
        v.require(not differ, f"the parser read other values (got, set): {differ}")
    if v.problems:
        return v.check()
    v.validated.append(f"{len(expected)} flags parsed by OpenRLHF {pinned_version('openrlhf')}'s "
                       "train_ppo_ray parser and checks (no prefix matching) and read back")
    for (what, _, message), result in zip(OPENRLHF_MUTATIONS, bad, strict=True):
        v.misspelt(what, result, message)
    return v.check()


def _openrlhf_checks(env: EnginesEnv, recipes: Sequence[GRPORecipe]) -> list[Check]:
    n = 1 + len(OPENRLHF_MUTATIONS)

    def run(cases: list[tuple[list[list[str]], dict]]) -> list[Check]:
        flat = _run_json([str(env.python), "-c", OPENRLHF_SCRIPT, str(env.site)],
                         [argv for argvs, _ in cases for argv in argvs], "OpenRLHF")
        return [_openrlhf_verdict(expected, flat[n * i], flat[n * i + 1:n * i + n])
                for i, (_, expected) in enumerate(cases)]

    return _checked("openrlhf_args", recipes, _openrlhf_case, run)


# ---------------------------------------------------------------- the API

CHECKS: dict[str, Callable[[EnginesEnv, Sequence[GRPORecipe]], list[Check]]] = {
    "verl": _verl_checks, "openrlhf": _openrlhf_checks, "deepspeed": _deepspeed_checks}


def check_recipes(env: EnginesEnv, engine: str, recipes: Sequence[GRPORecipe]) -> list[Check]:
    """One Check per recipe for `engine` ("verl", "openrlhf" or "deepspeed"), all in one subprocess
    (its start-up is most of the time: ~1 s for Hydra, ~15 s for DeepSpeed + TRL)."""
    if engine not in CHECKS:
        raise ValueError(f"unknown engine {engine!r}; choose one of {sorted(CHECKS)}")
    return CHECKS[engine](env, list(recipes))


def check_deepspeed(env: EnginesEnv, recipe: GRPORecipe) -> Check:
    return check_recipes(env, "deepspeed", [recipe])[0]


def check_verl(env: EnginesEnv, recipe: GRPORecipe) -> Check:
    return check_recipes(env, "verl", [recipe])[0]


def check_openrlhf(env: EnginesEnv, recipe: GRPORecipe) -> Check:
    return check_recipes(env, "openrlhf", [recipe])[0]


def check_all(recipe: GRPORecipe, build: bool = True) -> dict[str, Check]:
    """The three checks of `recipe`, run side by side: {"verl_overrides": Check, "openrlhf_args": ...,
    "deepspeed_configs": ...}. EngineEnvError (EnginesOfflineError without network) if the engines
    cannot be built; `build=False`: only use an environment built before."""
    env = engines_env(build)
    with ThreadPoolExecutor(len(CHECKS)) as pool:  # each check waits on its own subprocess
        futures = [pool.submit(check_recipes, env, engine, [recipe]) for engine in CHECKS]
        checks = [future.result()[0] for future in futures]
    return {check.name: check for check in checks}


def main(argv: list[str] | None = None) -> int:
    from labkit.engines import recipe_from_profile
    from labkit.profiles import get_profile

    parser = argparse.ArgumentParser(description="Lab 05's GRPO recipe checked against veRL, OpenRLHF and DeepSpeed.")
    parser.add_argument("--profile", default="24gb")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--precision", choices=sorted(engines.PRECISIONS),
                        help="instead of the profile's (OpenRLHF has no fp32, the cpu profile's)")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building the engines")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(gpus=args.gpus) | (dict(precision=args.precision) if args.precision else {})
    recipe = recipe_from_profile(get_profile(args.profile, lab="grpo"), **overrides)
    try:
        started = time.monotonic()
        env = engines_env(build=not args.no_build)
        print(f"engines: {env.root} ({env.build_note}; this time {time.monotonic() - started:.0f} s)")
        started = time.monotonic()
        checks = check_all(recipe, build=False)
    except EngineEnvError as error:
        print(f"engine environment: {error}", file=sys.stderr)
        return 2
    for check in checks.values():
        print(check)
    print(f"checked in {time.monotonic() - started:.1f} s")
    return 0 if all(check.ok for check in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
