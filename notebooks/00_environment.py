# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 实验 00：环境检查、硬件配置与显存估算
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/00_environment.ipynb)
#
# **目标**
# 1. 检测本机硬件（CPU / GPU、显存、是否支持 bf16），选出硬件配置（profile）；
# 2. 理解训练时显存花在哪里，并手算一个模型的参数量与显存；
# 3. 看 `labkit` 如何在加载模型**之前**拒绝放不下的配置，并给出改法；
# 4. 了解 Hugging Face 镜像与 ModelScope 的设置（国内 AutoDL 等平台需要）；
# 5. 认识 CPU 配置使用的微型模型与分词器。
#
# **前置知识**：无。**运行时间**：CPU 上约 20 秒。

# %% tags=["colab-setup"]
# Colab：第一次运行时下载课程仓库，只安装 Colab 缺少的包（不动它自带的 torch、numpy、pandas、ipykernel）。
# 本机、CI 或已经装好时，这一格什么也不做。换仓库 / 分支：先设环境变量 LABKIT_REPO / LABKIT_REF。
try:
    import labkit
except ImportError:
    import os, subprocess, sys
    if "COLAB_RELEASE_TAG" not in os.environ:  # not Colab: this kernel is a Python without the kit
        raise ImportError("这个内核里没有 labkit：在课程目录运行 `python3 lab.py lab`，用 'Python 3 (labkit, …)' 内核") from None
    KIT, REPO = "/content/labkit-course", os.environ.get("LABKIT_REPO", "https://github.com/OWNER/REPO")
    if not os.path.isdir(KIT):
        ref = os.environ.get("LABKIT_REF", "main")
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", ref, REPO, KIT], check=True)
    sys.path.insert(0, KIT)
    from labkit.colab import setup_cell
    setup_cell(KIT)

# %% tags=["parameters"]
PROFILE = "auto"   # "auto" | "cpu" | "t4" | "24gb" | "80gb"
SEED = 0
MODEL_ID = None       # None: the profile's model; or a hub id / a local folder with the weights
DATA_DIR = None       # None: download; or a folder with hand-downloaded datasets / models (README, AutoDL)
TIME_BUDGET_MIN = None  # GPU: refuse a plan longer than this many minutes (None: the profile's budget)

# %%
from labkit.runtime import setup

profile = setup(PROFILE, lab="env", seed=SEED, model_id=MODEL_ID, data_dir=DATA_DIR,
                time_budget_min=TIME_BUDGET_MIN)

# %% [markdown]
# ## 硬件配置一览
#
# `PROFILE = "auto"` 时按检测结果选择：没有 GPU → `cpu`；GPU 不支持 bf16（如 Colab 的 T4）→ `t4`；
# 否则按显存选 `24gb` 或 `80gb`。每个配置固定了模型、精度、量化、LoRA 与批大小；
# notebook 的 `parameters` 单元可以覆盖其中任意字段（papermill 也通过它注入参数）。

# %%
import pandas as pd

from labkit.hardware import detect
from labkit.profiles import PROFILES

hardware = detect()
columns = ["model_id", "dtype", "quant", "lora_rank", "batch_size", "grad_accum", "max_length",
           "num_generations", "dataset", "min_vram_gb"]
overview = pd.DataFrame([{"profile": p.name, **{c: getattr(p, c) for c in columns}}
                         for p in PROFILES.values()]).set_index("profile")
print(f"detected: {hardware.name} -> profile '{profile.name}'")
overview

