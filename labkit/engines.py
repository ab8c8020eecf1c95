"""One GRPO recipe, four engines: lab 05's run as TRL (with accelerate, DeepSpeed and vLLM), veRL
and OpenRLHF settings, all written from ONE table (KNOBS).

    recipe = recipe_from_profile(get_profile("24gb", lab="grpo"))
    trl_grpo_kwargs(recipe)      GRPOConfig keywords          (+ vllm_settings, accelerate_command,
                                                               deepspeed_config, accelerate_deepspeed_config)
    verl_command(recipe)         python3 -m verl.trainer.main_ppo <Hydra overrides>
    openrlhf_command(recipe)     python3 -m openrlhf.cli.train_ppo_ray <flags>
    side_by_side(recipe)         one row per knob, for a notebook table

The names are those of the pinned releases in requirements/engines.txt (TRL 1.16, DeepSpeed 0.19.8,
veRL 0.9.1, OpenRLHF 0.11.2); tests/test_engines.py checks every one against the real schema:
GRPOConfig, DeepSpeed's config models, veRL's ppo_trainer.yaml composed by Hydra, and OpenRLHF's
own argparse parser. A recipe value an engine cannot express raises EngineError (never a silent
near miss). Not emitted: the reward function (TRL takes Python functions; veRL wants
custom_reward_function.path, OpenRLHF --reward.remote_url, each with its own signature) and the
data files' column names. `python -m labkit.engines [--profile 24gb]` prints the table.

Nothing here imports torch: labkit.grpo (which does) is imported only by recipe_from_profile.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from typing import Any, NamedTuple

from labkit.profiles import Profile

ENGINES = ("trl", "verl", "openrlhf")
ENGINE_LABELS = {"trl": "TRL", "verl": "veRL", "openrlhf": "OpenRLHF"}


class EngineError(ValueError):
    """A recipe an engine cannot express, or a setting outside the allowed choices."""


# ---------------------------------------------------------------- named choices, spelled per engine

# recipe value -> (TRL, veRL, OpenRLHF) value; None: that engine has no equivalent (EngineError).
LOSS_AGG: dict[str, tuple[Any, Any, Any]] = {
    "grpo":    ("grpo",    "seq-mean-token-mean",     "seq-mean-token-mean"),  # mean per sequence, then over sequences
    "dapo":    ("dapo",    "token-mean",              "token-mean"),           # mean over every token of the step
    "dr_grpo": ("dr_grpo", "seq-mean-token-sum-norm", None),                  # token sum / (B x max_completion_length)
}
# advantage = (reward - group mean) / scale. veRL: (algorithm.adv_estimator, norm_adv_by_std_in_grpo).
SCALE_REWARDS: dict[str, tuple[Any, Any, Any]] = {
    "group": ("group", ("grpo", True),  "group_norm"),  # / std of the group (GRPO)
    "none":  ("none",  ("grpo", False), "dr_grpo"),     # / 1 (Dr. GRPO)
    "batch": ("batch", None,            None),          # / std of the whole batch: TRL only
}
# Per-token estimators of KL(pi || pi_ref), x = log pi_ref - log pi (Schulman's k1/k2/k3).
KL_ESTIMATORS: dict[str, tuple[Any, Any, Any]] = {
    "k1": (None, "k1",         "k1"),  # -x
    "k2": (None, "k2",         "k2"),  # x^2 / 2
    "k3": ("k3", "low_var_kl", "k3"),  # e^x - x - 1: TRL's only one (veRL clamps it to [-10, 10])
}
# TRL: (bf16, fp16) flags; veRL: the vLLM rollout dtype (FSDP trains in bf16 mixed precision);
# OpenRLHF: DeepSpeed's --ds.param_dtype, which has no fp32.
PRECISIONS: dict[str, tuple[Any, Any, Any]] = {
    "bf16": ((True, False),  "bfloat16", "bf16"),
    "fp16": ((False, True),  "float16",  "fp16"),
    "fp32": ((False, False), "float32",  None),
}
LR_SCHEDULES: dict[str, tuple[Any, Any, Any]] = {
    "constant_with_warmup": ("constant_with_warmup", "constant", "constant_with_warmup"),  # veRL's constant warms up
    "cosine":               ("cosine",               "cosine",   "cosine"),
}


# ---------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class GRPORecipe:
    """The knobs of one GRPO run (lab 05), independent of the engine that trains it.

    Batches: a step samples `rollout_batch_size` prompts x `num_generations` completions and makes
    one optimizer step of them: micro_batch_size x grad_accum x gpus = rollout_batch_size x G.
    """
    model: str                                # hub id or local path of the policy
    dataset: str                              # prompts: hub id or file
    num_generations: int = 8                  # G completions per prompt
    rollout_batch_size: int = 64              # prompts per RL step
    micro_batch_size: int = 8                 # completions per forward/backward on one device
    grad_accum: int = 64                      # micro-steps per optimizer step, per device
    gpus: int = 1                             # training processes (one per GPU), one node
    learning_rate: float = 1e-6
    lr_schedule: str = "constant_with_warmup"  # LR_SCHEDULES
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int = 100                      # RL steps
    max_prompt_length: int = 512
    max_completion_length: int = 256
    epsilon_low: float = 0.2                  # clip the ratio to [1 - low, 1 + high]
    epsilon_high: float = 0.2                 # DAPO's clip-higher: 0.28
    beta: float = 0.0                         # KL coefficient (0: no reference model)
    kl_estimator: str = "k3"                  # KL_ESTIMATORS
    loss_agg: str = "grpo"                    # LOSS_AGG
    scale_rewards: str = "group"              # SCALE_REWARDS
    num_iterations: int = 1                   # mu: optimizer passes over one rollout batch
    temperature: float = 1.0
    seed: int = 0
    precision: str = "bf16"                   # PRECISIONS
    lora_rank: int = 0                        # 0 = full fine-tuning
    lora_alpha: int = 16

    def __post_init__(self) -> None:
        for name, choices in (("loss_agg", LOSS_AGG), ("scale_rewards", SCALE_REWARDS),
                              ("kl_estimator", KL_ESTIMATORS), ("precision", PRECISIONS),
                              ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise EngineError(f"{name}={getattr(self, name)!r}; choose one of {sorted(choices)}")
        if self.num_generations < 2:
            raise EngineError(f"num_generations must be >= 2 (a group needs a baseline); got {self.num_generations}")
        per_step = self.micro_batch_size * self.grad_accum * self.gpus
        if per_step != self.completions_per_step:
            raise EngineError(
                f"micro_batch_size x grad_accum x gpus = {self.micro_batch_size} x {self.grad_accum} x {self.gpus}"
                f" = {per_step}, but a step has rollout_batch_size x num_generations = "
                f"{self.completions_per_step} completions")

    # Derived values that some engines take instead of the fields above.
    @property
    def completions_per_step(self) -> int:
        return self.rollout_batch_size * self.num_generations

    @property
    def kl_loss(self) -> bool:
        return self.beta > 0

    @property
    def clip_range(self) -> tuple[float, float]:
        return (self.epsilon_low, self.epsilon_high)

    @property
    def max_length(self) -> int:
        return self.max_prompt_length + self.max_completion_length

    @property
    def total_prompts(self) -> int:
        return self.max_steps * self.rollout_batch_size

    @property
    def warmup_ratio(self) -> float:
        return self.warmup_steps / self.max_steps

    @property
    def loss_scale_factor(self) -> int | None:
        """Dr. GRPO's constant normaliser (veRL's default is the padded batch width, which varies)."""
        return self.max_completion_length if self.loss_agg == "dr_grpo" else None


# The kit's datasets as the other engines name them.
DATASETS = {"kit": "data/rl.jsonl", "gsm8k": "openai/gsm8k"}


def recipe_from_profile(profile: Profile, **overrides: Any) -> GRPORecipe:
    """Lab 05's GRPO run (labkit.grpo.grpo_config with the stage's beta) as a recipe. Pass a profile
    resolved for the lab (get_profile(name, lab="grpo")). `overrides` replace recipe fields;
    grad_accum follows the batch fields unless given."""
    from labkit.grpo import GRPO_STAGE_BETA, accumulation_steps

    accumulation_steps(profile)  # the profile's own batch layout must work (GRPOSetupError)
    values: dict[str, Any] = dict(
        model=profile.model_id,
        dataset=DATASETS.get(profile.dataset, profile.dataset),
        num_generations=profile.num_generations,
        rollout_batch_size=profile.rollout_batch_size,
        micro_batch_size=profile.batch_size,
        learning_rate=profile.learning_rate,
        warmup_steps=max(1, profile.max_steps // 20),   # labkit.trainer_args.common_args
        max_steps=profile.max_steps,
        max_prompt_length=profile.max_length - profile.max_new_tokens,
        max_completion_length=profile.max_new_tokens,
        beta=GRPO_STAGE_BETA,
        precision=profile.dtype,
        lora_rank=profile.lora_rank,
        lora_alpha=profile.lora_alpha,
    )
    values.update(overrides)
    if "grad_accum" not in overrides:
        per_pass = values["micro_batch_size"] * values.get("gpus", 1)
        values["grad_accum"] = max(1, values["rollout_batch_size"] * values["num_generations"] // per_pass)
    return GRPORecipe(**values)


# ---------------------------------------------------------------- the table

Names = str | tuple[str, ...] | None


@dataclass(frozen=True)
class Knob:
    """One recipe value and its name in each engine. A tuple of names gets a tuple value spread
    over it (any other value goes to each name); None: the engine has no such setting here."""
    field: str                                   # GRPORecipe field or property
    trl: Names                                   # trl.GRPOConfig keyword(s)
    verl: Names                                  # Hydra key(s) of veRL's ppo_trainer.yaml
    openrlhf: Names                              # flag(s) of openrlhf.cli.train_ppo_ray
    note: str = ""
    values: dict[str, tuple[Any, Any, Any]] | None = None  # named choices (above), else the value itself


_ACTOR, _ROLLOUT, _MODEL = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "actor_rollout_ref.model"

KNOBS: tuple[Knob, ...] = (
    # recipe field, TRL GRPOConfig, veRL ppo_trainer.yaml, OpenRLHF train_ppo_ray, [note, [named choices]]
    Knob("model", None, f"{_MODEL}.path", "--actor.model_name_or_path", "TRL: GRPOTrainer(model=...)"),
    Knob("dataset", None, ("data.train_files", "data.val_files"), "--data.prompt_dataset",
         "TRL: GRPOTrainer(train_dataset=...); veRL reads parquet (val_files: never run here)"),
    Knob("num_generations", "num_generations", f"{_ROLLOUT}.n", "--rollout.n_samples_per_prompt",
         "G completions per prompt"),
    Knob("rollout_batch_size", None, ("data.train_batch_size", f"{_ACTOR}.ppo_mini_batch_size"),
         "--rollout.batch_size", "prompts per step; veRL: one mini-batch = one optimizer step"),
    Knob("completions_per_step", "generation_batch_size", None, "--train.batch_size",
         "rollout_batch_size x G: TRL and OpenRLHF count completions"),
    Knob("micro_batch_size", "per_device_train_batch_size",
         (f"{_ACTOR}.ppo_micro_batch_size_per_gpu", f"{_ROLLOUT}.log_prob_micro_batch_size_per_gpu",
          "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"),
         ("--train.micro_batch_size", "--rollout.micro_batch_size"), "completions per pass on one device"),
    Knob("grad_accum", "gradient_accumulation_steps", None, None,
         "veRL, OpenRLHF: derived, completions_per_step / (micro_batch_size x gpus)"),
    Knob("gpus", None, "trainer.n_gpus_per_node",
         ("--actor.num_gpus_per_node", "--ref.num_gpus_per_node", "--vllm.num_engines"),
         "TRL: accelerate launch --num_processes"),
    Knob("learning_rate", "learning_rate", f"{_ACTOR}.optim.lr", "--actor.adam.lr"),
    Knob("lr_schedule", "lr_scheduler_type", f"{_ACTOR}.optim.lr_scheduler_type", "--actor.lr_scheduler",
         "defaults differ: TRL linear, veRL constant, OpenRLHF cosine_with_min_lr", LR_SCHEDULES),
    Knob("warmup_steps", "warmup_steps", f"{_ACTOR}.optim.lr_warmup_steps", None, "OpenRLHF: as a ratio"),
    Knob("warmup_ratio", None, None, "--actor.lr_warmup_ratio", "warmup_steps / max_steps"),
    Knob("weight_decay", "weight_decay", f"{_ACTOR}.optim.weight_decay", "--actor.adam.weight_decay",
         "defaults differ: TRL 0, veRL 0.01, OpenRLHF 0"),
    Knob("adam_betas", ("adam_beta1", "adam_beta2"), f"{_ACTOR}.optim.betas", "--actor.adam.betas",
         "defaults differ: OpenRLHF (0.9, 0.95)"),
    Knob("max_steps", "max_steps", "trainer.total_training_steps", None,
         "OpenRLHF: stops when the prompts run out"),
    Knob("total_prompts", None, None, "--data.max_samples", "max_steps x rollout_batch_size (one episode)"),
    Knob("max_prompt_length", None, "data.max_prompt_length", None,
         "TRL 1.16 removed max_prompt_length: prompts are not truncated"),
    Knob("max_completion_length", "max_completion_length", "data.max_response_length", "--rollout.max_new_tokens"),
    Knob("max_length", None, None, "--data.max_len", "prompt + completion"),
    Knob("epsilon_low", "epsilon", f"{_ACTOR}.clip_ratio_low", None),
    Knob("epsilon_high", "epsilon_high", f"{_ACTOR}.clip_ratio_high", None),
    Knob("clip_range", None, None, "--actor.eps_clip_low_high", "(epsilon_low, epsilon_high)"),
    Knob("beta", "beta", f"{_ACTOR}.kl_loss_coef", "--algo.kl.init_coef",
         "KL coefficient; OpenRLHF's default is 0.01, not 0"),
    Knob("kl_loss", None, f"{_ACTOR}.use_kl_loss", "--algo.kl.use_loss", "beta > 0: KL as a loss term (TRL: always)"),
    Knob("kl_estimator", None, f"{_ACTOR}.kl_loss_type", "--algo.kl.estimator", "TRL: always k3", KL_ESTIMATORS),
    Knob("loss_agg", "loss_type", f"{_ACTOR}.loss_agg_mode", "--actor.loss_agg_mode",
         "how token losses become one number", LOSS_AGG),
    Knob("loss_scale_factor", None, f"{_ACTOR}.loss_scale_factor", None, "dr_grpo only: max_completion_length"),
    Knob("scale_rewards", "scale_rewards", ("algorithm.adv_estimator", "algorithm.norm_adv_by_std_in_grpo"),
         "--algo.advantage.estimator", "the advantage's denominator", SCALE_REWARDS),
    Knob("num_iterations", "num_iterations", f"{_ACTOR}.ppo_epochs", "--train.max_epochs",
         "mu: optimizer passes over one rollout batch"),
    Knob("temperature", "temperature", f"{_ROLLOUT}.temperature", "--rollout.temperature"),
    Knob("seed", "seed", ("data.seed", f"{_ROLLOUT}.seed"), "--train.seed"),
    Knob("precision", ("bf16", "fp16"), f"{_ROLLOUT}.dtype", "--ds.param_dtype",
         "veRL: vLLM's dtype (FSDP: bf16 mixed precision)", PRECISIONS),
    Knob("lora_rank", None, f"{_MODEL}.lora_rank", "--ds.lora.rank",
         "TRL: GRPOTrainer(peft_config=LoraConfig(r=...)); 0 = full fine-tuning"),
    Knob("lora_alpha", None, f"{_MODEL}.lora_alpha", "--ds.lora.alpha"),
)

# Settings outside the recipe that the commands need (a one-node colocated run).
VERL_FIXED: tuple[tuple[str, Any], ...] = (
    ("algorithm.use_kl_in_reward", False),           # GRPO: KL as a loss term, not a reward penalty
    (f"{_ROLLOUT}.name", "vllm"),                    # ??? (mandatory) in ppo_trainer.yaml
    (f"{_ROLLOUT}.tensor_model_parallel_size", 1),   # the yaml's default is 2
    ("trainer.nnodes", 1),
    ("trainer.logger", ["console"]),                 # the default also logs to wandb
    ("trainer.val_before_train", False),             # validation: test_freq stays -1 (never)
)
OPENRLHF_FIXED: tuple[tuple[str, Any], ...] = (
    ("--train.colocate_all", True),                  # actor, reference and vLLM share the GPUs
    ("--vllm.tensor_parallel_size", 1),
    ("--train.num_episodes", 1),
)


# ---------------------------------------------------------------- emitting


def _names(names: Names) -> tuple[str, ...]:
    return () if names is None else (names,) if isinstance(names, str) else names


def knob_settings(recipe: GRPORecipe, knob: Knob, engine: str) -> list[tuple[str, Any]]:
    """(name, value) pairs that express `knob` of `recipe` in `engine`; [] when the engine has no
    such setting (or the value is None: the engine's default). EngineError when it cannot."""
    value = getattr(recipe, knob.field)
    if knob.values is not None:
        value = knob.values[value][ENGINES.index(engine)]
        if value is None:
            why = f" ({knob.note})" if knob.note else ""
            raise EngineError(f"{ENGINE_LABELS[engine]} has no equivalent of "
                              f"{knob.field}={getattr(recipe, knob.field)!r}{why}")
    names = _names(getattr(knob, engine))
    if not names or value is None:
        return []
    if len(names) > 1 and isinstance(value, tuple):
        return list(zip(names, value, strict=True))
    return [(name, value) for name in names]


def engine_settings(recipe: GRPORecipe, engine: str) -> list[tuple[str, Any]]:
    """Every KNOBS row of `recipe` in `engine`'s names, in table order."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    return [pair for knob in KNOBS for pair in knob_settings(recipe, knob, engine)]


def trl_grpo_kwargs(recipe: GRPORecipe) -> dict[str, Any]:
    """Keywords for trl.GRPOConfig (add output_dir; model, data and LoRA go to GRPOTrainer)."""
    return dict(engine_settings(recipe, "trl"))


def _hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[\w./~:+-]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def verl_overrides(recipe: GRPORecipe) -> list[str]:
    """Hydra overrides of veRL's ppo_trainer.yaml (every key exists there: no `+`)."""
    pairs = [*engine_settings(recipe, "verl"), *VERL_FIXED]
    return [f"{key}={_hydra_value(value)}" for key, value in pairs]


def verl_command(recipe: GRPORecipe) -> list[str]:
    """veRL's trainer with the recipe (start Ray first, or let it start a local one)."""
    return ["python3", "-m", "verl.trainer.main_ppo", *verl_overrides(recipe)]


def _cli_args(flag: str, value: Any) -> list[str]:
    """argparse words: a store_true flag alone (or nothing when False), nargs values spread."""
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, (list, tuple)):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


