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
# # 实验 06：GRPO 的改进——DAPO、Dr. GRPO、RLOO 同预算对比
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/06_grpo_variants.ipynb)
#
# **目标**
# 1. 从头演示 GRPO 的长度偏差：按回答求平均时，每个 token 的梯度权重取决于回答有多长；Dr. GRPO 和 DAPO 怎样去掉它；
# 2. 看清 DAPO 的四项技术各自改了什么：clip-higher、token 级损失、软超长惩罚、动态采样（TRL 只记录零方差组，
#    `labkit` 的 `DynamicSamplingGRPOTrainer` 把它们换成新题）；
# 3. 在**同一起点、同一批题、同一随机种子、同样步数**下训练 GRPO、DAPO、Dr. GRPO、RLOO 四个变体，逐项对比曲线和结果。
#
# **前置知识**：实验 05（GRPO）。SFT 模型由 `labkit` 自动取用或训练。
#
# **运行时间**：2 核 CPU 上约 3 分钟（四个变体各训练约半分钟）。

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
PROFILE = "auto"      # "auto" | "cpu" | "t4" | "24gb" | "80gb"
SEED = 0
MODEL_ID = None       # None: the profile's model; or a hub id / a local folder with the weights
DATA_DIR = None       # None: download; or a folder with hand-downloaded datasets / models (README, AutoDL)
TIME_BUDGET_MIN = None  # GPU: refuse a plan longer than this many minutes (None: the profile's budget)
MAX_STEPS = None      # steps per variant; None: the profile's default for this lab
LEARNING_RATE = None
VARIANTS = ("grpo", "dapo", "dr_grpo", "rloo")
EVAL_SAMPLES = 2      # sampled completions per held-out question
EVAL_LIMIT = None

# %%
from labkit.runtime import setup

profile = setup(PROFILE, lab="grpo_compare", seed=SEED, model_id=MODEL_ID, data_dir=DATA_DIR,
                max_steps=MAX_STEPS, learning_rate=LEARNING_RATE, eval_limit=EVAL_LIMIT,
                time_budget_min=TIME_BUDGET_MIN, lab_params=dict(EVAL_SAMPLES=EVAL_SAMPLES, VARIANTS=VARIANTS))

# %% [markdown]
# ## 理论回顾
#
# 记 $\ell_{i,t}=-\min(\rho_{i,t}\hat A_i,\operatorname{clip}(\rho_{i,t},1-\epsilon_{\text{low}},1+\epsilon_{\text{high}})\hat A_i)$。各变体的区别只在三处：
#
# | 变体 | 优势 $\hat A_i$ | 损失怎样求平均 | 其他 | TRL 设置 |
# |---|---|---|---|---|
# | GRPO | $(r_i-\bar r)/(\mathrm{std}+\varepsilon)$ | $\frac1G\sum_i\frac1{\lvert o_i\rvert}\sum_t\ell_{i,t}$（先按回答平均） | 对称裁剪 0.2 | `loss_type="grpo"` |
# | DAPO | 同 GRPO | $\frac{1}{\sum_i\lvert o_i\rvert}\sum_{i,t}\ell_{i,t}$（所有 token 一起平均） | clip-higher $\epsilon_{\text{high}}=0.28$；软超长惩罚；动态采样 | `loss_type="dapo"`, `epsilon_high=0.28` |
# | Dr. GRPO | $r_i-\bar r$（不除标准差） | $\frac{1}{G\cdot L_{\max}}\sum_{i,t}\ell_{i,t}$（除以常数） | — | `loss_type="dr_grpo"`, `scale_rewards="none"` |
# | RLOO | $r_i-\frac1{G-1}\sum_{j\ne i}r_j$（留一基线） | 序列级比值，按回答平均 | — | TRL `RLOOTrainer` |
#
# - **clip-higher**：正优势的 token 概率最多只能涨到 $(1+\epsilon)$ 倍。概率很小的"探索" token 因此几乎涨不起来，熵很快塌缩；
#   把上界单独放宽到 0.28 就是给它们留空间。
# - **软超长惩罚**：回答长度 $L$ 超过 $L_{\max}-L_{\text{cache}}$ 后线性扣分，到 $L_{\max}$ 扣满 1 分（`labkit.rewards.overlong_penalty`）。
# - **动态采样**：一组全对或全错时优势为 0、没有梯度。DAPO 继续采新题，直到批里每组都有对有错。
# - **RLOO 与 REINFORCE++**：RLOO 用 TRL 的 `RLOOTrainer`，基线是同组其他 $G-1$ 个回答的平均奖励，它等于
#   $\frac{G}{G-1}(r_i-\bar r)$，即不除标准差的 GRPO 优势乘一个常数。REINFORCE++-baseline 则是先减组均值，再用**整批**的标准差归一化，
#   对应 `GRPOTrainer(scale_rewards="batch")` 或 `labkit.algorithms.batch_normalize`。本实验跑 RLOO，因为它是 TRL 单独维护的训练器，
#   而 REINFORCE++ 只是 GRPO 的一个开关。

