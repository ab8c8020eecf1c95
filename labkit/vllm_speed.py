"""Lab 08 on a GPU: generation speed of vLLM against transformers' `model.generate`, same prompts.

Both sample `samples` completions of up to profile.max_new_tokens tokens for the first `questions`
eval problems (temperature 1, as a GRPO rollout), and count the tokens they really generated.
vLLM is optional (`pip install vllm` in a release TRL supports); nothing here runs on a CPU.
Not run in CI (no GPU there): the first real GPU run is its test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from labkit.profiles import Profile

VLLM_MEMORY_SHARE = 0.5  # of the GPU, for vLLM's weights and KV cache (the HF model is freed first)


@dataclass
class Speed:
    """Generated tokens per second of each engine on the same prompts."""
    hf_tokens_per_s: float
    vllm_tokens_per_s: float | None
    completions: int
    note: str = ""

    def __str__(self) -> str:
        vllm = f"{self.vllm_tokens_per_s:.0f}" if self.vllm_tokens_per_s else "-"
        ratio = f" ({self.vllm_tokens_per_s / self.hf_tokens_per_s:.1f}x)" if self.vllm_tokens_per_s else ""
        return (f"{self.completions} completions: model.generate {self.hf_tokens_per_s:.0f} tokens/s, "
                f"vLLM {vllm} tokens/s{ratio}. {self.note}").strip()


def _prompts(profile: Profile, tokenizer, questions: int) -> list[str]:
    from labkit.data import load_problems, prompt_messages

    rows = load_problems(profile.dataset, "eval", limit=questions)
    return [tokenizer.apply_chat_template(prompt_messages(r, profile.system_prompt), tokenize=False,
                                          add_generation_prompt=True) for r in rows]


def hf_speed(profile: Profile, model_path: str | Path, prompts: list[str], samples: int) -> tuple[float, int]:
    """(tokens/s, completions) of model.generate, batched by profile.eval_batch_size completions."""
    import torch

    from labkit.models import free_memory, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path, padding_side="left")
    model = load_model(model_path, profile).eval()
    batch = [p for p in prompts for _ in range(samples)]
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(batch), profile.eval_batch_size):
        enc = tokenizer(batch[i:i + profile.eval_batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=profile.max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tokenizer.pad_token_id).sum())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del model
    free_memory()
    return tokens / seconds, len(batch)


def vllm_speed(profile: Profile, model_path: str | Path, prompts: list[str], samples: int) -> float:
    """Tokens/s of vLLM's offline LLM.generate (the engine TRL's colocate mode runs in-process)."""
    from vllm import LLM, SamplingParams

    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[profile.dtype]
    llm = LLM(model=str(model_path), dtype=dtype, gpu_memory_utilization=VLLM_MEMORY_SHARE,
              max_model_len=profile.max_length, seed=0)
    params = SamplingParams(n=samples, temperature=1.0, max_tokens=profile.max_new_tokens)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return tokens / seconds


def vllm_vs_generate(profile: Profile, model_path: str | Path, questions: int = 16, samples: int = 4) -> Speed:
    """Measure both engines on `questions` eval prompts x `samples` completions. A vLLM failure (an
    unsupported version, too little memory) is reported in Speed.note, not raised: this is a demo."""
    from labkit.models import load_tokenizer

    if profile.device != "cuda":
        raise RuntimeError("vllm_vs_generate measures GPU generation; the cpu profile has no vLLM")
    prompts = _prompts(profile, load_tokenizer(model_path), questions)
    hf, completions = hf_speed(profile, model_path, prompts, samples)
    try:
        return Speed(hf, vllm_speed(profile, model_path, prompts, samples), completions)
    except Exception as error:  # noqa: BLE001 - report whatever vLLM raised, with its type
        return Speed(hf, None, completions, note=f"vLLM failed: {type(error).__name__}: {str(error)[:300]}")
