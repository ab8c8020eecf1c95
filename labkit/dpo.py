"""DPO with TRL's DPOTrainer: the config lab 03 teaches and one call that trains a variant.

The reference model is the SFT model itself: with LoRA, TRL switches the adapter off to get
the reference log-probs, so no second copy of the weights is held in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import DPOConfig

from labkit.profiles import Profile
from labkit.trainer_args import common_args


def dpo_config(profile: Profile, output_dir: str | Path, *, beta: float | None = None,
               loss_type: str = "sigmoid", max_steps: int | None = None,
               seed: int = 0, learning_rate: float | None = None) -> DPOConfig:
    """DPOConfig for `profile`. beta defaults to the profile's; loss_type is one of TRL's
    (e.g. "sigmoid" = DPO, "ipo", "hinge", "robust"); max_steps and learning_rate default to
    the profile's."""
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if beta is not None and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    training_args = common_args(profile, output_dir, max_steps=max_steps, seed=seed, log_points=20)
    if learning_rate is not None:
        training_args["learning_rate"] = learning_rate
    return DPOConfig(
        **training_args,
        beta=profile.beta if beta is None else beta,
        loss_type=[loss_type],
        per_device_eval_batch_size=profile.eval_batch_size,
        lr_scheduler_type="cosine",
        max_length=profile.max_length,
    )


def train_dpo(profile: Profile, model_path: str | Path, train_dataset, output_dir: str | Path, *,
              beta: float | None = None, loss_type: str = "sigmoid", max_steps: int | None = None,
              eval_dataset=None, seed: int = 0, learning_rate: float | None = None):
    """Load the model at `model_path`, train one DPO variant with LoRA, return the trainer
    (its state.log_history holds the curves; trainer.evaluate() scores eval_dataset)."""
    from trl import DPOTrainer

    from labkit.hardware import detect
    from labkit.models import load_model, load_tokenizer, lora_config
    from labkit.preflight import preflight

    preflight(profile, detect(), lab="dpo")
    tokenizer = load_tokenizer(model_path, padding_side="right")
    model = load_model(model_path, profile)
    args = dpo_config(profile, output_dir, beta=beta, loss_type=loss_type, max_steps=max_steps,
                      seed=seed, learning_rate=learning_rate)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer,
                         peft_config=lora_config(profile))
    trainer.train()
    return trainer


@dataclass
class DPOOutcome:
    """What one DPO run did to the task and to its own objective (lab 03's side-by-side table).

    greedy_acc / format_rate / by_level: greedy decoding on held-out problems (labkit.evaluate);
    mean_len: mean completion length in tokens; pref_acc: held-out preference accuracy
    (TRL's eval_rewards/accuracies, ties count as wrong); gap: mean held-out log-ratio gap
    h_w - h_l = eval_rewards/margins / beta (how far the policy moved on the pairs, in nats);
    seconds: training + evaluation time.
    """

    beta: float
    learning_rate: float
    max_steps: int
    greedy_acc: float
    format_rate: float
    mean_len: float
    pref_acc: float
    gap: float = 0.0
    by_level: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self) -> dict[str, float | None]:
        """The numbers as a flat dict (one table row)."""
        return {"β": self.beta, "learning rate": self.learning_rate, "steps": self.max_steps,
                "greedy acc": round(self.greedy_acc, 3), "format ok": round(self.format_rate, 3),
                "mean length (tok)": round(self.mean_len, 1), "held-out pref acc": round(self.pref_acc, 3),
                "log-ratio gap Δh": round(self.gap, 2)}


def mean_tokens(tokenizer, completions: list[str]) -> float:
    """Mean number of tokens of `completions` (no special tokens added)."""
    if not completions:
        raise ValueError("mean_tokens needs at least one completion")
    return sum(len(tokenizer(c, add_special_tokens=False).input_ids) for c in completions) / len(completions)


def dpo_outcome(profile: Profile, model_path: str | Path, train_dataset, heldout_pairs, eval_rows: list[dict],
                output_dir: str | Path, *, beta: float | None = None, learning_rate: float | None = None,
                max_steps: int | None = None, seed: int = 0) -> DPOOutcome:
    """Train one sigmoid-DPO run (train_dpo) and measure it: held-out preference accuracy on
    `heldout_pairs` and greedy accuracy, format rate and mean length on `eval_rows`.
    None settings fall back to the profile's. The trainer is freed before returning."""
    from labkit.evaluate import evaluate_accuracy
    from labkit.models import free_memory

    if not eval_rows:
        raise ValueError("dpo_outcome needs at least one evaluation problem in eval_rows")
    start = time.perf_counter()
    trainer = train_dpo(profile, model_path, train_dataset, output_dir, beta=beta, max_steps=max_steps,
                        eval_dataset=heldout_pairs, seed=seed, learning_rate=learning_rate)
    heldout = trainer.evaluate()
    result = evaluate_accuracy(trainer.model, trainer.processing_class, eval_rows, profile, desc="eval DPO run")
    outcome = DPOOutcome(beta=trainer.args.beta, learning_rate=trainer.args.learning_rate,
                         max_steps=trainer.args.max_steps, greedy_acc=result.accuracy,
                         format_rate=result.format_rate,
                         mean_len=mean_tokens(trainer.processing_class, result.completions),
                         pref_acc=float(heldout["eval_rewards/accuracies"]),
                         gap=float(heldout["eval_rewards/margins"]) / trainer.args.beta,
                         by_level=dict(result.by_level),
                         seconds=time.perf_counter() - start)
    del trainer
    free_memory()
    return outcome