# %% [markdown]
# ## 显存花在哪里
#
# 设模型有 $N$ 个参数、每个参数占 $b$ 字节（fp32 为 4，bf16/fp16 为 2，NF4 4-bit 约 0.56）：
#
# | 部分 | 全参数微调（AdamW） | LoRA |
# |---|---|---|
# | 权重 | $N b$ | $N b$（可 4-bit 量化） |
# | 梯度 | $N b$ | 仅适配器 $N_{\text{LoRA}}\cdot 4$ |
# | 优化器状态（一阶、二阶矩） | $2 N b$ | $2 N_{\text{LoRA}}\cdot 4$ |
# | 激活 | $\propto$ 批大小 × 序列长度 × 层数 × 隐藏维度 | 同左 |
# | logits | 批大小 × 序列长度 × 词表大小 × 字节 | 同左 |
#
# **全参数微调每个参数要几字节？** 上表的 $b$ 是*训练时*参数的精度，不同做法差别很大：
#
# | 做法 | 权重 | 梯度 | fp32 主权重 | Adam 一阶、二阶矩 | 合计（字节/参数） |
# |---|---|---|---|---|---|
# | 常见的混合精度（AMP、DeepSpeed、Megatron） | bf16 2 | bf16 2 | 4 | fp32 4 + 4 | **16** |
# | fp32 加载 + `bf16=True` 自动混合精度 | fp32 4 | fp32 4 | — | fp32 4 + 4 | **16** |
# | 以 bf16 加载、直接训练 bf16 参数（labkit 的假设） | 2 | 2 | — | bf16 2 + 2 | **8** |
#
# 混合精度训练通常在 bf16 权重之外保留一份 fp32 的"主权重"（master weights），优化器更新它，再拷回 bf16——
# 否则很小的更新量在 bf16 里会被舍入掉。所以估算混合精度全参数微调时，经验法则是**约 16 字节/参数**（不含激活）。
# **labkit 的假设**（见 `labkit/memory.py` 的文档字符串）：与本课程固定版本的 HF Trainer / TRL 一样，参数以加载时的精度训练，
# 没有 fp32 主权重，AdamW 的两个状态与参数同精度，所以上表写作 $Nb + Nb + 2Nb$（bf16 时 8 字节/参数）。
# 下面预检里的数字都按这个假设算；如果你用 DeepSpeed 等带 fp32 主权重的框架，要按 16 字节/参数自己加上。练习 4 让你亲手量一次。
#
# 强化学习还要加上：参考模型（LoRA 时关掉适配器即可，不额外占用）、奖励模型、价值模型（PPO），
# 以及生成 $G$ 个回复时的 KV cache：$2 \times \text{层数} \times \text{KV 头数} \times \text{头维度} \times b \times \text{序列数} \times \text{长度}$。
#
# ### 手算 Qwen3-1.7B 的参数量
# 每层：注意力 $q,k,v,o$ 投影，$q/k$ 归一化，SwiGLU 的三个矩阵，两个 RMSNorm；加上词嵌入（与输出层共享）。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
from labkit.memory import MODEL_SPECS, weight_bytes

spec = MODEL_SPECS["Qwen/Qwen3-1.7B"]
h, d, H, KV, I, V, L = (spec.hidden_size, spec.head_dim, spec.num_heads, spec.num_kv_heads,
                        spec.intermediate_size, spec.vocab_size, spec.num_layers)
attention = h * H * d + 2 * h * KV * d + H * d * h + 2 * d   # q, k, v, o + q_norm, k_norm
mlp = 3 * h * I
per_layer = attention + mlp + 2 * h                           # + two RMSNorms
n_by_hand = V * h + L * per_layer + h                         # embeddings (tied) + layers + final norm
print(f"Qwen3-1.7B parameters by hand: {n_by_hand:,}; labkit: {spec.num_params():,}")
assert n_by_hand == spec.num_params()
print(f"bf16 weights alone: {weight_bytes(spec, 'bf16', None) / 2**30:.2f} GiB")

# %% [markdown]
# 同一个模型，全参数微调时"权重 + 梯度 + 优化器状态"按两种假设各占多少（还没算激活和 logits）：

# %%
for rule, bytes_per_param in [("labkit: bf16 params, no fp32 master (8 B/param)", 8),
                              ("mixed precision with fp32 master weights (16 B/param)", 16)]:
    print(f"{rule:<55} {n_by_hand * bytes_per_param / 2**30:6.2f} GiB")