def openrlhf_flags(recipe: GRPORecipe) -> list[str]:
    """The flags of openrlhf.cli.train_ppo_ray (0.11.2's dotted names, e.g. --rollout.batch_size)."""
    pairs = [*engine_settings(recipe, "openrlhf"), *OPENRLHF_FIXED]
    return [word for flag, value in pairs for word in _cli_args(flag, value)]


def openrlhf_command(recipe: GRPORecipe) -> list[str]:
    return ["python3", "-m", "openrlhf.cli.train_ppo_ray", *openrlhf_flags(recipe)]


# ---------------------------------------------------------------- TRL's launchers: accelerate, DeepSpeed, vLLM


def accelerate_command(script: str, num_processes: int, config_file: str | None = None) -> list[str]:
    """`accelerate launch` of a TRL script in `num_processes` processes.

    Without `config_file`: plain DDP, which also runs on a CPU (gloo). Not `--cpu --num_processes 2`:
    --cpu selects accelerate's simple launcher, which starts ONE process and ignores num_processes,
    so the run silently trains undistributed. With `config_file` (e.g. accelerate_deepspeed_config
    written as YAML) the file decides the backend: --multi_gpu would override it.
    """
    if num_processes < 1:
        raise EngineError(f"num_processes must be >= 1; got {num_processes}")
    launch = ["accelerate", "launch"]
    if config_file is not None:
        return [*launch, "--config_file", str(config_file), "--num_processes", str(num_processes), str(script)]
    ddp = ["--multi_gpu", "--num_machines", "1"] if num_processes > 1 else []
    return [*launch, *ddp, "--num_processes", str(num_processes), "--mixed_precision", "no",
            "--dynamo_backend", "no", str(script)]


