"""labkit.engines against the real schemas of the pinned engines (requirements/engines.txt).

TRL and accelerate are the kit's own packages: checked in this process. veRL, OpenRLHF and DeepSpeed
go through labkit.engine_checks, as lab 08 does: `engines_env()` builds them once per version of the
requirements file (and Python) under $LABKIT_CACHE/engines/<hash>/ (an install that fails fails the
tests with pip's message; with no network at all they are skipped), and each check_* runs a
misspelt key or flag that must be rejected, else the Check is not ok (it would prove nothing).
"""

from __future__ import annotations

import re
from dataclasses import fields, replace

import pytest
import yaml
from trl import GRPOConfig

from labkit import engine_checks, engines
from labkit.engine_checks import Check, EngineEnvError, EnginesEnv, EnginesOfflineError, check_recipes
from labkit.engines import (KNOBS, EngineError, GRPORecipe, accelerate_command, accelerate_deepspeed_config,
                            engine_settings, openrlhf_command, recipe_from_profile, side_by_side, trl_grpo_kwargs,
                            verl_command, vllm_settings)
from labkit.profiles import get_profile

PROFILES = ("cpu", "t4", "24gb", "80gb")
# Lab 06's variants as recipe changes.
VARIANTS = {"grpo": {}, "dapo": dict(loss_agg="dapo", epsilon_high=0.28),
            "dr_grpo": dict(loss_agg="dr_grpo", scale_rewards="none")}


def lab05(profile: str = "24gb", **overrides) -> GRPORecipe:
    return recipe_from_profile(get_profile(profile, lab="grpo"), **overrides)


# ---------------------------------------------------------------- the recipe and the table


def test_knobs_name_recipe_values_and_cover_the_choices():
    names = {f.name for f in fields(GRPORecipe)} | {n for n, v in vars(GRPORecipe).items() if isinstance(v, property)}
    assert [k.field for k in KNOBS if k.field not in names] == []
    for knob in KNOBS:
        if knob.values is not None:
            field = next(f for f in fields(GRPORecipe) if f.name == knob.field)
            assert field.default in knob.values
            for value in knob.values.values():
                assert len(value) == len(engines.ENGINES)


def test_recipe_checks_its_batch_layout_and_choices():
    with pytest.raises(EngineError, match="micro_batch_size x grad_accum x gpus"):
        replace(lab05(), grad_accum=3)
    with pytest.raises(EngineError, match="loss_agg='bnpo'"):
        lab05(loss_agg="bnpo")
    assert lab05(gpus=2).grad_accum * 2 == lab05().grad_accum


@pytest.mark.parametrize("engine,change,message", [
    ("openrlhf", dict(loss_agg="dr_grpo"), "OpenRLHF has no equivalent of loss_agg='dr_grpo'"),
    ("verl", dict(scale_rewards="batch"), "veRL has no equivalent of scale_rewards='batch'"),
    ("trl", dict(kl_estimator="k1"), "TRL has no equivalent of kl_estimator='k1'"),
    ("openrlhf", dict(precision="fp32"), "OpenRLHF has no equivalent of precision='fp32'"),
])
def test_a_value_an_engine_lacks_is_an_error(engine, change, message):
    recipe = lab05(**change)
    with pytest.raises(EngineError, match=re.escape(message)):
        engine_settings(recipe, engine)
    row = next(r for r in side_by_side(recipe) if r["knob"] == next(iter(change)))
    assert row[engines.ENGINE_LABELS[engine]].startswith("n/a: ")


def test_side_by_side_rows():
    rows = side_by_side(lab05())
    assert [r["knob"] for r in rows] == [k.field for k in KNOBS]
    g = next(r for r in rows if r["knob"] == "num_generations")
    assert (g["value"], g["TRL"], g["veRL"], g["OpenRLHF"]) == (
        "8", "num_generations=8", "actor_rollout_ref.rollout.n=8", "--rollout.n_samples_per_prompt 8")


# ---------------------------------------------------------------- TRL


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("profile", PROFILES)
def test_trl_kwargs_build_grpo_config(profile, variant, tmp_path):
    kwargs = trl_grpo_kwargs(lab05(profile, **VARIANTS[variant]))
    config = GRPOConfig(**kwargs, output_dir=str(tmp_path), use_cpu=True)  # use_cpu: bf16 on this CPU
    assert {k: getattr(config, k) for k in kwargs} == kwargs


@pytest.mark.parametrize("profile", PROFILES)
def test_recipe_agrees_with_lab05(profile, tmp_path):
    from labkit.grpo import GRPO_STAGE_BETA, grpo_config

    p = get_profile(profile, lab="grpo")
    lab = grpo_config(p, tmp_path, beta=GRPO_STAGE_BETA)  # what the GRPO stage trains
    kwargs = trl_grpo_kwargs(recipe_from_profile(p))
    theirs = {k: getattr(lab, k) for k in kwargs}
    theirs["epsilon_high"] = theirs["epsilon_high"] or lab.epsilon  # None: the same as epsilon
    assert theirs == kwargs