# %% [markdown]
# ## 预检：放不下的配置在加载模型之前就被拒绝
#
# 下面这个配置想在 Colab 的 T4（16 GB，可用约 15 GiB）上对 Qwen3-1.7B 做 fp16 全参数微调，批大小 8、序列长 1024。
# `check_fits` 只做算术，不加载任何模型；放不下时抛出 `MemoryBudgetError`，并说明改哪里能放下。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
from labkit.memory import MemoryBudgetError, TrainPlan, check_fits, estimate_memory, suggest_fix

t4_vram = int(15.0 * 2**30)
too_big = TrainPlan(model=spec, weight_dtype="fp16", batch_size=8, seq_len=1024)
try:
    check_fits(too_big, t4_vram)
    raise AssertionError("this plan should not fit on a T4")
except MemoryBudgetError as err:
    print(err)

# %%
fixed, change = suggest_fix(too_big, t4_vram)
print("suggested change:", change)
fixed_estimate = check_fits(fixed, t4_vram)      # does not raise: it fits
print(fixed_estimate.table())

# %%
from labkit.plotting import plot_bars

too_big_estimate = estimate_memory(too_big)
fig = plot_bars({"原配置 / original": too_big_estimate.total_bytes / 2**30,
                 "修改后 / fixed": fixed_estimate.total_bytes / 2**30,
                 "T4 可用 / T4 budget": 0.9 * t4_vram / 2**30},
                title="T4 上的显存估算 / estimated peak memory on a T4", ylabel="GiB")

# %% [markdown]
# 本机当前配置的预检（CPU 配置下只显示估算，不做拒绝）：

# %%
from labkit.preflight import preflight

print(preflight(profile, hardware).table())

# %% [markdown]
# ## Hugging Face 镜像与 ModelScope
#
# GPU 配置需要从 Hub 下载 Qwen3 模型和 GSM8K 数据集。国内网络通常访问不了 `huggingface.co`，有两种办法：
#
# 1. **镜像**：在导入任何 Hugging Face 库*之前*设置 `HF_ENDPOINT=https://hf-mirror.com`。
#    `huggingface_hub` 在导入时读取这个变量，之后再改不生效——所以要么在启动 Jupyter 前 `export`，
#    要么在 notebook 开头调用 `setup(..., mirror="https://hf-mirror.com")`（`labkit.hub.configure_hub` 会在导入太晚时报错提醒重启内核）。
# 2. **ModelScope**：`pip install modelscope` 后，Hub 与镜像都不可达时 labkit 自动改从 ModelScope 下载
#    （Qwen 的模型 id 相同；GSM8K 等数据集在 ModelScope 上的 id 不同，`labkit.hub.MODELSCOPE_IDS` 里有对照）。
# 3. **手动下载**：把模型放进一个目录并设 `MODEL_ID` 为该目录；把数据集按 Hub 上的目录结构放进 `DATA_DIR`
#    （例如 `DATA_DIR/openai/gsm8k/main/test-00000-of-00001.parquet`），在 `parameters` 单元设置 `DATA_DIR`。
#
# 模型（`resolve_model`）和数据集（`resolve_dataset`）走同一条链：本地路径 → `DATA_DIR` → `HF_ENDPOINT` / huggingface.co → hf-mirror.com
# → ModelScope；全部失败时只报一个错误，列出每一处试过的结果和该怎么做。用镜像时 labkit 关掉 Xet 下载通道（它不走 `HF_ENDPOINT`）。
# CPU 配置完全离线（`HF_HUB_OFFLINE=1`），不访问网络。下面用"假"的网络演示这条链：

# %%
import os
from unittest import mock

from labkit.hub import HubUnavailableError, choose_endpoint, resolve_model

only_mirror = lambda url: "hf-mirror" in url            # pretend only the mirror answers
print("endpoint chosen:", choose_endpoint(probe=only_mirror))


def modelscope_down(model_id: str) -> str:               # pretend ModelScope does not answer either
    raise ConnectionError("modelscope.cn did not answer (pretend)")