def deepspeed_config(stage: int, recipe: GRPORecipe) -> dict[str, Any]:
    """DeepSpeed JSON for GRPOConfig(deepspeed=...): ZeRO-2 (optimizer state and gradients sharded)
    or ZeRO-3 (parameters too). "auto" wherever the Trainer fills the value from its own arguments
    (batch sizes, clipping, precision) or from the model (bucket sizes, from hidden_size)."""
    if stage not in (2, 3):
        raise EngineError(f"ZeRO stage must be 2 or 3; got {stage}")
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=int(2e8), reduce_scatter=True)
    else:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_max_live_parameters=int(1e9), stage3_max_reuse_distance=int(1e9),
                    sub_group_size=int(1e9), stage3_gather_16bit_weights_on_model_save=True)
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
    }
    if recipe.precision != "fp32":
        config[recipe.precision] = {"enabled": "auto"}
    return config


_ACCELERATE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


def accelerate_deepspeed_config(stage: int, recipe: GRPORecipe | None = None) -> dict[str, Any]:
    """accelerate's config file (write it as YAML) for DeepSpeed ZeRO-`stage`, as TRL's examples/
    accelerate_configs/deepspeed_zero{2,3}.yaml; precision and processes from `recipe` if given."""
    if stage not in (2, 3):
        raise EngineError(f"ZeRO stage must be 2 or 3; got {stage}")
    return {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "deepspeed_config": {
            "deepspeed_multinode_launcher": "standard",
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
            "zero_stage": stage,
        },
        "distributed_type": "DEEPSPEED",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": _ACCELERATE_PRECISION[recipe.precision if recipe else "bf16"],
        "num_machines": 1,
        "num_processes": recipe.gpus if recipe else 1,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": False,
    }


