"""Tests for labkit.tiny: the offline tokenizer, chat template, tiny model and pretraining loop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import tiny
from labkit.data import load_split

ROWS = 300


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_split("pretrain", limit=ROWS)


@pytest.fixture(scope="module")
def tok(rows):
    return tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


# ---------------------------------------------------------------- tokenizer


def test_digits_are_single_tokens(tok):
    ids = ids_of(tok, "12345")
    assert tok.convert_ids_to_tokens(ids) == ["1", "2", "3", "4", "5"]
    # Inside words and Chinese text as well: the split pattern isolates every digit.
    pieces = tok.convert_ids_to_tokens(ids_of(tok, "有20个"))
    assert "2" in pieces and "0" in pieces and "20" not in pieces
    assert len({tok.convert_tokens_to_ids(str(d)) for d in range(10)}) == 10


def test_think_tags_are_single_tokens_that_survive_decoding(tok):
    text = "<think>12+7=19</think>19"
    ids = ids_of(tok, text)
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "<think>" and tokens.count("</think>") == 1
    assert tokens == ["<think>", "1", "2", "+", "7", "=", "1", "9", "</think>", "1", "9"]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text  # ordinary tokens, as in Qwen3


def test_special_tokens(tok):
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.bos_token is None
    assert tok("ab").input_ids == ids_of(tok, "ab")  # no BOS/EOS added by default
    assert tok.decode(ids_of(tok, "<|im_start|>x<|im_end|>"), skip_special_tokens=True) == "x"
    assert tok.model_max_length == tiny.TINY_MODEL["max_position_embeddings"] == 256


def test_vocab_respects_the_requested_size(rows):
    texts = ["".join(tiny.pretrain_text(r)) for r in rows[:100]]
    small = tiny.build_tokenizer(texts, vocab_size=300)
    assert len(small) == 300 + 2  # BPE vocabulary (specials included) + the two think tags


@pytest.mark.parametrize("text", [
    "小刚有22个糖果。送给朋友8个。现在有多少个糖果？",
    "Tom has 6 candies. Then buys 4 more. How many candies now?",
    "混合 mixed 文本 123\n\n第二行：  two  spaces, tab\t, \"quotes\" and 'it's'",
    "emoji 🙂 and ünïcödé, 100% -3 + 0.5 = ?",
    "<think>6+4=10</think>10",
])
def test_decode_encode_round_trip(tok, text):
    assert tok.decode(ids_of(tok, text)) == text


KIT_CHARACTERS = st.sampled_from(list("abcXYZ019 .,?!'-+=\n\t小明有个苹果。？"))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=KIT_CHARACTERS | st.characters(codec="utf-8"), max_size=40))
def test_decode_encode_round_trip_property(tok, text):
    assert tok.decode(ids_of(tok, text)) == text


# ---------------------------------------------------------------- chat template

CONVERSATION = [{"role": "user", "content": "1+2=?"},
                {"role": "assistant", "content": "<think>1+2=3</think>3"}]


def test_chat_template_renders_chatml(tok):
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == (
        "<|im_start|>user\n1+2=?<|im_end|>\n"
        "<|im_start|>assistant\n<think>1+2=3</think>3<|im_end|>\n"
    )
    system = [{"role": "system", "content": "Be brief."}, CONVERSATION[0]]
    assert tok.apply_chat_template(system, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n1+2=?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_assistant_mask_covers_content_and_im_end_only(tok):
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    prompt = tok.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = ids_of(tok, prompt)
    answer_ids = ids_of(tok, "<think>1+2=3</think>3") + [tok.convert_tokens_to_ids("<|im_end|>")]
    newline = ids_of(tok, "\n")
    assert ids == prompt_ids + answer_ids + newline
    assert mask == [0] * len(prompt_ids) + [1] * len(answer_ids) + [0] * len(newline)
    trained = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(trained) == "<think>1+2=3</think>3<|im_end|>"


def test_assistant_mask_with_two_assistant_turns(tok):
    conversation = CONVERSATION + [{"role": "user", "content": "2+2=?"},
                                   {"role": "assistant", "content": "4"}]
    out = tok.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(trained) == "<think>1+2=3</think>3<|im_end|>4<|im_end|>"
    assert mask[-1] == 0 and sum(mask) == len(trained)


# ---------------------------------------------------------------- model


class StubTokenizer:
    """Only what build_model reads: the vocabulary size and the pad / eos ids."""

    pad_token_id, eos_token_id = 0, 2

    def __len__(self) -> int:
        return 1000


def test_build_model_parameter_count_by_hand():
    # Per layer: q 128x128 + k 128x64 + v 128x64 + o 128x128 = 49,152
    #            gate, up 128x384 and down 384x128            = 147,456
    #            input/post-attention RMSNorm 2x128 + q_norm/k_norm 2x32 = 320  -> 196,928
    # 4 layers = 787,712; final norm 128; embeddings 1000x128 = 128,000 (lm_head tied: counted once)
    model = tiny.build_model(StubTokenizer())
    assert sum(p.numel() for p in model.parameters()) == 787_712 + 128 + 128_000 == 915_840


def test_build_model_config(tok):
    model = tiny.build_model(tok)
    config = model.config
    assert config.vocab_size == len(tok)
    assert config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (config.pad_token_id, config.eos_token_id) == (0, 2)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_key_value_heads, config.head_dim) == \
        (128, 384, 4, 4, 2, 32)
    assert sum(p.numel() for p in model.parameters()) == 787_840 + 128 * len(tok)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_build_model_is_seeded():
    a, b = tiny.build_model(StubTokenizer(), seed=1), tiny.build_model(StubTokenizer(), seed=1)
    c = tiny.build_model(StubTokenizer(), seed=2)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


# ---------------------------------------------------------------- pretraining


def test_pretrain_text():
    row = {"question": "Tom has 6 candies. Then buys 4 more.", "reasoning": "6+4=10",
           "answer": "10"}
    assert tiny.pretrain_text(row) == ("Tom has 6 candies. Then buys 4 more.\n", "6+4=10\n10")


def test_pad_batch_by_hand():
    pad = 0
    x, y = tiny._pad_batch([([11, 12], [13, 14, pad]), ([21], [22, pad])], pad)
    assert x.tolist() == [[11, 12, 13, 14, 0],
                          [21, 22, 0, 0, 0]]
    assert y.tolist() == [[-100, -100, 13, 14, 0],
                          [-100, 22, 0, -100, -100]]


def test_pretrain_loss_covers_only_the_solution(tok, rows):
    model = tiny.build_model(tok)
    seen = {}
    forward = model.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return forward(**kwargs)

    model.forward = spy
    row = rows[0]
    tiny.pretrain(model, tok, [row], steps=1, batch_size=2)
    context, target = tiny.pretrain_text(row)
    context_ids, target_ids = ids_of(tok, context), ids_of(tok, target) + [tok.pad_token_id]
    expected = context_ids + target_ids
    assert seen["input_ids"].tolist() == [expected, expected]
    assert seen["labels"].tolist() == [[-100] * len(context_ids) + target_ids] * 2
    # The pad token closing the target is learned as "end of text" but not attended to.
    assert seen["attention_mask"].tolist() == [[1] * (len(expected) - 1) + [0]] * 2


def test_pretrain_reduces_the_loss(tok, rows):
    model = tiny.build_model(tok)
    log = tiny.pretrain(model, tok, rows, steps=30, batch_size=8, lr=3e-3, log_every=10)
    assert [entry["step"] for entry in log] == [1, 11, 21, 30]
    # A fresh model predicts a near-uniform distribution: loss about ln(vocab) ~ 6.3.
    assert log[0]["loss"] == pytest.approx(6.25, abs=0.5)
    assert log[-1]["loss"] < 0.6 * log[0]["loss"]
    assert not model.training  # left in eval mode


def test_pretrain_is_deterministic(tok, rows):
    logs = []
    for _ in range(2):
        model = tiny.build_model(tok, seed=0)
        logs.append(tiny.pretrain(model, tok, rows[:50], steps=3, batch_size=4, seed=5))
    assert logs[0] == logs[1]