with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "0"}):  # the cpu profile is offline: pretend it is not
    try:
        resolve_model("Qwen/Qwen3-0.6B", probe=lambda url: False, modelscope_download=modelscope_down)
    except HubUnavailableError as err:
        print(err)

# %% [markdown]
# ## CPU 配置的微型世界
#
# CI 和没有 GPU 的机器用课程自带的数据（`data/`，由 `data/generate.py` 生成）与一个微型 Qwen3：
# 分词器是在题目文本上训练的字节级 BPE，**每个数字单独成 token**。下面现场训练一个分词器（不到 1 秒）看看效果。
#
# 字节级 BPE 的基本单位是 UTF-8 **字节**，不是字符：一个汉字或全角标点占 3 个字节，词表（这里只有几百个 token）
# 里没有整个字符时，它就被切成几段字节。单独一段字节不是完整的 UTF-8 字符，单独解码只能得到替换符 `�`。
# 所以下面把每个 token 能解码成完整文字的照常显示，只含半个字符的显示成它的原始字节，例如 `<ef bc>`。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from labkit import tiny
from labkit.data import load_split

rows = load_split("pretrain", limit=2000)
tok = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
sample = rows[0]["question"] + " " + rows[0]["reasoning"]
print(sample)


def show_token(tokenizer, token_id: int) -> str:
    """The token's text, or its raw UTF-8 bytes (e.g. '<ef bc>') when it holds only part of a character."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}   # byte-level BPE's byte <-> char map
    return "<" + bytes(byte_of[c] for c in tokenizer.convert_ids_to_tokens(token_id)).hex(" ") + ">"


print(" | ".join(show_token(tok, i) for i in tok(sample).input_ids))
tiny_model = tiny.build_model(tok)
tiny_params = sum(p.numel() for p in tiny_model.parameters())
print(f"tiny Qwen3: {tiny_params:,} parameters, config {tiny.TINY_MODEL}")

# %% [markdown]
# 细看上面题目末尾的全角问号 `？`：它的 UTF-8 编码是 3 个字节，分词器把它切成了两段。

# %%
mark_ids = tok("？").input_ids
print("UTF-8 bytes of '？':", "？".encode("utf-8").hex(" "))
print("token ids:", mark_ids, " raw byte-level tokens:", tok.convert_ids_to_tokens(mark_ids))
print("each token decoded alone:", [tok.decode([i]) for i in mark_ids], " shown as bytes:",
      [show_token(tok, i) for i in mark_ids])
print("decoded together:", repr(tok.decode(mark_ids)))

# %% [markdown]
# ## 练习
#
# **练习 1**：模型有 `n_params` 个参数、以 `dtype`（"fp32"/"bf16"/"fp16"）加载时，权重占多少 GiB（$2^{30}$ 字节）？

# %% tags=["solution"]
def weight_gib(n_params: int, dtype: str) -> float:
    # TODO: 返回权重占用的 GiB 数
    bytes_per_param = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
    return n_params * bytes_per_param / 2**30


# %% tags=["check"]
from labkit import exercises


def check_weight_gib(fn):
    exercises.check_close("weight_gib(Qwen3-0.6B, bf16)", fn(596_049_920, "bf16"), 1.1102, tol=1e-3)
    exercises.check_close("weight_gib(1e9, fp32)", fn(10**9, "fp32"), 3.7253, tol=1e-3)


check_weight_gib(weight_gib)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_weight_gib(lambda n, dtype: n * 2 / 1e9))

# %% [markdown]
# **练习 2**：GRPO 一次生成 `n_seq` 条长度为 `seq_len` 的序列时，KV cache 占多少字节？
# 每层缓存 K 和 V 两份，每份形状为 `[n_seq, kv_heads, seq_len, head_dim]`。

# %% tags=["solution"]
def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, n_seq: int, seq_len: int,
                   bytes_per_value: int) -> int:
    # TODO: 返回 KV cache 的字节数（它由哪些部分组成，见"显存花在哪里"）
    return 2 * layers * n_seq * kv_heads * seq_len * head_dim * bytes_per_value


# %% tags=["check"]
def check_kv_cache_bytes(fn):
    got = fn(layers=28, kv_heads=8, head_dim=128, n_seq=16, seq_len=1024, bytes_per_value=2)
    exercises.check_equal("KV cache of Qwen3-1.7B, 16 x 1024 tokens, bf16", got, 1_879_048_192,
                          hint="别忘了 K 和 V 两份")


check_kv_cache_bytes(kv_cache_bytes)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_kv_cache_bytes(
    lambda layers, kv_heads, head_dim, n_seq, seq_len, bytes_per_value:
    layers * n_seq * kv_heads * seq_len * head_dim * bytes_per_value))

# %% [markdown]
# **练习 3（实验）**：在 T4 上（`t4_vram`，按 90% 可用）用 LoRA（秩 16，不量化）微调 `Qwen/Qwen3-0.6B`，
# 以 fp16 加载，每条序列 768 个 token。用 `labkit.memory` 的 `TrainPlan` 和 `estimate_memory(...).fits(t4_vram)`
# 找出三种设置下**能放下的最大** `batch_size`：
# (a) 如上；(b) 再打开梯度检查点 `gradient_checkpointing=True`；(c) 在 (b) 的基础上再 4-bit 量化 `quant="4bit"`。
# 做完后想一想：哪一项改动最省显存？为什么？（看 `estimate_memory(plan).table()` 里哪一项最大。）

# %% tags=["solution"]
from labkit.memory import TrainPlan

small = MODEL_SPECS["Qwen/Qwen3-0.6B"]
# TODO: 搜索三种设置下能放下的最大批大小，填入 max_batch = {"a": ..., "b": ..., "c": ...}


def largest_batch(**settings) -> int:
    """The largest batch size whose estimate fits the T4 (0 when even 1 does not fit)."""
    best = 0
    for batch_size in range(1, 257):
        plan = TrainPlan(model=small, weight_dtype="fp16", lora_rank=16, seq_len=768,
                         batch_size=batch_size, **settings)
        if estimate_memory(plan).fits(t4_vram):
            best = batch_size
    return best


max_batch = {"a": largest_batch(), "b": largest_batch(gradient_checkpointing=True),
             "c": largest_batch(gradient_checkpointing=True, quant="4bit")}
print(max_batch)


# %% tags=["check"]
def check_max_batch(answer: dict) -> None:
    settings = {"a": {}, "b": {"gradient_checkpointing": True},
                "c": {"gradient_checkpointing": True, "quant": "4bit"}}
    exercises.check_equal("三种设置 / the three settings", sorted(answer), ["a", "b", "c"])
    for key, extra in settings.items():
        def fits(batch_size: int) -> bool:
            return estimate_memory(TrainPlan(model=small, weight_dtype="fp16", lora_rank=16,
                                             seq_len=768, batch_size=batch_size, **extra)).fits(t4_vram)
        exercises.check_true(f"({key}) batch {answer[key]} fits, {answer[key] + 1} does not",
                             answer[key] >= 1 and fits(answer[key]) and not fits(answer[key] + 1),
                             "批大小要能放下，且再加 1 就放不下 / the batch must fit and one more must not")


check_max_batch(max_batch)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_max_batch({"a": 8, "b": 8, "c": 8}))

# %% [markdown]
# 读你的结果：三个数相差多少？对照 `table()` 的各项，你会发现这个配置的大头不是权重。
#
# **练习 4（实验）**：亲手量一次"每个参数要几字节"。把微型模型转成 bf16（`.to(torch.bfloat16)`），
# 用 `torch.optim.AdamW` 在几道题目上训练**一步**（前向、反向、`step()`），
# 然后数出权重、梯度和优化器状态一共占多少字节，除以参数量，得到 `bytes_per_param`。
# 提示：`p.numel() * p.element_size()` 是一个张量的字节数；优化器状态在 `optimizer.state` 里。

# %% tags=["solution"]
import torch

bf16_model = tiny.build_model(tok).to(torch.bfloat16)
bf16_optimizer = torch.optim.AdamW(bf16_model.parameters(), lr=1e-3)
# TODO: 训练一步，再量出 bytes_per_param
batch = tok([r["question"] for r in rows[:8]], return_tensors="pt", padding=True)
bf16_model(**batch, labels=batch["input_ids"]).loss.backward()
bf16_optimizer.step()
params = list(bf16_model.parameters())
state_bytes = sum(t.numel() * t.element_size() for state in bf16_optimizer.state.values()
                  for t in state.values() if torch.is_tensor(t))
bytes_per_param = (sum(p.numel() * p.element_size() for p in params)
                   + sum(p.grad.numel() * p.grad.element_size() for p in params)
                   + state_bytes) / sum(p.numel() for p in params)
print(f"measured: {bytes_per_param:.3f} bytes per parameter")


# %% tags=["check"]
def check_bytes_per_param(model, optimizer, value: float) -> None:
    tensors = list(model.parameters())
    exercises.check_true("bf16 weights", all(p.dtype == torch.bfloat16 for p in tensors),
                         "先把模型转成 bf16 / convert the model with .to(torch.bfloat16)")
    exercises.check_true("one optimizer step was taken",
                         all(p.grad is not None and p in optimizer.state for p in tensors),
                         "要做一次前向、反向和 optimizer.step() / run forward, backward and step once")
    counted = sum(t.numel() * t.element_size()
                  for p in tensors for t in (p, p.grad, *optimizer.state[p].values()) if torch.is_tensor(t))
    exercises.check_close("bytes_per_param", value, counted / sum(p.numel() for p in tensors), tol=1e-3,
                          hint="权重 + 梯度 + 优化器状态的字节数，除以参数量")


check_bytes_per_param(bf16_model, bf16_optimizer, bytes_per_param)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_bytes_per_param(
    tiny_model, torch.optim.AdamW(tiny_model.parameters(), lr=1e-3), bytes_per_param))

# %% [markdown]
# 把你量到的数和"显存花在哪里"里的三行做法对照：它是哪一行？如果改用 fp32 加载（不转 bf16）再量一次，会是多少？
# （`step` 计数器每个参数张量一个 fp32 标量，可以忽略。）
#
# ## 扩展（约 15 分钟）
#
# 1. **激活随序列长度怎样长？** 用练习 3 的 (b) 设置、批大小 4，把 `seq_len` 取 256、512、1024、2048，
#    打印 `estimate_memory(plan).breakdown` 的 `activations` 和 `logits`。看：它们与序列长度成正比吗？
#    （激活里有一项 $B \times T \times T$ 的注意力掩码，序列很长时会冒出来。）哪一项先超过权重？
# 2. **GRPO 的 KV cache。** 仿照 `labkit/memory.py` 的 `TrainPlan` 文档，给 `Qwen/Qwen3-1.7B` 写一个 GRPO 计划
#    （`num_generations=8, max_prompt_len=256, max_completion_len=1024, lora_rank=16`），看 `table()` 里 `kv_cache`
#    与 `activations + logits` 谁更大，再用 `suggest_fix(plan, t4_vram)` 看 labkit 建议怎么改。
#    用练习 2 的 `kv_cache_bytes` 手算一遍 KV cache，与表中的数对照（注意 `gen_batch_size` 是多少条序列）。
# 3. **fp32 主权重的代价。** 用练习 4 的办法分别量 fp32 模型和 bf16 模型每个参数的字节数；
#    再按"16 字节/参数"的规则估算 Qwen3-8B 全参数微调至少要多少 GiB（不算激活），判断一张 80 GB 的卡够不够。
#    这是算术估算，不是实测。

# %%
from labkit import metrics

metrics.record(profile=profile.name, oom_plan_gib=round(too_big_estimate.total_bytes / 2**30, 2),
               fixed_plan_gib=round(fixed_estimate.total_bytes / 2**30, 2), tiny_params=tiny_params)
metrics.show()