# %%
import time

import numpy as np
import pandas as pd
import torch

from labkit import metrics
from labkit.algorithms import aggregate_loss, group_advantages, rloo_advantages
from labkit.data import load_problems
from labkit.evaluate import evaluate_accuracy
from labkit.grpo import TRAIN_LEVELS, VARIANTS as ALL_VARIANTS, make_trainer, rl_dataset
from labkit.hardware import detect
from labkit.models import load_model, load_tokenizer, lora_config
from labkit.plotting import plot_bars, plot_metrics
from labkit.preflight import preflight
from labkit.rewards import overlong_penalty
from labkit.stages import get_stage, model_path

sft_dir = model_path(get_stage("sft", profile))
tokenizer = load_tokenizer(sft_dir)
estimate = preflight(profile, detect(), lab="grpo_compare")   # refuses a config that will not fit, on a GPU
print(f"estimated peak memory per variant: {estimate.total_bytes / 2**30:.2f} GiB")
pd.DataFrame([{"variant": name, "what it changes": ALL_VARIANTS[name].description} for name in VARIANTS])

# %% [markdown]
# ## 第一步：从头演示长度偏差
#
# 一组里有两个回答：短的 4 个 token，长的 16 个 token。先让两者优势都是 $+1$（都答对），再都是 $-1$（都答错）。
# 对每种求平均方式，用自动求导算损失对每个 token 对数概率的梯度，也就是每个 token 被"推"的力度。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
lengths = [4, 16]
max_len = 16
mask = torch.zeros(2, max_len)
for i, n in enumerate(lengths):
    mask[i, :n] = 1


def token_weights(advantage: float, norm: str) -> list[float]:
    """|d loss / d logp| of one token of the short and of the long response (on-policy, so rho = 1)."""
    logp = torch.zeros(2, max_len, requires_grad=True)
    per_token = -torch.exp(logp - logp.detach()) * advantage     # the surrogate at ratio 1
    aggregate_loss(per_token, mask, norm=norm, max_len=max_len).backward()
    return [abs(float(logp.grad[0, 0])), abs(float(logp.grad[1, 0]))]


demo = pd.DataFrame({f"{norm}: {part}": token_weights(1.0, norm)
                     for norm, part in (("sequence", "GRPO"), ("token", "DAPO"), ("constant", "Dr. GRPO"))},
                    index=["token of the short answer (4)", "token of the long answer (16)"])
demo.round(4)

# %% [markdown]
# - **GRPO（按回答平均）**：短回答每个 token 的权重是 $\frac{1}{2\cdot4}$，长回答是 $\frac{1}{2\cdot16}$，差 4 倍。
#   答对时短回答被推得更多（偏好简短的正确答案）；答错时长回答每个 token 被罚得更少——错误的长回答受到的惩罚被"稀释"，
#   这就是 GRPO 回答越训越长的一个来源。
# - **DAPO（token 级）** 与 **Dr. GRPO（常数）**：每个 token 权重相同，与它所在回答的长度无关。两者只差一个整体缩放。
#
# Dr. GRPO 还指出了第二个偏差：除以组内标准差，会放大"几乎全对/全错"的题（标准差小）的权重。用一组奖励看一下：

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
G = 8
pd.DataFrame({"reward": rewards.numpy(), "GRPO (z-score)": group_advantages(rewards, G).numpy(),
              "Dr. GRPO (r - mean)": group_advantages(rewards, G, scale_std=False).numpy(),
              "RLOO (leave-one-out)": rloo_advantages(rewards, G).numpy()},
             index=[f"group {i // G + 1}" for i in range(len(rewards))]).round(3)

