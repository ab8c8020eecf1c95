"""KTO and ORPO with TRL on the kit's preference pairs, on DPO's budget, and one held-out measure
for all three methods.

- KTO: `trl.KTOConfig` / `trl.KTOTrainer` (stable API in TRL 1.16; `trl.experimental.kto` only
  re-exports them with a deprecation warning). It learns from unpaired examples (prompt,
  completion, desirable or not): `kto_dataset` turns each pair into one of each.
- ORPO: `trl.experimental.orpo.ORPOConfig` / `ORPOTrainer` (experimental in TRL 1.16). It needs no
  reference model: an SFT loss on the chosen answer plus a log-odds-ratio term between chosen and
  rejected (average per-token log-probs). TRL 1.16 takes that SFT loss over prompt + chosen
  answer (not the answer alone) and appends an extra EOS after the chat template's end of turn.

Every method starts from the shipped SFT stage with a fresh LoRA adapter, exactly as lab 03's DPO
does, with the profile's steps, learning rate, max_length and pairs per step
(get_profile(..., lab="dpo")).

The measure (`heldout_pref_acc`) is lab 03's: on the held-out pairs, the share where the policy's
implicit reward h = log pi(y|x) - log pi_ref(y|x) (summed over the completion tokens) is strictly
larger for chosen than for rejected, the reference being the SFT model (the LoRA adapter switched
off). That is TRL's DPO `eval_rewards/accuracies`; the beta factor does not change a sign, so
the number means the same for DPO, KTO and ORPO (which never looks at the reference in training,
but whose adapter is switched off the same way). `pref_accuracies` also gives two reference-free
measures, the policy's own summed and per-token log-probs of chosen vs rejected.

Reading it for ORPO: ORPO's SFT term raises both answers' log-probs, and a rejected answer, far less
likely under SFT, has more room to rise than a chosen one near log-prob 0; so ORPO can rank chosen
first in almost every pair (policy_sum) while "vs_ref" is low. On the kit's pairs the
reference-free measures are at their ceiling already for the SFT model (0.995).

`python -m labkit.kto_orpo` trains DPO, KTO and ORPO one after another and prints the comparison.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from labkit.data import prompt_messages, to_dataset
from labkit.profiles import Profile
from labkit.trainer_args import common_args

if TYPE_CHECKING:
    from datasets import Dataset
    from trl import KTOConfig
    from trl.experimental.orpo import ORPOConfig

METHODS = ("dpo", "kto", "orpo")
ORPO_LAMBDA = 0.1    # ORPO's weight of the odds-ratio term (TRL's `beta`, the paper's lambda)


# ---------------------------------------------------------------- data


def kto_examples(rows: list[dict]) -> list[dict]:
    """Each pair as two unpaired rows, {**pair, "completion", "label"}, in KTO's training order.

    Order: d0, d1, u0, d2, u1, ..., d(n-1), u(n-2), u(n-1) (d = a pair's chosen answer, desirable;
    u = its rejected answer, undesirable). TRL's KTO reads the data in order (its KL estimate needs
    a fixed order) and pairs each prompt with the previous example's completion in the batch as a
    mismatched sample: with each undesirable example one pair behind, that neighbour is never the
    other half of its own pair (for any even batch size), while both halves of a pair still land in
    the same or the next batch and every batch holds about as many desirable as undesirable ones.
    """
    if not rows:
        return []
    order = [(0, True)]
    for k in range(1, len(rows)):
        order += [(k, True), (k - 1, False)]
    order.append((len(rows) - 1, False))
    return [{**rows[i], "completion": rows[i]["chosen" if good else "rejected"], "label": good}
            for i, good in order]


def kto_dataset(rows: list[dict], system_prompt: str | None = None) -> Dataset:
    """The pairs in TRL's conversational unpaired format for KTOTrainer: "prompt" (messages),
    "completion" (one assistant message) and "label" (True = desirable), two rows per pair.

    KTO never compares two answers to one prompt: it pushes each desirable answer's implicit
    reward above, and each undesirable one's below, a batch-level reference point (the KL
    estimate). So a pair (chosen, rejected) becomes a desirable and an undesirable example of the
    same prompt (kto_examples gives the order). KTOTrainer could unpair pair_dataset itself, but
    TRL's unpair_preference_dataset puts 1,000 chosen answers before their 1,000 rejected ones, and
    with KTO's sequential sampler a 40-step run would then see almost only desirable examples.
    Each row also keeps the pair's id (and lang, level, answer when every pair has them).
    """
    def columns(row: dict) -> dict:
        return {"prompt": prompt_messages(row, system_prompt),
                "completion": [{"role": "assistant", "content": row["completion"]}], "label": row["label"]}

    return to_dataset(kto_examples(rows), columns)


# ---------------------------------------------------------------- configs


def kto_config(profile: Profile, output_dir: str | Path, *, beta: float | None = None,
               learning_rate: float | None = None, batch_size: int | None = None,
               max_steps: int | None = None, seed: int = 0) -> KTOConfig:
    """KTOConfig on DPO's budget: the profile's steps, learning rate, max_length and beta.

    batch_size counts KTO examples; it defaults to 2 x profile.batch_size, because each DPO pair
    is two KTO examples: a KTO step then sees the same pairs' answers as a DPO step (16 pairs =
    32 examples on the cpu profile). The loss is TRL's "kto" with equal desirable and undesirable
    weights (kto_dataset is balanced), in TRL's sequential order.
    """
    from trl import KTOConfig

    kto_args = dict(
        common_args(profile, output_dir, max_steps=max_steps, seed=seed, log_points=20),
        per_device_train_batch_size=batch_size or 2 * profile.batch_size,
        learning_rate=profile.learning_rate if learning_rate is None else learning_rate,
        beta=profile.beta if beta is None else beta,
        loss_type="kto",
        desirable_weight=1.0,
        undesirable_weight=1.0,
        train_sampling_strategy="sequential",
        per_device_eval_batch_size=profile.eval_batch_size,
        lr_scheduler_type="cosine",
        max_length=profile.max_length,
    )
    return KTOConfig(**kto_args)


def orpo_config(profile: Profile, output_dir: str | Path, *, lam: float = ORPO_LAMBDA,
                learning_rate: float | None = None, max_steps: int | None = None,
                seed: int = 0) -> ORPOConfig:
    """ORPOConfig on DPO's budget: the profile's steps, pairs per step, learning rate, max_length.

    lam weighs the odds-ratio term against the SFT loss on the chosen answer (TRL calls it beta,
    but it is not DPO's beta; 0.1 is the paper's and TRL's default). remove_unused_columns=False
    is what ORPOTrainer's collator needs (it would set it itself, with a warning).
    """
    orpo = _orpo()
    orpo_kwargs = dict(
        common_args(profile, output_dir, max_steps=max_steps, seed=seed, log_points=20),
        learning_rate=profile.learning_rate if learning_rate is None else learning_rate,
        beta=lam,
        per_device_eval_batch_size=profile.eval_batch_size,
        lr_scheduler_type="cosine",
        max_length=profile.max_length,
        remove_unused_columns=False,
    )
    return orpo.ORPOConfig(**orpo_kwargs)


def _orpo() -> Any:
    """trl.experimental.orpo, imported without its "experimental API" warning (this module says so)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        import trl.experimental.orpo as orpo
    return orpo


# ---------------------------------------------------------------- training


def train_kto(profile: Profile, model_path: str | Path, rows: list[dict], output_dir: str | Path, *,
              beta: float | None = None, learning_rate: float | None = None,
              max_steps: int | None = None, seed: int = 0):
    """Load the model at `model_path`, train KTO with a fresh LoRA adapter on the pairs `rows`
    (unpaired by kto_dataset), return the trainer (trainer.model: the policy, adapter unmerged)."""
    from trl import KTOTrainer

    args = kto_config(profile, output_dir, beta=beta, learning_rate=learning_rate,
                      max_steps=max_steps, seed=seed)
    dataset = kto_dataset(rows, profile.system_prompt)
    return _train(KTOTrainer, profile, model_path, args, dataset)


def train_orpo(profile: Profile, model_path: str | Path, rows: list[dict], output_dir: str | Path, *,
               lam: float = ORPO_LAMBDA, learning_rate: float | None = None,
               max_steps: int | None = None, seed: int = 0):
    """Load the model at `model_path`, train ORPO with a fresh LoRA adapter on the pairs `rows`,
    return the trainer (trainer.model: the policy, adapter unmerged)."""
    from labkit.preferences import pair_dataset

    args = orpo_config(profile, output_dir, lam=lam, learning_rate=learning_rate, max_steps=max_steps,
                       seed=seed)
    return _train(_orpo().ORPOTrainer, profile, model_path, args,
                  pair_dataset(rows, profile.system_prompt))


def _train(trainer_class: type, profile: Profile, model_path: str | Path, args: Any, dataset: Dataset):
    """Build `trainer_class` on the model at `model_path` with the profile's LoRA, train, return it."""
    from labkit.hardware import detect
    from labkit.models import load_model, load_tokenizer, lora_config
    from labkit.preflight import preflight

    preflight(profile, detect(), lab="dpo")   # as DPO: 2 x batch_size sequences with gradients per step
    tokenizer = load_tokenizer(model_path, padding_side="right")
    trainer = trainer_class(model=load_model(model_path, profile), args=args, train_dataset=dataset,
                            processing_class=tokenizer, peft_config=lora_config(profile))
    trainer.train()
    return trainer


def train_seconds(trainer) -> float:
    """Wall-clock seconds of trainer.train() (the train_runtime the Trainer logs last)."""
    return float(next(h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h))


# ---------------------------------------------------------------- the held-out measure


@dataclass
class PairLogps:
    """Summed completion log-probs of each pair's chosen and rejected answer, and their token counts."""
    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def completion_ids(tokenizer, prompt: list[dict], completion: str,
                   max_length: int | None = None) -> tuple[list[int], int]:
    """Token ids of prompt + completion through the chat template, as TRL's DPO/KTO tokenize them,
    and where the completion starts (the common prefix with the prompt alone); keep-start
    truncation to max_length, as TRL's collators do."""
    prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    full = prompt + [{"role": "assistant", "content": completion}]
    ids = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    return (ids if max_length is None else ids[:max_length]), start


def right_padded(sequences: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and completion_mask [B, T] of (ids, completion start) rows."""
    width = max(len(ids) for ids, _ in sequences)
    out = {key: torch.zeros(len(sequences), width, dtype=torch.long)
           for key in ("input_ids", "attention_mask", "completion_mask")}
    out["input_ids"].fill_(pad_id)
    for row, (ids, start) in enumerate(sequences):
        out["input_ids"][row, :len(ids)] = torch.tensor(ids)
        out["attention_mask"][row, :len(ids)] = 1
        out["completion_mask"][row, start:len(ids)] = 1
    return out


@torch.no_grad()
def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(y | x) of every row: the sum of its completion tokens' log-probs."""
    from labkit.algorithms import masked_sum, response_logprobs

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    token_logps = response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    return masked_sum(token_logps, batch["completion_mask"], dim=1).float().cpu()


def pair_logps(model, tokenizer, rows: list[dict], *, system_prompt: str | None = None,
               max_length: int | None = None, batch_size: int = 64) -> PairLogps:
    """Summed log-probs of every pair's chosen and rejected answer under `model` (eval mode)."""
    model.eval()
    pad_id = tokenizer.pad_token_id
    sums: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": []}
    counts: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": []}
    for begin in range(0, len(rows), batch_size):
        part = rows[begin:begin + batch_size]
        for side in ("chosen", "rejected"):
            batch = right_padded([completion_ids(tokenizer, prompt_messages(r, system_prompt), r[side], max_length)
                                  for r in part], pad_id)
            sums[side].append(sequence_logps(model, batch))
            counts[side].append(batch["completion_mask"].sum(dim=1))
    return PairLogps(torch.cat(sums["chosen"]), torch.cat(sums["rejected"]),
                     torch.cat(counts["chosen"]), torch.cat(counts["rejected"]))


@contextlib.contextmanager
def reference_of(model, ref_model=None) -> Iterator[Any]:
    """The reference model: `ref_model` if given, else `model` with its LoRA adapter switched off."""
    if ref_model is not None:
        yield ref_model
    elif hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        raise ValueError("no reference: pass ref_model=, or a PEFT model (its adapter is switched off)")


def pref_accuracies(model, tokenizer, rows: list[dict], *, ref_model=None, reference: bool = True,
                    system_prompt: str | None = None, max_length: int | None = None,
                    batch_size: int = 64) -> dict[str, float]:
    """Share of `rows` where chosen beats rejected, strictly (a tie counts as wrong, as in TRL):

    - "vs_ref": implicit reward, log pi - log pi_ref summed over the answer (lab 03's measure);
      only when reference=True (ref_model, or `model`'s adapter switched off);
    - "policy_sum": the policy's own summed log-prob (reference-free);
    - "policy_mean": the policy's per-token (length-normalised) log-prob, what ORPO's odds use.
    """
    kwargs = dict(system_prompt=system_prompt, max_length=max_length, batch_size=batch_size)
    policy = pair_logps(model, tokenizer, rows, **kwargs)
    scores = {"policy_sum": _share(policy.chosen > policy.rejected),
              "policy_mean": _share(policy.chosen / policy.chosen_tokens.clamp(min=1)
                                    > policy.rejected / policy.rejected_tokens.clamp(min=1))}
    if reference:
        with reference_of(model, ref_model) as ref:
            base = pair_logps(ref, tokenizer, rows, **kwargs)
        scores["vs_ref"] = _share(policy.chosen - base.chosen > policy.rejected - base.rejected)
    return scores


def heldout_pref_acc(model, tokenizer, rows: list[dict], *, ref_model=None,
                     system_prompt: str | None = None, max_length: int | None = None,
                     batch_size: int = 64) -> float:
    """Lab 03's held-out preference accuracy (TRL DPO's eval_rewards/accuracies) for any policy:
    the share of pairs whose implicit reward log pi - log pi_ref is strictly larger for chosen.
    The reference is ref_model, or the SFT model under `model`'s LoRA adapter (adapter off)."""
    return pref_accuracies(model, tokenizer, rows, ref_model=ref_model, system_prompt=system_prompt,
                           max_length=max_length, batch_size=batch_size)["vs_ref"]


def _share(wins: torch.Tensor) -> float:
    return float(wins.float().mean())


# ---------------------------------------------------------------- the comparison


def train_method(method: str, profile: Profile, model_path: str | Path, rows: list[dict],
                 output_dir: str | Path, *, learning_rate: float | None = None,
                 max_steps: int | None = None, seed: int = 0):
    """Train one of METHODS ("dpo", "kto", "orpo") on DPO's budget; return the trainer."""
    if method == "kto":
        return train_kto(profile, model_path, rows, output_dir, learning_rate=learning_rate,
                         max_steps=max_steps, seed=seed)
    if method == "orpo":
        return train_orpo(profile, model_path, rows, output_dir, learning_rate=learning_rate,
                          max_steps=max_steps, seed=seed)
    if method == "dpo":
        from dataclasses import replace

        from labkit.dpo import train_dpo
        from labkit.preferences import pair_dataset

        tuned = profile if learning_rate is None else replace(profile, learning_rate=learning_rate)
        return train_dpo(tuned, model_path, pair_dataset(rows, profile.system_prompt), output_dir,
                         max_steps=max_steps, seed=seed)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def compare(profile: Profile, methods: tuple[str, ...] = METHODS, *, learning_rate: float | None = None,
            eval_problems: int | None = None, heldout_limit: int | None = None, seed: int = 0,
            output_root: str | Path = "outputs/kto_orpo") -> list[dict]:
    """Train each method from the SFT stage, one at a time; one result row each, SFT's first.

    Row: method, learning_rate, seconds (trainer.train()), the three pref_accuracies on the
    held-out pairs and greedy accuracy on the first `eval_problems` eval problems (None: the
    profile's eval_limit, as lab 03; 0: skipped).
    """
    from labkit.data import load_problems
    from labkit.evaluate import evaluate_accuracy
    from labkit.models import free_memory, load_model, load_tokenizer
    from labkit.preferences import load_preferences
    from labkit.stages import get_stage, model_path

    sft_dir = model_path(get_stage("sft", profile))
    train_rows = load_preferences(profile.pref_dataset, "train")
    heldout = load_preferences(profile.pref_dataset, "heldout", limit=heldout_limit)
    limit = profile.eval_limit if eval_problems is None else eval_problems
    problems = load_problems(profile.dataset, "eval", limit=limit) if limit else []
    tokenizer = load_tokenizer(sft_dir, padding_side="right")
    measure = dict(system_prompt=profile.system_prompt, max_length=profile.max_length,
                   batch_size=profile.eval_batch_size)

    def score(model, name: str, seconds: float, lr: float | None, reference: bool) -> dict:
        row = {"method": name, "learning_rate": lr, "seconds": round(seconds, 1),
               **pref_accuracies(model, tokenizer, heldout, reference=reference, **measure)}
        if problems:
            row["greedy_acc"] = evaluate_accuracy(model, tokenizer, problems, profile, desc=name).accuracy
        return row

    results = [score(load_model(sft_dir, profile), "sft", 0.0, None, reference=False)]
    for method in methods:
        start = time.perf_counter()
        trainer = train_method(method, profile, sft_dir, train_rows, Path(output_root) / method,
                               learning_rate=learning_rate, seed=seed)
        wall = time.perf_counter() - start
        lr = profile.learning_rate if learning_rate is None else learning_rate
        row = score(trainer.model, method, train_seconds(trainer), lr, reference=True)
        row["wall_seconds"] = round(wall, 1)
        results.append(row)
        del trainer
        free_memory()
    return results


def main(argv: list[str] | None = None) -> int:
    """python -m labkit.kto_orpo [--profile cpu] [--methods dpo kto orpo] [--lr 2e-3]"""
    import argparse
    import json

    from labkit.profiles import get_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--lr", type=float, default=None, help="default: the profile's (lab 'dpo')")
    parser.add_argument("--eval-problems", type=int, default=None, help="default: the profile's eval_limit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile, lab="dpo")
    for row in compare(profile, tuple(args.methods), learning_rate=args.lr,
                       eval_problems=args.eval_problems, seed=args.seed):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