class VLLMSetup(NamedTuple):
    grpo_kwargs: dict[str, Any]          # GRPOConfig keywords
    serve_command: list[str] | None      # server mode: start this first, on GPUs the trainer leaves free


def vllm_settings(recipe: GRPORecipe, mode: str = "colocate", *, port: int = 8000,
                  server_gpu_memory_utilization: float = 0.9) -> VLLMSetup:
    """TRL's vLLM generation. "colocate": vLLM inside each training process, on its GPU, with
    labkit.grpo's memory share. "server": `trl vllm-serve` on its own GPU(s) (e.g.
    CUDA_VISIBLE_DEVICES=0), training on the others (CUDA_VISIBLE_DEVICES=1,... accelerate launch);
    TRL 1.16 marks vllm-serve deprecated: it runs `VLLM_SERVER_DEV_MODE=1 vllm serve` with TRL's flags."""
    dtype = PRECISIONS[recipe.precision][1]
    if mode == "colocate":
        from labkit.grpo import VLLM_GPU_MEMORY_UTILIZATION

        return VLLMSetup(dict(use_vllm=True, vllm_mode="colocate",
                              vllm_gpu_memory_utilization=VLLM_GPU_MEMORY_UTILIZATION,
                              vllm_tensor_parallel_size=1, vllm_max_model_length=recipe.max_length), None)
    if mode == "server":
        serve = ["trl", "vllm-serve", "--model", recipe.model, "--tensor-parallel-size", "1",
                 "--gpu-memory-utilization", str(server_gpu_memory_utilization), "--dtype", dtype,
                 "--max-model-len", str(recipe.max_length), "--port", str(port)]
        return VLLMSetup(dict(use_vllm=True, vllm_mode="server", vllm_server_host="127.0.0.1",
                              vllm_server_port=port), serve)
    raise EngineError(f"unknown vLLM mode {mode!r}; choose 'colocate' or 'server'")