# %% [markdown]
# 第二组 8 个里只有 1 个错：z-score 给这个错误回答 $-2.47$ 的优势，比第一组（4 对 4 错）里任何回答都大；不除标准差时它是 $-0.875$。
# RLOO 的优势恰好是 Dr. GRPO 的 $\frac{G}{G-1}$ 倍。
#
# **clip-higher 对小概率 token 意味着什么**：一次更新后，正优势 token 的新概率最多是旧概率的 $(1+\epsilon_{\text{high}})$ 倍。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
p_old = np.array([0.01, 0.1, 0.5, 0.9])
pd.DataFrame({"p_old": p_old, "max p_new, eps_high=0.2": np.minimum(p_old * 1.2, 1.0),
              "max p_new, eps_high=0.28": np.minimum(p_old * 1.28, 1.0)}).round(4)

# %% [markdown]
# 高概率 token 早已碰到 1 的上限，放宽上界主要让 0.01、0.1 这样的低概率 token 多涨一些，从而保住熵。
# 注意：在 TRL 默认的 `num_iterations=1` 下，每批数据只更新一次，更新那一刻比值恒为 1，裁剪（无论上界多少）都不会触发；
# 只有同一批数据被多次使用（`num_iterations>1` 或一批拆成多个 minibatch）时，裁剪才起作用。

# %% [markdown]
# ## 第二步：同一预算训练四个变体
#
# 每个变体都从同一个 SFT 模型出发，用同一批训练题、同一个随机种子、同样的步数，每步同样多的题和回答。
# DAPO 的动态采样会为零方差组额外采新题——这部分额外的生成算在它自己头上（表中 `extra prompts` 一列）。

# %%
train_set = rl_dataset(profile)
levels = TRAIN_LEVELS.get(profile.dataset)
heldout = load_problems(profile.dataset, "eval", levels=levels, limit=profile.eval_limit)
print(f"{len(train_set)} training prompts, {len(heldout)} held-out questions (levels {levels or 'all'}); "
      f"{profile.max_steps} steps x {profile.rollout_batch_size} prompts x G = {profile.num_generations}")

def mean_tokens(completions: list[str]) -> float:
    """Mean completion length in tokens."""
    return float(np.mean([len(tokenizer(c).input_ids) for c in completions]))


histories, results = {}, {}
for name in VARIANTS:
    torch.manual_seed(SEED)
    policy = load_model(sft_dir, profile)
    trainer = make_trainer(name, profile, policy, tokenizer, train_set, f"outputs/06_{name}", seed=SEED,
                           peft_config=lora_config(profile))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    histories[name] = trainer.state.log_history
    torch.manual_seed(SEED)
    after = evaluate_accuracy(trainer.model, tokenizer, heldout, profile, desc=f"eval {name}", samples=EVAL_SAMPLES)
    steps = [h for h in histories[name] if "reward" in h]
    results[name] = {
        "heldout acc": after.accuracy,
        "mean len (tokens)": mean_tokens(after.completions),
        "train accuracy reward, last 5": float(np.mean([h["rewards/accuracy_reward/mean"] for h in steps[-5:]])),
        "frac_reward_zero_std": float(np.mean([h["frac_reward_zero_std"] for h in steps])),
        "zero-std groups trained on": float(np.mean([h.get("dynamic/frac_zero_std_after", h["frac_reward_zero_std"])
                                                     for h in steps])),
        "entropy, last 5": float(np.mean([h["entropy"] for h in steps[-5:]])),
        "clip ratio": float(np.mean([h.get("clip_ratio/region_mean", 0.0) for h in steps])),
        "extra prompts": float(np.sum([h.get("dynamic/extra_prompts", 0.0) for h in steps])),
        "train s": seconds,
    }
    del trainer, policy

# %%
torch.manual_seed(SEED)
sft_model = load_model(sft_dir, profile)
sft_eval = evaluate_accuracy(sft_model, tokenizer, heldout, profile, desc="eval sft", samples=EVAL_SAMPLES)
del sft_model
table = pd.DataFrame(results).T
table.loc["SFT (start)", ["heldout acc", "mean len (tokens)"]] = [
    sft_eval.accuracy, mean_tokens(sft_eval.completions)]
