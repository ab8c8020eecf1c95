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
# 强化学习还要加上：参考模型（LoRA 时关掉适配器即可，不额外占用）、奖励模型、价值模型（PPO），
# 以及生成 $G$ 个回复时的 KV cache：$2 \times \text{层数} \times \text{KV 头数} \times \text{头维度} \times b \times \text{序列数} \times \text{长度}$。
#
# ### 手算 Qwen3-1.7B 的参数量
# 每层：注意力 $q,k,v,o$ 投影，$q/k$ 归一化，SwiGLU 的三个矩阵，两个 RMSNorm；加上词嵌入（与输出层共享）。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
from labkit.memory import MODEL_SPECS

spec = MODEL_SPECS["Qwen/Qwen3-1.7B"]
h, d, H, KV, I, V, L = (spec.hidden_size, spec.head_dim, spec.num_heads, spec.num_kv_heads,
                        spec.intermediate_size, spec.vocab_size, spec.num_layers)
attention = h * H * d + 2 * h * KV * d + H * d * h + 2 * d   # q, k, v, o + q_norm, k_norm
mlp = 3 * h * I
per_layer = attention + mlp + 2 * h                           # + two RMSNorms
n_by_hand = V * h + L * per_layer + h                         # embeddings (tied) + layers + final norm
print(f"Qwen3-1.7B parameters by hand: {n_by_hand:,}; labkit: {spec.num_params():,}")
assert n_by_hand == spec.num_params()
print(f"bf16 weights alone: {n_by_hand * 2 / 2**30:.2f} GiB")

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

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
from labkit import tiny
from labkit.data import load_split

rows = load_split("pretrain", limit=2000)
tok = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
sample = rows[0]["question"] + " " + rows[0]["reasoning"]
print(sample)
print([tok.decode([i]) for i in tok(sample).input_ids])
tiny_model = tiny.build_model(tok)
tiny_params = sum(p.numel() for p in tiny_model.parameters())
print(f"tiny Qwen3: {tiny_params:,} parameters, config {tiny.TINY_MODEL}")

# %% [markdown]
# ## 练习
#
# **练习 1**：模型有 `n_params` 个参数、以 `dtype`（"fp32"/"bf16"/"fp16"）加载时，权重占多少 GiB（$2^{30}$ 字节）？

# %% tags=["solution"]
def weight_gib(n_params: int, dtype: str) -> float:
    # TODO: 每个参数的字节数 × 参数量，换算成 GiB
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
    # TODO: K 和 V 两份 × 层数 × 每份的元素数 × 每个元素的字节数
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

# %%
from labkit import metrics

metrics.record(profile=profile.name, oom_plan_gib=round(too_big_estimate.total_bytes / 2**30, 2),
               fixed_plan_gib=round(fixed_estimate.total_bytes / 2**30, 2), tiny_params=tiny_params)
metrics.show()
