"""The tiny world: a tokenizer and a tiny Qwen3-architecture model built offline from data/.

Everything here runs in seconds on a CPU and needs no hub. The tokenizer is a byte-level BPE
(like Qwen's) trained on the kit's own problems, with every digit its own token so that
arithmetic is learnable, ChatML special tokens and a chat template with
`{% generation %}` markers so TRL can compute an assistant-only loss.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

PAD, BOS_CHAT, EOS_CHAT = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Qwen2/3's split pattern: letters in runs, every digit alone, punctuation runs, whitespace.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, as Qwen uses it. The assistant turn, including <|im_end|>, sits inside
# {% generation %} so `return_assistant_tokens_mask=True` marks exactly the tokens to train on.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TINY_MODEL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  max_position_embeddings=256)
VOCAB_SIZE = 800                  # BPE merges stop here (or earlier, when the text runs out)
PRETRAIN_BATCH_SIZE = 32
PRETRAIN_LR = 2e-3


def build_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS_CHAT, EOS_CHAT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS_CHAT, bos_token=None,
        model_max_length=TINY_MODEL["max_position_embeddings"],
    )
    # <think> tags are ordinary (not special) tokens, as in Qwen3: they survive decoding.
    wrapped.add_tokens([THINK_OPEN, THINK_CLOSE])
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen3ForCausalLM:
    """A freshly initialised tiny Qwen3 (about 1M parameters) sized to `tokenizer`."""
    import torch

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, **TINY_MODEL,
    )
    return Qwen3ForCausalLM(config)


def pretrain_text(row: dict) -> tuple[str, str]:
    """A solved problem as plain text for pretraining: (context, target).

    No chat template and no <think> tags: the base model learns to solve problems, and SFT
    later teaches it the conversation format, as with a real base model.
    """
    return row["question"] + "\n", row["reasoning"] + "\n" + row["answer"]


def reset_chat_embeddings(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast,
                          seed: int = 0) -> list[int]:
    """Give the chat and think tokens fresh embeddings after pretraining; returns their ids.

    Pretraining never shows these tokens, but every softmax pushes their (tied) embedding rows
    away from the hidden states, so after pretraining no hidden state points toward them and
    LoRA fine-tuning can only lift <think> to a few percent: greedy decoding still picks it, but
    sampling at temperature 1 then mostly starts with junk. A random direction with the average
    norm of the trained rows (the usual way to initialise added tokens) fixes that.
    """
    import torch

    ids = tokenizer.convert_tokens_to_ids([BOS_CHAT, EOS_CHAT, THINK_OPEN, THINK_CLOSE])
    weight = model.get_input_embeddings().weight
    trained = torch.ones(len(weight), dtype=torch.bool)
    trained[ids] = False
    directions = torch.randn(len(ids), weight.shape[1], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        weight[ids] = directions / directions.norm(dim=1, keepdim=True) * weight[trained].norm(dim=1).mean()
    return ids


def pretrain(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, rows: list[dict], *,
             steps: int, batch_size: int = PRETRAIN_BATCH_SIZE, lr: float = PRETRAIN_LR, seed: int = 0,
             log_every: int = 50) -> list[dict]:
    """Train `model` on solved problems; the loss covers only the solution tokens.

    A plain PyTorch loop in fp32 (AdamW, linear warm-up, cosine decay to 10 %). No precision
    switch depends on the CPU, so the recipe is the same on every machine (the result still
    differs in the last bits between CPUs: their kernels differ). Returns a log of {"step", "loss"}.
    """
    import math

    import torch
    from tqdm.auto import tqdm

    pairs = [pretrain_text(r) for r in rows]
    encoded = [(tokenizer(c).input_ids, tokenizer(t).input_ids + [tokenizer.pad_token_id])
               for c, t in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 50)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 0.5 * (1 + math.cos(math.pi * s / steps))))
    gen = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    model.train()
    for step in tqdm(range(steps), desc="pretrain tiny base", leave=False):
        idx = torch.randint(0, len(encoded), (batch_size,), generator=gen).tolist()
        x, y = _pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id)
        loss = model(input_ids=x, attention_mask=(x != tokenizer.pad_token_id).long(), labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            log.append({"step": step + 1, "loss": round(loss.item(), 4)})
    model.eval()
    return log


def _pad_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad (context, target) id lists; labels are -100 outside the target."""
    import torch

    length = max(len(c) + len(t) for c, t in pairs)
    x = torch.full((len(pairs), length), pad_id)
    y = torch.full((len(pairs), length), -100)
    for i, (c, t) in enumerate(pairs):
        x[i, :len(c) + len(t)] = torch.tensor(c + t)
        y[i, len(c):len(c) + len(t)] = torch.tensor(t)
    return x, y