def test_a_misspelt_trl_name_fails(monkeypatch, tmp_path):
    knobs = tuple(replace(k, trl="num_generation") if k.field == "num_generations" else k for k in KNOBS)
    monkeypatch.setattr(engines, "KNOBS", knobs)
    with pytest.raises(TypeError, match="num_generation"):
        GRPOConfig(**trl_grpo_kwargs(lab05()), output_dir=str(tmp_path))


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_settings_are_grpo_config_fields(mode, tmp_path):
    from trl.scripts.vllm_serve import make_parser

    recipe = lab05()
    setup = vllm_settings(recipe, mode)
    config = GRPOConfig(**trl_grpo_kwargs(recipe), **setup.grpo_kwargs, output_dir=str(tmp_path), use_cpu=True)
    assert {k: getattr(config, k) for k in setup.grpo_kwargs} == setup.grpo_kwargs
    if mode == "colocate":
        assert setup.serve_command is None
        return
    # `trl vllm-serve` forwards flags it does not know to `vllm serve`: all of ours must be TRL's.
    assert setup.serve_command[:2] == ["trl", "vllm-serve"]
    serve, rest = make_parser().parse_args_and_config(args=setup.serve_command[2:], return_remaining_strings=True)
    assert rest == []
    assert (serve.model, serve.port, serve.max_model_len, serve.dtype) == (recipe.model, 8000, 1024, "bfloat16")
    assert serve.port == config.vllm_server_port
    _, rest = make_parser().parse_args_and_config(args=[*setup.serve_command[2:], "--max-model-lenght", "9"],
                                                  return_remaining_strings=True)
    assert rest == ["--max-model-lenght", "9"]


def test_unknown_vllm_mode():
    with pytest.raises(EngineError, match="colocate"):
        vllm_settings(lab05(), "remote")


# ---------------------------------------------------------------- accelerate


def _route(monkeypatch, command: list[str]):
    """The launcher accelerate's own `launch_command` picks for `command` (nothing is started)."""
    import accelerate.commands.launch as launch

    chosen = []
    for name in ("simple_launcher", "multi_gpu_launcher", "deepspeed_launcher"):
        monkeypatch.setattr(launch, name, lambda args, name=name: chosen.append((name, args)))
    assert command[:2] == ["accelerate", "launch"]
    launch.launch_command(launch.launch_command_parser().parse_args(command[2:]))
    [(name, args)] = chosen
    return name, args


def test_accelerate_ddp_command_starts_num_processes(monkeypatch):
    name, args = _route(monkeypatch, accelerate_command("train.py", 2))
    assert (name, args.num_processes, args.training_script) == ("multi_gpu_launcher", 2, "train.py")
    # The trap the docstring warns about: --cpu goes to the one-process launcher.
    name, args = _route(monkeypatch, ["accelerate", "launch", "--cpu", "--num_processes", "2", "train.py"])
    assert (name, args.num_processes) == ("simple_launcher", 2)


def _deepspeed_dests() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_deepspeed_config_file(stage, monkeypatch, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = accelerate_deepspeed_config(stage, lab05(gpus=2))
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(config))
    load_config_from_file(str(path))  # unknown top-level keys raise
    # accelerate copies deepspeed_config entries onto its launch arguments without a check
    assert set(config["deepspeed_config"]) - _deepspeed_dests() == set()
    name, args = _route(monkeypatch, accelerate_command("train.py", 2, str(path)))
    assert name == "deepspeed_launcher"
    assert (args.zero_stage, args.num_processes, args.mixed_precision) == (stage, 2, "bf16")


def test_accelerate_rejects_misspelt_config_keys(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = accelerate_deepspeed_config(2)
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump({**config, "mixed_precission": "bf16"}))
    with pytest.raises(ValueError, match="mixed_precission"):
        load_config_from_file(str(path))
    assert {"zero_stagee"} - _deepspeed_dests() == {"zero_stagee"}


# ---------------------------------------------------------------- veRL, OpenRLHF, DeepSpeed (labkit.engine_checks)

# Recipes per engine, checked in one subprocess per engine (its start-up is most of the time).
DEEPSPEED_CASES = {"24gb": ("24gb", {}), "cpu-fp32": ("cpu", {}), "t4-fp16": ("t4", {}),
                   "80gb-2gpus": ("80gb", dict(gpus=2))}
VERL_CASES = {**{variant: ("24gb", change) for variant, change in VARIANTS.items()},
              "80gb-2gpus": ("80gb", dict(gpus=2))}
OPENRLHF_CASES = {"grpo": ("24gb", {}), "dapo": ("24gb", VARIANTS["dapo"]),
                  "cpu-dapo-bf16": ("cpu", dict(loss_agg="dapo", beta=0.0, precision="bf16")),
                  "80gb-4gpus": ("80gb", dict(gpus=4))}


