"""DPO with TRL's DPOTrainer: the config lab 03 teaches and one call that trains a variant.

The reference model is the SFT model itself: with LoRA, TRL switches the adapter off to get
the reference log-probs, so no second copy of the weights is held in memory.
"""

from __future__ import annotations

from pathlib import Path

from trl import DPOConfig

from labkit.profiles import Profile
from labkit.trainer_args import common_args


def dpo_config(profile: Profile, output_dir: str | Path, *, beta: float | None = None,
               loss_type: str = "sigmoid", max_steps: int | None = None,
               seed: int = 0) -> DPOConfig:
    """DPOConfig for `profile`. beta defaults to the profile's; loss_type is one of TRL's
    (e.g. "sigmoid" = DPO, "ipo", "hinge", "robust"); max_steps defaults to the profile's."""
    return DPOConfig(
        **common_args(profile, output_dir, max_steps=max_steps, seed=seed, log_points=20),
        beta=profile.beta if beta is None else beta,
        loss_type=[loss_type],
        per_device_eval_batch_size=profile.eval_batch_size,
        lr_scheduler_type="cosine",
        max_length=profile.max_length,
    )


def train_dpo(profile: Profile, model_path: str | Path, train_dataset, output_dir: str | Path, *,
              beta: float | None = None, loss_type: str = "sigmoid", max_steps: int | None = None,
              eval_dataset=None, seed: int = 0):
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
                      seed=seed)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer,
                         peft_config=lora_config(profile))
    trainer.train()
    return trainer
