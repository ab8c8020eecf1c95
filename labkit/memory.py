"""Estimate the peak GPU memory of a training run, and refuse runs that will not fit.

The estimate is plain arithmetic on the architecture (no model is loaded), so a notebook can
call `check_fits(plan, vram_bytes)` first and get a readable error with a concrete fix instead
of a CUDA out-of-memory crash ten minutes into training.

Semantics follow HF Trainer / TRL / PEFT as pinned in this kit:
- Trainable parameters stay in the dtype they were loaded in (no fp32 master copy); PEFT keeps
  LoRA adapters in fp32 by default (`autocast_adapter_dtype=True`).
- torch AdamW keeps two states per parameter in the parameter's dtype (`zeros_like(p)`);
  bitsandbytes 8-bit AdamW keeps two uint8 states plus one fp32 scale per 256 values;
  HF's "sgd" is torch SGD with momentum 0, so it has no state.
- Attention uses SDPA (flash / memory-efficient kernels): no T x T score matrix is stored, only
  the padding mask as a B x 1 x T x T bias.
- Mixed precision as in TRL's default (bf16=True, or fp16=True on a T4): activations are in
  `compute_dtype`, which defaults to the dtype the model is loaded in.
- A sequence classifier (reward model: `AutoModelForSequenceClassification`, num_labels=1) has
  no lm_head, only a hidden x num_labels `score` head (no bias); with tied embeddings the
  embedding stays. transformers scores every position and keeps the last non-pad one, so its
  logits are batch x tokens x num_labels instead of batch x tokens x vocab.
- TRL GRPO counts batches in completions: `per_device_train_batch_size` completions are trained
  per micro-step and `generation_batch_size` completions (default: batch size x gradient
  accumulation steps) are generated in one `generate` call, which is what fills the KV cache.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

GiB = 2**30

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# Bytes per parameter of a quantized nn.Linear weight (bitsandbytes).
# 4bit: nf4 = 4 bits + one fp32 absmax per 64-value block = 4.5 bits = 0.5625 B. Double quant
# (bnb_4bit_use_double_quant=True) shrinks the constants to 8/64 + 32/(64*256) bits, i.e.
# 4.127 bits = 0.516 B (QLoRA paper, Dettmers et al. 2023, Sec. 3). We keep the larger figure.
# 8bit: LLM.int8 = 1 byte per weight + one fp32 scale per output row (negligible).
QUANT_BYTES = {"4bit": 0.5625, "8bit": 1.0}

# Optimizer state bytes per trainable parameter (see the module docstring).
OPTIMIZERS = ("adamw", "adamw_8bit", "sgd")
ADAMW_8BIT_BYTES = 2 * (1 + 4 / 256)

# CUDA context with torch's kernels loaded (~300-500 MiB with lazy loading) plus cuBLAS
# workspaces and allocator slack. Fragmentation is covered by `headroom` in `fits`.
CUDA_OVERHEAD_BYTES = 768 * 2**20

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class MemoryBudgetError(RuntimeError):
    """The estimated peak memory exceeds the GPU's budget; the message says what to change."""


class TrainPlanError(ValueError):
    """A ModelSpec or TrainPlan field has an invalid value."""


