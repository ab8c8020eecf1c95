"""Batched generation and held-out accuracy, overall and per difficulty level."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from labkit.data import prompt_messages
from labkit.profiles import Profile
from labkit.rewards import accuracy_reward, format_reward


def chat_prompts(tokenizer, rows: list[dict], system_prompt: str | None = None) -> list[str]:
    """Each row's question as a chat prompt ending with the assistant header, ready to generate from."""
    return [tokenizer.apply_chat_template(prompt_messages(r, system_prompt), tokenize=False,
                                          add_generation_prompt=True) for r in rows]


def generated_lengths(new_tokens: torch.Tensor, eos_token_id: int) -> list[int]:
    """Tokens each row of a generate output really cost: up to and including its first EOS
    (what follows is padding), or the whole row when it never stopped."""
    is_eos = new_tokens == eos_token_id
    stopped = is_eos.any(dim=1)
    first = is_eos.int().argmax(dim=1) + 1
    return torch.where(stopped, first, torch.full_like(first, new_tokens.shape[1])).tolist()


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], *, max_new_tokens: int, do_sample: bool = False,
                   temperature: float = 1.0, eos_token_id: int | None = None,
                   num_return_sequences: int = 1) -> tuple[dict, torch.Tensor]:
    """One generate call on already-formatted prompts: (the left-padded prompt batch, the new tokens).

    Sampling is plain temperature sampling over the whole vocabulary (top_k=0, top_p=1), whatever
    a hub model's generation_config suggests; greedy decoding otherwise. With
    num_return_sequences=n each prompt gets n samples, in rows i*n ... i*n+n-1 of the result.
    """
    model.eval()
    tokenizer.padding_side = "left"
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=eos_token_id if eos_token_id is not None else tokenizer.eos_token_id,
                         num_return_sequences=num_return_sequences, **sampling)
    return batch, out[:, batch["input_ids"].shape[1]:]


def generate_texts(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                   do_sample: bool = False, temperature: float = 1.0, eos_token_id: int | None = None,
                   desc: str = "generate") -> list[str]:
    """One completion per already-formatted prompt string, in order (batches of `batch_size`)."""
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        _, new_tokens = generate_batch(model, tokenizer, prompts[start:start + batch_size],
                                       max_new_tokens=max_new_tokens, do_sample=do_sample,
                                       temperature=temperature, eos_token_id=eos_token_id)
        outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs


def generate(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int,
             batch_size: int, do_sample: bool = False, temperature: float = 1.0,
             desc: str = "generate") -> list[str]:
    """One completion per conversation, in order. Prompts get the chat template's assistant header."""
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
               for c in conversations]
    return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                          desc=desc)


@dataclass
class EvalResult:
    accuracy: float
    format_rate: float
    by_level: dict[int, float]
    completions: list[str] = field(repr=False)
    correct: list[float] = field(repr=False)


def evaluate_accuracy(model, tokenizer, rows: list[dict], profile: Profile, desc: str = "eval", *,
                      samples: int = 0) -> EvalResult:
    """Score every row's question with the accuracy and format rewards.

    samples=0: one greedy completion per question. samples=k >= 1: k completions per question,
    sampled at temperature 1 (what an RL policy is trained on), so accuracy estimates pass@1;
    completions and correct then hold the k samples of each question one after another.
    """
    if samples < 0:
        raise ValueError(f"samples must be 0 (greedy) or a number of samples >= 1, got {samples}")
    rows = [row for row in rows for _ in range(max(samples, 1))]
    completions = generate_texts(model, tokenizer, chat_prompts(tokenizer, rows, profile.system_prompt),
                                 max_new_tokens=profile.max_new_tokens, batch_size=profile.eval_batch_size,
                                 do_sample=samples > 0, desc=desc)
    correct = accuracy_reward(completions, answer=[r["answer"] for r in rows])
    formatted = format_reward(completions)
    by_level: dict[int, list[float]] = {}
    for row, ok in zip(rows, correct):
        by_level.setdefault(row["level"], []).append(ok)
    return EvalResult(
        accuracy=sum(correct) / len(rows), format_rate=sum(formatted) / len(rows),
        by_level={lvl: sum(v) / len(v) for lvl, v in sorted(by_level.items())},
        completions=completions, correct=correct,
    )


def plain_text_accuracy(model, tokenizer, rows: list[dict], *, max_new_tokens: int,
                        batch_size: int) -> float:
    """Accuracy of a base model prompted the way it was pretrained: the bare question and a newline.

    Generation stops at the pretraining document end (the pad token); the answer is the last
    number of the continuation, as `accuracy_reward` reads a completion without <think> tags.
    This shows what a base model can do before it knows any chat format.
    """
    completions = generate_texts(model, tokenizer, [r["question"] + "\n" for r in rows],
                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 eos_token_id=tokenizer.pad_token_id, desc="plain-text eval")
    return sum(accuracy_reward(completions, answer=[r["answer"] for r in rows])) / len(rows)