# ---------------------------------------------------------------- the side-by-side table


def _show(engine: str, name: str, value: Any) -> str:
    if engine == "trl":
        return f"{name}={value!r}"
    if engine == "verl":
        return f"{name}={_hydra_value(value)}"
    return shlex.join(_cli_args(name, value)) or f"({name} off)"


def side_by_side(recipe: GRPORecipe) -> list[dict[str, str]]:
    """One row per KNOBS entry: knob, the recipe's value, and each engine's setting(s) ("-": no
    such setting, "n/a: ..." when the engine cannot express the value)."""
    rows = []
    for knob in KNOBS:
        row = {"knob": knob.field, "value": repr(getattr(recipe, knob.field))}
        for engine in ENGINES:
            try:
                pairs = knob_settings(recipe, knob, engine)
                row[ENGINE_LABELS[engine]] = " ".join(_show(engine, n, v) for n, v in pairs) or "-"
            except EngineError as error:
                row[ENGINE_LABELS[engine]] = f"n/a: {error}"
        row["note"] = knob.note
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Plain-text columns of side_by_side rows."""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    from labkit.profiles import get_profile

    parser = argparse.ArgumentParser(description="Lab 05's GRPO recipe in TRL, veRL and OpenRLHF.")
    parser.add_argument("--profile", default="24gb")
    parser.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args(argv)
    recipe = recipe_from_profile(get_profile(args.profile, lab="grpo"), gpus=args.gpus)
    print(format_table(side_by_side(recipe)))
    for label, command in (("veRL", verl_command), ("OpenRLHF", openrlhf_command)):
        try:
            print(f"\n{label}:\n{shlex.join(command(recipe))}")
        except EngineError as error:
            print(f"\n{label}: {error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