@dataclass(frozen=True)
class ModelSpec:
    """The sizes of a Qwen3-style decoder that memory depends on."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_embeddings: bool

    def __post_init__(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "head_dim", "intermediate_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise TrainPlanError(f"ModelSpec.{field} must be a positive int, got {value!r}")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one decoder layer (no biases)."""
        h, q, kv, i = (self.hidden_size, self.num_heads * self.head_dim,
                       self.num_kv_heads * self.head_dim, self.intermediate_size)
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        """Parameters in the decoder layers' projections (what 4/8-bit quantization replaces)."""
        return self.num_layers * sum(i * o for i, o in self.linear_shapes().values())

    def num_params(self, num_labels: int | None = None) -> int:
        """Total parameters, counting tied embedding/lm_head weights once.

        num_labels None: the causal LM (lm_head over the vocabulary). An int: the sequence
        classifier, whose `score` head (hidden x num_labels, no bias) replaces the lm_head.
        """
        norms_per_layer = 2 * self.hidden_size + 2 * self.head_dim  # 2 RMSNorms + q_norm, k_norm
        embeddings = self.vocab_size * self.hidden_size
        if num_labels is not None:
            head = self.hidden_size * num_labels
        else:
            head = 0 if self.tie_embeddings else embeddings
        final_norm = self.hidden_size
        return (self.linear_params() + self.num_layers * norms_per_layer
                + embeddings + head + final_norm)

    @classmethod
    def from_config(cls, config) -> ModelSpec:
        """Build a spec from a transformers config (e.g. `model.config` or `AutoConfig`)."""
        config = config.get_text_config()
        needed = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size")
        missing = [name for name in needed if getattr(config, name, None) is None]
        if missing:
            raise TrainPlanError(
                f"config of type {type(config).__name__} lacks {missing}; from_config supports "
                "decoder-only language models such as Qwen3 or Llama"
            )
        heads = config.num_attention_heads
        return cls(
            name=config.name_or_path or config.model_type,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=config.intermediate_size,
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


def _qwen3(name: str, hidden: int, layers: int, heads: int, inter: int, tied: bool) -> ModelSpec:
    return ModelSpec(name=name, vocab_size=151936, hidden_size=hidden, num_layers=layers,
                     num_heads=heads, num_kv_heads=8, head_dim=128, intermediate_size=inter,
                     tie_embeddings=tied)


# Values from each model's config.json on the Hugging Face hub.
MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _qwen3("Qwen/Qwen3-0.6B", hidden=1024, layers=28, heads=16, inter=3072, tied=True),
        _qwen3("Qwen/Qwen3-1.7B", hidden=2048, layers=28, heads=16, inter=6144, tied=True),
        _qwen3("Qwen/Qwen3-1.7B-Base", hidden=2048, layers=28, heads=16, inter=6144, tied=True),
        _qwen3("Qwen/Qwen3-4B", hidden=2560, layers=36, heads=32, inter=9728, tied=True),
        _qwen3("Qwen/Qwen3-8B", hidden=4096, layers=36, heads=32, inter=12288, tied=False),
    )
}