table.round(3)

# %% [markdown]
# ## 第三步：逐项对比曲线
#
# 每张图一个指标、四个变体。曲线噪声大，粗线是平滑后的值。

# %%
for metric, title in (("reward_per_func", "奖励分项"), ("completion_length", "回答长度"), ("entropy", "熵"),
                      ("clip_ratio", "裁剪比例"), ("frac_reward_zero_std", "零方差组比例")):
    try:
        plot_metrics(histories, [metric], smooth=0.7, title=f"{title}：四个变体", ncols=3)
    except KeyError as err:   # a trainer that does not log this metric
        print(f"{metric}: {err}")

# %% [markdown]
# **动态采样做了什么**：左边是 DAPO 每步第一次采样时"正确率全同"的组的比例，右边是补采新题之后、真正用于训练的批里的比例。

# %%
if "dapo" in histories:
    plot_metrics(histories["dapo"], ["dynamic/frac_zero_std_before", "dynamic/frac_zero_std_after",
                                     "dynamic/extra_prompts"], title="DAPO 的动态采样", ncols=3);

# %%
plot_bars({name: results[name]["heldout acc"] for name in VARIANTS} | {"SFT": sft_eval.accuracy},
          title=f"留出集采样正确率（{len(heldout)} 题 x {EVAL_SAMPLES}）", ylabel="accuracy");

# %% [markdown]
# 先把读结果要用的数字算出来：每个变体相对起点 SFT 的正确率差，和评估本身的抽样误差（把每个样本当成独立的伯努利试验，
# 两个正确率之差的标准误约为 $\sqrt{p_1(1-p_1)/n+p_2(1-p_2)/n}$；同一道题的多个样本并不独立，所以真实误差只会更大）。

# %%
n_eval = len(heldout) * EVAL_SAMPLES
budget = profile.max_new_tokens
penalties = [h["rewards/overlong_penalty/mean"] for h in histories.get("dapo", []) if "rewards/overlong_penalty/mean" in h]
overlong = float(np.mean(penalties)) if penalties else 0.0
print(f"DAPO's mean soft overlong penalty per step: {overlong:.4f}")
readout = pd.DataFrame({name: {
    "acc - SFT": results[name]["heldout acc"] - sft_eval.accuracy,
    "std. error of the difference": float(np.sqrt(
        (results[name]["heldout acc"] * (1 - results[name]["heldout acc"]) + sft_eval.accuracy * (1 - sft_eval.accuracy))
        / n_eval)),
    "mean len / budget": results[name]["mean len (tokens)"] / budget,
    "clip ratio": results[name]["clip ratio"],
} for name in VARIANTS}).T
print(f"{n_eval} sampled answers per model; generation budget {budget} tokens")
readout.round(3)

# %% [markdown]
# **诚实的解读**（数字以上面两张表为准；CPU 上同一台机器结果可复现，换 `SEED` 或换一台 CPU 会变）：
# - **能看清的是机制**：DAPO 的超长惩罚在奖励分项里是一条略低于 0 的曲线（只有长度超过软上限
#   `max_new_tokens` − 缓冲区的少数回答被扣分）；动态采样为零方差组补采了新题（表中 `extra prompts`），训练批里
#   "正确率全同"的组比例因此降到接近 0（表中 `zero-std groups trained on` 对比 `frac_reward_zero_std`，以及上面"DAPO 的动态采样"图）；
#   各种求平均方式与优势缩放在第一步已逐 token 算清。
# - **能看到的效果与看不清的优劣**：每个变体只训练了 `max_steps` 步、每步 `rollout_batch_size` 道题，远少于实验 05。
#   把上表 `acc - SFT` 与它的标准误比较。在我们测过的 3 个种子 × 两套 CPU 内核上（`benchmarks/spread.md`），
#   四个变体的留出集采样正确率都高于起点 SFT，DAPO 每次都最高；但 DAPO 的动态采样额外生成了表中 `extra prompts`
#   道题的回答（其他变体每个只有 `max_steps × rollout_batch_size` 道题），这份多花的采样算力要算进比较里。
#   GRPO、Dr. GRPO、RLOO 三者之间只差一两个标准误，和评估的抽样噪声分不开，排序随种子而变，不能说谁更好。
#   回答长度都明显短于生成上限（`mean len / budget`），长度偏差没有机会表现出来；`num_iterations=1` 时裁剪比例恒为 0，
#   clip-higher 没有起作用。
# - DAPO 论文的消融表（AIME 上逐项叠加、每项几个点）来自 32B 模型和几千步训练，本实验既不能复现，也不声称复现。
#   要看到长度与熵的差别，需要更长的回答和更多的训练步数（例如 GPU 配置），本课程还没有在那里测过。