@pytest.fixture(scope="session")
def engines_env() -> EnginesEnv:
    try:
        return engine_checks.engines_env()
    except EnginesOfflineError as error:
        pytest.skip(str(error))
    except EngineEnvError as error:
        pytest.fail(str(error), pytrace=False)


def _checks(env: EnginesEnv, engine: str, cases: dict[str, tuple[str, dict]]) -> dict[str, Check]:
    try:
        checks = check_recipes(env, engine, [lab05(profile, **change) for profile, change in cases.values()])
    except EngineEnvError as error:
        pytest.fail(str(error), pytrace=False)
    return dict(zip(cases, checks, strict=True))


@pytest.fixture(scope="session")
def deepspeed_checks(engines_env) -> dict[str, Check]:
    return _checks(engines_env, "deepspeed", DEEPSPEED_CASES)


@pytest.fixture(scope="session")
def verl_checks(engines_env) -> dict[str, Check]:
    return _checks(engines_env, "verl", VERL_CASES)


@pytest.fixture(scope="session")
def openrlhf_checks(engines_env) -> dict[str, Check]:
    return _checks(engines_env, "openrlhf", OPENRLHF_CASES)


def test_engines_env_without_build_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    with pytest.raises(EngineEnvError, match="not built"):
        engine_checks.engines_env(build=False)


@pytest.mark.parametrize("case", DEEPSPEED_CASES)
def test_deepspeed_validates_zero_configs(deepspeed_checks, case):
    check = deepspeed_checks[case]
    assert check.ok, check.detail
    assert "DeepSpeed 0.19.8's DeepSpeedConfig" in check.detail
    # The misspelt keys were run and DeepSpeed refused them (a check that is ok requires it).
    assert "overlap_com -> ValidationError" in check.detail and "Extra inputs are not permitted" in check.detail
    assert "top-level keys DeepSpeed does not read: ['gradient_clippin']" in check.detail


@pytest.mark.parametrize("case", VERL_CASES)
def test_verl_overrides_compose_ppo_trainer_yaml(verl_checks, case):
    profile, change = VERL_CASES[case]
    assert verl_command(lab05(profile, **change))[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    check = verl_checks[case]
    assert check.ok, check.detail
    assert "Could not override 'actor_rollout_ref.actor.loss_agg_mod'" in check.detail


def test_verl_value_names_exist_in_its_source(engines_env):
    names = engine_checks.verl_names(engines_env)
    assert "grpo" in names["adv_estimator"] and "seq-mean-token-sum-norm" in names["loss_agg_mode"]
    column = engines.ENGINES.index("verl")
    for table, key, pick in ((engines.SCALE_REWARDS, "adv_estimator", lambda v: v[0]),
                             (engines.LOSS_AGG, "loss_agg_mode", lambda v: v),
                             (engines.KL_ESTIMATORS, "kl_loss_type", lambda v: v),
                             (engines.LR_SCHEDULES, "lr_scheduler_type", lambda v: v)):
        used = {pick(row[column]) for row in table.values() if row[column] is not None}
        assert used <= names[key], f"{key}: {sorted(used - names[key])} not in veRL 0.9.1 ({sorted(names[key])})"
    assert "seq-mean" not in names["loss_agg_mode"]  # a near miss is not accepted


def test_openrlhf_scheduler_names_are_transformers_schedulers():
    from transformers import SchedulerType  # OpenRLHF passes --actor.lr_scheduler to get_scheduler

    for row in engines.LR_SCHEDULES.values():
        SchedulerType(row[engines.ENGINES.index("openrlhf")])


@pytest.mark.parametrize("case", OPENRLHF_CASES)
def test_openrlhf_parser_accepts_the_command(openrlhf_checks, case):
    profile, change = OPENRLHF_CASES[case]
    assert openrlhf_command(lab05(profile, **change))[:3] == ["python3", "-m", "openrlhf.cli.train_ppo_ray"]
    check = openrlhf_checks[case]
    assert check.ok, check.detail
    assert "unrecognized arguments: --rollout.n_samples " in check.detail
    assert "invalid choice: 'seq-mean-token-sum-norm'" in check.detail
    assert "unrecognized arguments: --advantage_estimator group_norm" in check.detail


def test_a_misspelt_openrlhf_flag_fails_the_check(engines_env, monkeypatch):
    knobs = tuple(replace(k, openrlhf="--rollout.temperatur") if k.field == "temperature" else k for k in KNOBS)
    monkeypatch.setattr(engines, "KNOBS", knobs)
    check = engine_checks.check_openrlhf(engines_env, lab05())
    assert not check.ok and "unrecognized arguments: --rollout.temperatur 1.0" in check.detail


def test_a_recipe_an_engine_lacks_is_a_failed_check_not_an_error(engines_env):
    check = engine_checks.check_openrlhf(engines_env, lab05(loss_agg="dr_grpo"))  # no subprocess
    assert (check.name, check.ok, check.metric) == ("openrlhf_args", False, "openrlhf_args_ok")
    assert "OpenRLHF has no equivalent of loss_agg='dr_grpo'" in check.detail