@dataclass(frozen=True)
class TrainPlan:
    """Everything about a training run that decides its GPU memory.

    SFT/DPO-style runs set `seq_len`. RL runs (GRPO/PPO) set `num_generations`,
    `max_prompt_len` and `max_completion_len`; their training sequences are prompt + completion
    long (`seq_len` may be left None). For DPO, count chosen+rejected: use twice the batch size.
    A reward model is a sequence classifier: set `num_labels=1` (and count its pairs twice too).
    """

    model: ModelSpec
    weight_dtype: str = "bf16"  # dtype the model is loaded in (torch_dtype)
    quant: str | None = None  # None, "4bit" or "8bit" (bitsandbytes; needs LoRA)
    lora_rank: int | None = None  # None = full fine-tuning
    lora_target_modules: tuple[str, ...] = LINEAR_MODULES
    trainable_dtype: str | None = None  # None: fp32 for LoRA (PEFT default), else weight_dtype
    compute_dtype: str | None = None  # autocast dtype (TRL bf16/fp16=True); None: weight_dtype
    optimizer: str = "adamw"
    batch_size: int = 1  # per_device_train_batch_size
    gradient_accumulation_steps: int = 1  # does not change memory; kept for suggested fixes
    seq_len: int | None = None  # tokens per training sequence
    gradient_checkpointing: bool = False
    ref_model: bool = False  # a frozen reference copy (free with LoRA: adapters disabled)
    reward_model: ModelSpec | None = None
    value_model: bool = False  # PPO: a trainable copy of the policy with a value head
    num_generations: int | None = None  # G completions per prompt; None = no generation
    max_prompt_len: int | None = None
    max_completion_len: int | None = None
    generation_batch_size: int | None = None  # completions per generate call; None: TRL default
    num_labels: int | None = None  # None: causal LM (vocab logits); n: classifier with n outputs
    # For suggested fixes only: batch sizes stay multiples of this (2 when a batch holds pairs), and
    # gradient checkpointing is offered only when the trainer supports it.
    batch_multiple: int = 1
    checkpointing_available: bool = True

    def __post_init__(self) -> None:
        for name in ("weight_dtype", "trainable_dtype", "compute_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPE_BYTES:
                raise TrainPlanError(f"{name} must be one of {list(DTYPE_BYTES)}, got {value!r}")
        if self.quant not in (None, *QUANT_BYTES):
            raise TrainPlanError(f"quant must be None, '4bit' or '8bit', got {self.quant!r}")
        if self.quant is not None and self.lora_rank is None:
            raise TrainPlanError("a quantized model cannot be fully fine-tuned: set lora_rank "
                                 "(e.g. 16) or quant=None")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise TrainPlanError(f"lora_rank must be >= 1 or None, got {self.lora_rank!r}")
        unknown = set(self.lora_target_modules) - set(LINEAR_MODULES)
        if unknown or not self.lora_target_modules:
            raise TrainPlanError(f"lora_target_modules must be a non-empty subset of "
                                 f"{LINEAR_MODULES}, got {self.lora_target_modules!r}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainPlanError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise TrainPlanError("batch_size and gradient_accumulation_steps must be >= 1")
        if self.num_labels is not None:
            if self.num_labels < 1:
                raise TrainPlanError(f"num_labels must be >= 1 or None, got {self.num_labels!r}")
            if self.num_generations is not None:
                raise TrainPlanError("a sequence classifier (num_labels) does not generate: "
                                     "leave num_generations None")
        generation_fields = ("max_prompt_len", "max_completion_len", "generation_batch_size")
        if self.num_generations is None:
            if self.seq_len is None or self.seq_len < 1:
                raise TrainPlanError("set seq_len (tokens per training sequence) >= 1")
            if any(getattr(self, name) is not None for name in generation_fields):
                raise TrainPlanError(f"{generation_fields} only apply to RL runs: also set "
                                     "num_generations, or leave them None")
            return
        if self.num_generations < 1:
            raise TrainPlanError(f"num_generations must be >= 1, got {self.num_generations}")
        for name in ("max_prompt_len", "max_completion_len"):
            if getattr(self, name) is None or getattr(self, name) < 1:
                raise TrainPlanError(f"set {name} >= 1 when num_generations is set")
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise TrainPlanError("generation_batch_size must be >= 1 or None")
        if self.seq_len not in (None, self.train_seq_len):
            raise TrainPlanError("seq_len must equal max_prompt_len + max_completion_len "
                                 "(or be left None) when num_generations is set")
        if self.gen_batch_size % self.num_generations != 0:
            raise TrainPlanError(f"generation_batch_size ({self.gen_batch_size}) must be divisible "
                                 f"by num_generations ({self.num_generations}), as in TRL")

    @property
    def classifier(self) -> bool:
        """Whether the model is a sequence classifier (score head) rather than a causal LM."""
        return self.num_labels is not None

    @property
    def generates(self) -> bool:
        """Whether the run generates completions (RL)."""
        return self.num_generations is not None

    @property
    def train_seq_len(self) -> int:
        """Tokens per training sequence."""
        if self.generates:
            return self.max_prompt_len + self.max_completion_len
        return self.seq_len

    @property
    def gen_batch_size(self) -> int:
        """Completions generated per `generate` call (TRL default: batch x accumulation)."""
        if self.generation_batch_size is not None:
            return self.generation_batch_size
        return self.batch_size * self.gradient_accumulation_steps


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory: a per-component breakdown in bytes and the peak total."""

    breakdown: dict[str, int]
    total_bytes: int

    def fits(self, vram_bytes: int, headroom: float = 0.9, reserved_bytes: int = 0) -> bool:
        """True when the peak plus `reserved_bytes` (memory something else on the GPU holds, e.g.
        a colocated vLLM engine) is at most `headroom` x `vram_bytes`."""
        _check_budget(vram_bytes, headroom, reserved_bytes)
        return self.total_bytes + reserved_bytes <= headroom * vram_bytes

    def table(self) -> str:
        """The breakdown as an aligned table in GiB (components that cost nothing are left out)."""
        rows = [(name, size) for name, size in self.breakdown.items() if size > 0]
        width = max(len(name) for name, _ in rows + [("peak total", 0)])
        lines = [f"{'component':<{width}}  {'GiB':>7}"]
        lines += [f"{name:<{width}}  {size / GiB:>7.2f}" for name, size in rows]
        lines.append("-" * (width + 9))
        lines.append(f"{'peak total':<{width}}  {self.total_bytes / GiB:>7.2f}")
        if self.breakdown["kv_cache"] > 0:
            lines.append("(kv_cache lives during generation, activations + logits during the "
                         "training step; the peak counts the larger of the two)")
        return "\n".join(lines)


def _check_budget(vram_bytes: int, headroom: float, reserved_bytes: int = 0) -> None:
    if vram_bytes <= 0:
        raise ValueError(f"vram_bytes must be positive, got {vram_bytes}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    if reserved_bytes < 0:
        raise ValueError(f"reserved_bytes must be >= 0, got {reserved_bytes}")


def weight_bytes(model: ModelSpec, dtype: str, quant: str | None,
                 num_labels: int | None = None) -> int:
    """Bytes of the weights (of the classifier when `num_labels` is set, see
    ModelSpec.num_params). With `quant`, only the decoder projections are quantized; embeddings,
    norms and the head stay in `dtype` (as transformers' bitsandbytes loader does)."""
    params = model.num_params(num_labels)
    if quant is None:
        return params * DTYPE_BYTES[dtype]
    linear = model.linear_params()
    return int(linear * QUANT_BYTES[quant]) + (params - linear) * DTYPE_BYTES[dtype]


def lora_params(plan: TrainPlan) -> int:
    """LoRA adapter parameters: rank x (in + out) per targeted projection per layer."""
    if plan.lora_rank is None:
        return 0
    shapes = plan.model.linear_shapes()
    per_layer = sum(plan.lora_rank * sum(shapes[name]) for name in plan.lora_target_modules)
    return plan.model.num_layers * per_layer


def layer_activation_bytes(plan: TrainPlan) -> int:
    """Bytes one decoder layer saves for backward, per token.

    Counted from the tensors autograd saves in transformers' Qwen3 layer (h hidden, d head_dim,
    H heads, KV kv-heads, I intermediate, a bytes per activation):
      always         2 * 4h        fp32 upcasts inside the two RMSNorms
                     4 (H + KV) d  fp32 upcasts inside q_norm and k_norm
                     4 a H d       q, k, v and the attention output kept by SDPA (with a padding
                                   mask, k and v are repeated to H heads)
                     a T           the padding mask, which SDPA turns into a B x 1 x T x T
                                   additive bias that every layer keeps (T = sequence length)
                     3 a I         SwiGLU: gate, up, silu(gate)
      full FT        2 * 2a h      each RMSNorm's normalized x and output (the projections' input)
                     a (H + KV) d  q_norm / k_norm normalized x
                     a I           silu(gate) * up, the input of down_proj
      LoRA           a (in + r)    per adapted projection: its own copy of its input (PEFT casts
                                   it to the fp32 adapter dtype, autocast casts it back) and
                                   lora_A's output. Frozen weights save nothing.
    Small per-row statistics (rsqrt, logsumexp) are left out. Like TRL's default (bf16=True or
    fp16=True) this assumes mixed-precision autocast; without it PEFT's fp32 input copies make
    LoRA's activations larger.
    """
    spec, a = plan.model, _compute_bytes(plan)
    h, d, i = spec.hidden_size, spec.head_dim, spec.intermediate_size
    heads, kv = spec.num_heads, spec.num_kv_heads
    always = (2 * 4 * h + 4 * (heads + kv) * d + 4 * a * heads * d + a * plan.train_seq_len
              + 3 * a * i)
    if plan.lora_rank is None:
        return always + 2 * 2 * a * h + a * (heads + kv) * d + a * i
    shapes = spec.linear_shapes()
    inputs = sum(shapes[name][0] + plan.lora_rank for name in plan.lora_target_modules)
    return always + a * inputs


def _compute_bytes(plan: TrainPlan) -> int:
    """Bytes per activation: the autocast dtype if set, else the dtype the model is loaded in."""
    return DTYPE_BYTES[plan.compute_dtype or plan.weight_dtype]


def _trainable_dtype(plan: TrainPlan) -> str:
    """HF semantics: full fine-tuning trains in the load dtype; PEFT adapters default to fp32."""
    if plan.trainable_dtype is not None:
        return plan.trainable_dtype
    return "fp32" if plan.lora_rank is not None else plan.weight_dtype


def activation_bytes(plan: TrainPlan) -> int:
    """Decoder activations saved for backward in one micro-batch.

    Without gradient checkpointing every layer keeps `layer_activation_bytes` per token. With it,
    each layer keeps only its input (a x h per token) and one layer at a time is recomputed
    during backward.
    """
    tokens = plan.batch_size * plan.train_seq_len
    per_layer = layer_activation_bytes(plan)
    if not plan.gradient_checkpointing:
        return tokens * plan.model.num_layers * per_layer
    a = _compute_bytes(plan)
    return tokens * (plan.model.num_layers * a * plan.model.hidden_size + per_layer)


def logits_bytes(plan: TrainPlan) -> int:
    """The batch x tokens x vocab logits: a bytes each from lm_head, 4 for the fp32 upcast in the
    loss and 4 for the fp32 log-softmax kept for backward. RL (TRL) computes logits only for the
    completion tokens. A classifier's score head gives batch x tokens x num_labels values in a
    bytes (transformers scores every position, then keeps each row's last non-pad one); the
    pairwise loss on the kept batch x num_labels scores is left out."""
    a = _compute_bytes(plan)
    if plan.classifier:
        return plan.batch_size * plan.seq_len * plan.num_labels * a
    tokens = plan.max_completion_len if plan.generates else plan.seq_len
    return plan.batch_size * tokens * plan.model.vocab_size * (a + 4 + 4)


def kv_cache_bytes(plan: TrainPlan) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x bytes x sequences x (prompt + completion)."""
    if not plan.generates:
        return 0
    spec, a = plan.model, _compute_bytes(plan)
    per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * a
    return per_token * plan.gen_batch_size * (plan.max_prompt_len + plan.max_completion_len)


def estimate_memory(plan: TrainPlan) -> MemoryEstimate:
    """Estimate the peak GPU memory of `plan`.

    peak = everything else + max(activations + logits, kv_cache): the training step's activations
    and the generation's KV cache are never held at the same time. The reference model costs a
    copy of the weights (nothing with LoRA); the reward model is a one-output classifier loaded
    like the policy (weight_dtype and quant, as labkit.reward_model.load_reward_model does) and
    only runs inference; the value model (TRL PPO) is a second, trainable copy of the policy.
    With LoRA on a classifier (PEFT task SEQ_CLS), PEFT's trainable copy of the score head
    (hidden x num_labels parameters) is left out.
    """
    lora = plan.lora_rank is not None
    tb = DTYPE_BYTES[_trainable_dtype(plan)]
    trainable = lora_params(plan) if lora else plan.model.num_params(plan.num_labels)
    optimizer_per_param = {"adamw": 2 * tb, "adamw_8bit": ADAMW_8BIT_BYTES, "sgd": 0}

    weights = weight_bytes(plan.model, plan.weight_dtype, plan.quant, plan.num_labels)
    adapters = lora_params(plan) * tb
    gradients = trainable * tb
    optimizer_states = int(trainable * optimizer_per_param[plan.optimizer])
    activations = activation_bytes(plan)
    full_copy = weights + adapters + gradients + optimizer_states + activations

    breakdown = {
        "weights": weights,
        "lora_adapters": adapters,
        "gradients": gradients,
        "optimizer_states": optimizer_states,
        "activations": activations,
        "logits": logits_bytes(plan),
        "kv_cache": kv_cache_bytes(plan),
        "reference_model": weights if plan.ref_model and not lora else 0,
        "reward_model": (weight_bytes(plan.reward_model, plan.weight_dtype, plan.quant, num_labels=1)
                         if plan.reward_model else 0),
        "value_model": full_copy if plan.value_model else 0,
        "cuda_overhead": CUDA_OVERHEAD_BYTES,
    }
    training = breakdown["activations"] + breakdown["logits"]
    rest = sum(breakdown.values()) - training - breakdown["kv_cache"]
    return MemoryEstimate(breakdown, rest + max(training, breakdown["kv_cache"]))


def _fix_moves(plan: TrainPlan) -> list[list[tuple[dict, str]]]:
    """Cheap fixes in the order we prefer them. Each is a list of options, mildest first; an
    option is (TrainPlan field changes, what to tell the user)."""
    moves = []
    if not plan.gradient_checkpointing and plan.checkpointing_available:
        moves.append([({"gradient_checkpointing": True}, "set gradient_checkpointing=True")])

    batch = []  # smaller divisors of the batch size, so the effective batch stays the same
    for b in range(plan.batch_size - 1, 0, -1):
        if plan.batch_size % b == 0 and b % plan.batch_multiple == 0:
            steps = plan.gradient_accumulation_steps * plan.batch_size // b
            batch.append(({"batch_size": b, "gradient_accumulation_steps": steps},
                          f"set per_device_train_batch_size={b} and "
                          f"gradient_accumulation_steps={steps}"))
    moves.append(batch)

    if plan.generates:
        # Lowering num_generations would not help: TRL generates generation_batch_size
        # completions per call whatever G is. TRL needs that size divisible by the batch size
        # and by num_generations.
        step = math.lcm(plan.batch_size, plan.num_generations)
        gbs = plan.gen_batch_size
        moves.append([({"generation_batch_size": v}, f"set generation_batch_size={v}")
                      for v in range(gbs - step, 0, -step) if gbs % v == 0])
        completion, lengths = plan.max_completion_len // 2, []
        while completion >= 64:
            lengths.append(completion)
            completion //= 2
        moves.append([({"max_completion_len": c}, f"set max_completion_length={c}")
                      for c in lengths])

    if plan.quant != "4bit":
        changes: dict = {"quant": "4bit"}
        text = ("load the model in 4-bit (BitsAndBytesConfig(load_in_4bit=True, "
                "bnb_4bit_quant_type='nf4'))")
        if plan.lora_rank is None:
            changes.update(lora_rank=16, trainable_dtype=None)
            text += " and train LoRA adapters (LoraConfig(r=16, target_modules='all-linear'))"
        moves.append([(changes, text)])

    smaller, sizes = [], {plan.model.num_params()}
    for spec in sorted(MODEL_SPECS.values(), key=lambda s: -s.num_params()):
        if spec.num_params() < plan.model.num_params() and spec.num_params() not in sizes:
            sizes.add(spec.num_params())
            smaller.append(({"model": spec}, f"use the smaller model {spec.name}"))
    moves.append(smaller)
    return [move for move in moves if move]


def suggest_fix(plan: TrainPlan, vram_bytes: int, headroom: float = 0.9,
                reserved_bytes: int = 0) -> tuple[TrainPlan, str] | None:
    """The first single fix, else the shortest combination of fixes, whose estimate fits
    (next to `reserved_bytes`, see MemoryEstimate.fits).

    Returns (fixed plan, description), `(plan, "no change needed")` if `plan` already fits, or
    None when nothing we know how to change makes it fit.
    """
    if estimate_memory(plan).fits(vram_bytes, headroom, reserved_bytes):
        return plan, "no change needed"
    moves = _fix_moves(plan)
    for size in range(1, len(moves) + 1):
        for combo in itertools.combinations(moves, size):
            for options in itertools.product(*combo):
                changes: dict = {}
                for fields, _ in options:
                    changes.update(fields)
                candidate = dataclasses.replace(plan, **changes)
                if estimate_memory(candidate).fits(vram_bytes, headroom, reserved_bytes):
                    return candidate, " and ".join(text for _, text in options)
    return None


def check_fits(plan: TrainPlan, vram_bytes: int, headroom: float = 0.9,
               reserved_bytes: int = 0) -> MemoryEstimate:
    """Return the estimate if `plan` fits in `headroom` x `vram_bytes` minus `reserved_bytes`
    (memory held by something else on the GPU, e.g. a colocated vLLM engine), else raise
    MemoryBudgetError with the breakdown and the change that makes it fit.

    Call it before loading any model; on a GPU pass
    `torch.cuda.get_device_properties(0).total_memory` as `vram_bytes`.
    """
    estimate = estimate_memory(plan)
    if estimate.fits(vram_bytes, headroom, reserved_bytes):
        return estimate
    fix = suggest_fix(plan, vram_bytes, headroom, reserved_bytes)
    if fix is None:
        advice = ("No combination of gradient checkpointing, smaller batches, shorter "
                  "generations, 4-bit LoRA or a smaller Qwen3 model fits: use a GPU with more "
                  "memory or a shorter seq_len.")
    else:
        fixed_plan, text = fix
        advice = (f"To fit: {text} "
                  f"(estimated peak {estimate_memory(fixed_plan).total_bytes / GiB:.2f} GiB).")
    budget = headroom * vram_bytes - reserved_bytes
    reserved = f" - {reserved_bytes / GiB:.2f} GiB reserved" if reserved_bytes else ""
    raise MemoryBudgetError(
        f"{plan.model.name}: estimated peak GPU memory {estimate.total_bytes / GiB:.2f} GiB "
        f"exceeds the budget of {headroom:.0%} of {vram_bytes / GiB:.2f} GiB VRAM{reserved} "
        f"= {budget / GiB:.2f} GiB.\n{estimate.table()}\n{advice}"
    )