# %% [markdown]
# ## 练习
#
# **练习 1**：按回答平均（GRPO）时，一个长度为 `n` 的回答里每个 token 的梯度权重是多少？给一组回答的长度和 G，返回每个回答的 token 权重
# $\frac{1}{G\cdot n_i}$；再写出 token 级平均（DAPO）的权重 $\frac{1}{\sum_j n_j}$。

# %% tags=["solution"]
def my_token_weights(lengths: list[int], norm: str) -> list[float]:
    # TODO: "sequence": 1 / (G * n_i)；"token": 1 / sum(n)
    if norm == "sequence":
        return [1.0 / (len(lengths) * n) for n in lengths]
    return [1.0 / sum(lengths) for _ in lengths]


# %% tags=["check"]
from labkit import exercises


def check_token_weights(fn):
    exercises.check_close("sequence", fn([4, 16], "sequence"), token_weights(1.0, "sequence"),
                          hint="先在回答内平均（除以 n_i），再在 G 个回答间平均（除以 G）")
    exercises.check_close("token", fn([4, 16], "token"), token_weights(1.0, "token"),
                          hint="所有 token 一起平均：除以总 token 数")
    exercises.check_close("sequence, 3 answers", fn([2, 5, 10], "sequence"), [1 / 6, 1 / 15, 1 / 30])


check_token_weights(my_token_weights)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_token_weights(lambda lengths, norm: [1.0 / n for n in lengths]))

# %% [markdown]
# **练习 2**：软超长惩罚。生成上限 `max_len`、缓冲区 `cache`，返回长度为 `length` 的回答的惩罚。

# %% tags=["solution"]
def my_overlong_penalty(length: int, max_len: int, cache: int) -> float:
    # TODO: length <= max_len - cache: 0；之后线性降到 -1（length = max_len）；超过 max_len: -1
    soft = max_len - cache
    if length <= soft:
        return 0.0
    if length <= max_len:
        return (soft - length) / cache
    return -1.0


# %% tags=["check"]
def check_overlong(fn):
    reference = overlong_penalty(48, 16)
    lengths = [10, 32, 33, 40, 48, 60]
    expected = reference(["x"] * len(lengths), completion_ids=[[0] * n for n in lengths])
    exercises.check_close("penalties", [fn(n, 48, 16) for n in lengths], expected,
                          hint="缓冲区内线性：(max_len - cache - length) / cache")


check_overlong(my_overlong_penalty)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_overlong(lambda length, max_len, cache: -1.0 if length > max_len else 0.0))

# %% [markdown]
# **思考题**（不计分）：在 `make_trainer` 里给所有变体加上 `num_iterations=2`（每批数据更新两次），裁剪比例曲线会怎样变化？
# clip-higher 这时有没有作用？把 `VARIANTS` 加上一个 `scale_rewards="batch"` 的 GRPO（REINFORCE++-baseline）试试。

# %%
metrics.record(**{f"heldout_acc_{name}": round(results[name]["heldout acc"], 4) for name in VARIANTS},
               **{f"mean_len_{name}": round(results[name]["mean len (tokens)"], 2) for name in VARIANTS},
               heldout_acc_sft=round(sft_eval.accuracy, 4),
               **{f"clip_ratio_{name}": round(results[name]["clip ratio"], 4) for name in VARIANTS},
               dapo_overlong_penalty=round(overlong, 4),
               dapo_zero_std_trained=round(results["dapo"]["zero-std groups trained on"], 4) if "dapo" in results else 0.0,
               dapo_zero_std_sampled=round(results["dapo"]["frac_reward_zero_std"], 4) if "dapo" in results else 0.0,
               dapo_extra_prompts=int(results["dapo"]["extra prompts"]) if "dapo" in results else 0)
metrics.show()
