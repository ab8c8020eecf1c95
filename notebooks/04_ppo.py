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
# # 实验 04：PPO——用奖励模型做在线强化学习
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/04_ppo.ipynb)
#
# **目标**
# 1. 弄清经典 LLM PPO 的一步由哪几块组成：采样（rollout）、奖励塑形、GAE、裁剪的策略损失与价值损失；
# 2. 在一批数据上亲手算出每一块，并与 `labkit.ppo` 的实现逐项对照；
# 3. 用 `labkit.ppo.PPOTrainer` 从 SFT 模型出发、以实验 02 的奖励模型打分进行训练，读懂健康训练的三条曲线；
# 4. 比较"奖励模型分数"与"答案是否真的正确"：策略会不会钻奖励模型的空子？
#
# **前置知识**：实验 01（SFT）、实验 02（奖励模型）。SFT 模型与奖励模型由 `labkit` 自动取用或训练。
#
# **为什么不用 TRL**：TRL 1.13 起删除了 `PPOTrainer`，所以本课程自带一个短小、可从头读到尾的实现
# （`labkit/ppo.py`，一个文件），配置项沿用 TRL 旧版 `PPOConfig` 的名字。
#
# **运行时间**：2 核 CPU 上约 3 分钟。

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
MAX_STEPS = None      # PPO steps; None: the profile's default for this lab
LEARNING_RATE = None
KL_COEF = 0.1         # beta of the per-token KL penalty
VF_COEF = 0.1         # weight of the value loss
CLIPRANGE = 0.2
NUM_PPO_EPOCHS = 2
LEVELS = (3,)         # prompt difficulty levels used for training and the held-out RM comparison
EVAL_LIMIT = None

# %%
from labkit.runtime import setup

profile = setup(PROFILE, lab="ppo", seed=SEED, model_id=MODEL_ID, data_dir=DATA_DIR, max_steps=MAX_STEPS,
                learning_rate=LEARNING_RATE, eval_limit=EVAL_LIMIT,
                time_budget_min=TIME_BUDGET_MIN, lab_params=dict(NUM_PPO_EPOCHS=NUM_PPO_EPOCHS))

# %% [markdown]
# ## 理论回顾
#
# **目标**：在参考策略 $\pi_{\text{ref}}$（SFT 模型）附近最大化奖励模型的分数 $r_\phi(x,y)$：
# $\max_\pi \mathbb{E}\big[r_\phi(x,y)\big]-\beta\,\mathrm{KL}(\pi\,\|\,\pi_{\text{ref}})$。
#
# **四个模型**：策略 $\pi_\theta$（训练）、参考 $\pi_{\text{ref}}$（冻结）、奖励模型 $r_\phi$（冻结）、价值函数 $V_\psi$（训练）。
#
# **奖励塑形**：奖励模型只在回答结束时给一个分数，KL 惩罚则落在每个 token 上：
# $$r_t = -\beta\,\big(\log\pi_\theta(y_t\mid s_t)-\log\pi_{\text{ref}}(y_t\mid s_t)\big) + \mathbb{1}[t=T]\;r_\phi(x,y).$$
#
# **GAE**（从最后一个 token 往前算，回答结束后 $V=0$）：
# $$\delta_t = r_t+\gamma V(s_{t+1})-V(s_t),\qquad \hat A_t=\delta_t+\gamma\lambda\hat A_{t+1},\qquad R_t=\hat A_t+V(s_t).$$
# 优势随后在整批上白化（减均值、除标准差）。
#
# **裁剪的策略损失**（$\rho_t=\pi_\theta/\pi_{\text{old}}$）与**裁剪的价值损失**：
# $$L^{\text{pg}}=-\,\mathbb{E}_t\big[\min(\rho_t\hat A_t,\ \mathrm{clip}(\rho_t,1-\epsilon,1+\epsilon)\hat A_t)\big],\qquad
# L^{V}=\tfrac12\,\mathbb{E}_t\big[\max\big((V-R_t)^2,\ (V^{\text{clip}}-R_t)^2\big)\big],$$
# 其中 $V^{\text{clip}}=V_{\text{old}}+\mathrm{clip}(V-V_{\text{old}},-c,c)$，总损失 $L=L^{\text{pg}}+c_{\text{vf}}L^{V}$。
# 每次采样之后，在这批数据上做 `num_ppo_epochs` 轮、每轮若干个 minibatch 的梯度更新。
#
# **本实现的两个选择**：价值函数是策略最后一层隐状态上的一个线性头（共享网络，TRL 旧版 `AutoModelForCausalLMWithValueHead`
# 的做法），而不是单独的价值模型——后者要多存一份可训练的权重、梯度和优化器状态；代价是价值损失的梯度也会改动策略网络，
# 所以 $c_{\text{vf}}$ 取得小。参考模型用 LoRA 时就是"关掉适配器"的同一份权重。奖励分数先按初始策略第一批样本的均值和标准差
# 标准化（Ziegler et al. 2019 的做法），没写完（没有 EOS）的回答再扣 `missing_eos_penalty`。

# %%
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from labkit import metrics
from labkit.algorithms import gae, masked_mean, masked_whiten, response_logprobs
from labkit.data import load_problems, prompt_messages
from labkit.evaluate import evaluate_accuracy, generate
from labkit.hardware import detect
from labkit.memory import estimate_memory
from labkit.models import autocast, load_tokenizer
from labkit.plotting import plot_grouped_bars, plot_metrics, plot_twin
from labkit.ppo import PPOTrainer, load_policy, ppo_config, shape_rewards, value_loss
from labkit.preflight import preflight, train_plan
from labkit.profiles import get_profile
from labkit.reward_model import load_reward_model, score_responses
from labkit.rewards import accuracy_reward
from labkit.stages import get_stage, model_path

# %% [markdown]
# ## 第一步：显存——PPO 的四个模型 vs GRPO
#
# 用 `labkit.memory` 估算峰值显存（不需要 GPU）。"经典 PPO"= 单独的价值模型（策略的一份可训练副本）；
# "labkit PPO"= 价值头挂在策略上；GRPO 不要价值函数，也不要奖励模型（用规则奖励），每题采 G 个回答。
# 左边是本次运行的配置，右边是 24 GB 显卡配置（Qwen3-1.7B-Base + LoRA）的同样三种算法。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
estimate = preflight(profile, detect(), lab="ppo")   # refuses a config that will not fit, on a GPU
print(f"estimated peak memory for this run: {estimate.total_bytes / 2**30:.2f} GiB")


def memory_table(prof) -> pd.DataFrame:
    """GiB per component for classic PPO, labkit's PPO and GRPO under one profile."""
    ppo = train_plan(prof, "ppo")
    plans = {"classic PPO": replace(ppo, value_model=True), "labkit PPO": ppo,
             "GRPO": train_plan(get_profile(prof.name, lab="grpo"), "grpo")}
    table = pd.DataFrame({name: estimate_memory(plan).breakdown for name, plan in plans.items()}) / 2**30
    table.loc["peak total"] = [estimate_memory(plan).total_bytes / 2**30 for plan in plans.values()]
    return table.round(2)


memory = pd.concat({profile.name: memory_table(profile), "24gb": memory_table(get_profile("24gb", lab="ppo"))},
                   axis=1)
memory

# %% [markdown]
# 读表：奖励模型和价值模型是 PPO 相比 GRPO 多出的两大块；价值模型若单独存放，要带上自己的权重、梯度、优化器状态和激活。
# 激活与 KV 缓存则取决于批大小、生成批大小和是否开启激活检查点：`labkit.ppo` 不开检查点（所以 GPU 配置下它的 micro-batch
# 更小），GRPO 沿用配置里的检查点，每题采 G 个回答。具体大小以表中数字为准。

# %% [markdown]
# ## 第二步：准备策略、参考和奖励模型
#
# 训练题目取 `rl.jsonl` 中难度为 `LEVELS` 的题：SFT 模型在 3 级题上远没有全对（第四步开头量出它的采样准确率），留有提升（和出错）的空间。

# %%
sft_dir = model_path(get_stage("sft", profile))
rm_dir = model_path(get_stage("rm", profile))
tokenizer = load_tokenizer(sft_dir)
rm_tokenizer = load_tokenizer(rm_dir, padding_side="right")
reward_model = load_reward_model(rm_dir, profile, rm_tokenizer)


def rm_score(rows: list[dict], responses: list[str]) -> list[float]:
    """The reward model's score of each response (the PPO reward before shaping)."""
    return score_responses(reward_model, rm_tokenizer, rows, responses, profile.system_prompt,
                           batch_size=profile.eval_batch_size)


policy = load_policy(sft_dir, profile)
config = ppo_config(profile, kl_coef=KL_COEF, vf_coef=VF_COEF, cliprange=CLIPRANGE,
                    num_ppo_epochs=NUM_PPO_EPOCHS, seed=SEED)
train_rows = load_problems(profile.dataset, "rl", levels=LEVELS)
print(config)
print(f"{len(train_rows)} training prompts (levels {LEVELS})")

# %% [markdown]
# ## 第三步：一批数据，亲手走一遍
#
# 刚开始时策略就是 SFT 模型（LoRA 的 B 矩阵初始化为 0）、价值头零初始化，KL 和价值都恰好是 0，比值恰好是 1——
# 对照起来太"平凡"。所以先在 8 道题上做一次 PPO 更新（`demo.update`），再让 `PPOTrainer.rollout` 对另外 8 道题各采一个回答：
# 它返回采样时的对数概率、参考对数概率、价值、分数、塑形奖励和优势。我们用更基础的工具把每一项重新算一遍，逐项对照：
# (a) 对数概率、(b) 标准化分数、(e) 裁剪的策略损失与价值损失在这里亲手算；(c) 奖励塑形和 (d) GAE 先用 `labkit` 的函数，
# 亲手实现留给练习 1、2——它们的检查会拿这批真实回答对照。
# 演示结束后把可训练参数恢复原样，正式训练仍从 SFT 模型开始。

# %%
snapshot = {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}
demo = PPOTrainer(policy, tokenizer, rm_score, config, profile.system_prompt)
demo.update(demo.rollout(train_rows[:8]))          # one warm-up update: KL, values and ratios move
ro = demo.rollout(train_rows[8:16])
mask = ro.response_mask
for row, text, s in list(zip(ro.rows, ro.responses, ro.raw_scores.tolist()))[:3]:
    print(f"gold {row['answer']:>3}  RM {s:5.2f}  {text}")

# (a) log-probs (temperature 1): the policy's, and the reference's (with LoRA: the adapter switched off),
# in the mixed precision labkit.ppo runs them in (autocast to fp16 / bf16 on GPU profiles; none on cpu)
ref_model, ref_context = policy.reference()
with torch.no_grad(), autocast(policy.policy):
    logp = response_logprobs(policy.policy, ro.input_ids, ro.attention_mask, mask)
    with ref_context:
        ref_logp = response_logprobs(ref_model, ro.input_ids, ro.attention_mask, mask)
print("log-probs match:", torch.allclose(logp[mask.bool()], ro.logprobs[mask.bool()], atol=1e-4),
      "| reference log-probs match:", torch.allclose(ref_logp[mask.bool()], ro.ref_logprobs[mask.bool()], atol=1e-4))

# (b) normalized score: (raw - mean) / std, minus the penalty for a response without EOS
scores = (ro.raw_scores - demo.score_mean) / demo.score_std
ended = [ids[m.bool()][-1].item() == tokenizer.eos_token_id for ids, m in zip(ro.input_ids, mask)]
scores = scores - config.missing_eos_penalty * (1 - torch.tensor(ended, dtype=torch.float32))

# (c) reward shaping and (d) GAE with labkit's functions: exercises 1 and 2 ask you to write both
# yourself, and their checks compare your versions with this very rollout
beta = demo.kl_ctl.value
rewards = shape_rewards(scores, logp, ref_logp, mask, beta)[0]
assert torch.allclose(rewards, ro.rewards, atol=1e-4)
advantages, returns = gae(rewards, ro.values, mask, config.gamma, config.lam)
assert torch.allclose(returns, ro.returns, atol=1e-5)
whitened = masked_whiten(advantages, mask)
assert torch.allclose(whitened, ro.advantages, atol=1e-5)

# (e) the losses after one more update on this rollout, so that the ratio rho is no longer 1
demo.update(ro)
idx = torch.arange(len(ro.rows))
with autocast(policy.policy):
    new_logp, new_values, _ = policy(ro.input_ids, ro.attention_mask)
ratio = torch.exp(new_logp - ro.logprobs)
pg = -torch.min(ratio * whitened, ratio.clamp(1 - config.cliprange, 1 + config.cliprange) * whitened)
pg_loss = masked_mean(pg, mask)
vf_loss = value_loss(new_values, ro.values, ro.returns, mask, config.cliprange_value)[0]
labkit_loss, stats = demo.loss(ro, idx)
print(f"policy loss {pg_loss.item():+.5f} (labkit {stats['policy_loss']:+.5f}), "
      f"value loss {vf_loss.item():.5f} (labkit {stats['value_loss']:.5f}), ratio range "
      f"[{ratio[mask.bool()].min().item():.4f}, {ratio[mask.bool()].max().item():.4f}], "
      f"clipped tokens {stats['clip_frac']:.3f}")
assert abs(pg_loss.item() - stats["policy_loss"]) < 1e-5
assert torch.allclose(labkit_loss, pg_loss + config.vf_coef * vf_loss, atol=1e-5)
with torch.no_grad():                               # back to the SFT start for the real run
    for name, p in policy.named_parameters():
        if name in snapshot:
            p.copy_(snapshot[name])
pd.DataFrame({"token": tokenizer.convert_ids_to_tokens(ro.input_ids[0][mask[0].bool()].tolist()),
              "logp": logp[0][mask[0].bool()].numpy().round(3),
              "kl": (logp - ref_logp)[0][mask[0].bool()].numpy().round(3),
              "reward": rewards[0][mask[0].bool()].numpy().round(3),
              "value": ro.values[0][mask[0].bool()].numpy().round(3),
              "advantage": advantages[0][mask[0].bool()].numpy().round(3)}).T

# %% [markdown]
# 上表是第一个回答逐 token 的值：大部分 token 的概率接近 1（对数概率≈0），KL 也≈0；分数只出现在最后一个 token 的奖励里，
# GAE 把它经 $\gamma\lambda$ 逐步衰减、并扣掉价值估计后传回前面的 token。

# %% [markdown]
# ## 第四步：训练
#
# 每一步：对 `rollout_batch_size` 道题各采一个回答 → 打分、塑形、GAE → 在这批数据上做 `num_ppo_epochs` 轮 minibatch 更新。
# 采样前先在留出的同难度题上量一次"起点"：每题采样一个回答，看奖励模型平均分与答案准确率。

# %%
heldout_rows = load_problems(profile.dataset, "eval", levels=LEVELS, limit=profile.eval_limit)


def sample_and_score(model, rows: list[dict], seed: int = 1) -> tuple[float, float, list[str], list[float]]:
    """One sampled response per row (temperature 1): mean RM score, exact-answer accuracy, texts, scores."""
    torch.manual_seed(seed)
    texts = generate(model, tokenizer, [prompt_messages(r, profile.system_prompt) for r in rows],
                     max_new_tokens=profile.max_new_tokens, batch_size=profile.eval_batch_size,
                     do_sample=True, desc="sample")
    scores = rm_score(rows, texts)
    correct = accuracy_reward(texts, answer=[r["answer"] for r in rows])
    return float(np.mean(scores)), float(np.mean(correct)), texts, scores


rm_start, acc_sampled_start, texts_start, scores_start = sample_and_score(policy.policy, heldout_rows)
eval_rows = load_problems(profile.dataset, "eval", limit=profile.eval_limit)
before = evaluate_accuracy(policy.policy, tokenizer, eval_rows, profile, desc="eval before PPO")
print(f"held-out level {LEVELS}: RM score {rm_start:.3f}, sampled accuracy {acc_sampled_start:.3f}; "
      f"greedy accuracy (all levels) {before.accuracy:.3f}")

trainer = PPOTrainer(policy, tokenizer, rm_score, config, profile.system_prompt)
history = trainer.train(train_rows)
print(f"score normalization: mean {trainer.score_mean:.3f}, std {trainer.score_std:.3f} (first rollout)")

# %% [markdown]
# ### 健康训练的三条曲线
# `score` 是奖励模型原始分数；`non_score_reward` 是整条回答的 KL 惩罚 $-\beta\sum_t \mathrm{KL}_t$；
# `total_reward` 是训练真正最大化的量 = 标准化后的分数 + KL 惩罚。曲线做了指数平滑（淡色是原始值）。
# 第二张图里，健康的 PPO 应当是：价值损失下降（价值头在学着预测回报）、裁剪比例和 `approx_kl`（每次更新前后策略的差别）都很小，
# 回答长度稳定。注意 `kl`（相对参考模型、整条回答求和）和 `approx_kl`（相对采样时的策略、每个 token 平均）是两回事。

# %%
fig = plot_metrics(history, ["total_reward", "score", "non_score_reward"], smooth=0.6,
                   title="PPO：总奖励、奖励模型分数与 KL 惩罚 / total reward, RM score, KL penalty")
fig = plot_metrics(history, ["value_loss", "clip_frac", "response_length", "kl", "entropy", "approx_kl"],
                   smooth=0.6, title="PPO：价值损失、裁剪比例、回答长度等 / value loss, clip fraction, length")

# %% [markdown]
# ## 第五步：奖励模型分数 vs 真实正确率
#
# 先在留出题上比较训练前后：同样的 3 级题每题再采样一个回答（奖励模型平均分、精确答案正确率），全部难度的题做一次贪心解码。
# 每个数都是有限样本的估计，所以表里同时给出"变化"和它的标准误（SE，同一批题目上逐题配对相减再求平均的标准误）：
# 变化不到 2 个 SE 的，就不能说它是训练带来的。

# %%
rm_end, acc_sampled_end, texts_after, scores_after = sample_and_score(policy.policy, heldout_rows)
after = evaluate_accuracy(policy.policy, tokenizer, eval_rows, profile, desc="eval after PPO")
kl_start, kl_end = float(np.mean([h["kl"] for h in history[:5]])), float(np.mean([h["kl"] for h in history[-5:]]))
kl_peak_step = int(np.argmax([h["kl"] for h in history])) + 1
kl_blocks = [float(np.mean([h["kl"] for h in history[i:i + 6]])) for i in range(0, len(history), 6)]
print(f"KL per response: first 5 steps {kl_start:.3f}, last 5 steps {kl_end:.3f}, largest at step {kl_peak_step}; "
      f"means of 6-step blocks: {' '.join(f'{k:.3f}' for k in kl_blocks)}")


def paired_change(start: list[float], end: list[float]) -> tuple[float, float]:
    """Mean of end - start over the same questions, and the standard error of that mean."""
    diff = np.asarray(end, dtype=float) - np.asarray(start, dtype=float)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


answers = [r["answer"] for r in heldout_rows]
correct_start, correct_end = accuracy_reward(texts_start, answer=answers), accuracy_reward(texts_after, answer=answers)
print(f"sampled, level {LEVELS}: {int(sum(correct_start))} -> {int(sum(correct_end))} correct of {len(heldout_rows)}; "
      f"greedy, all levels: {int(sum(before.correct))} -> {int(sum(after.correct))} correct of {len(eval_rows)}; "
      f"RM score std over responses {np.std(scores_start):.2f} (before), {np.std(scores_after):.2f} (after)")
comparison = pd.DataFrame(
    {f"held-out RM score (levels {LEVELS}, sampled)": (rm_start, rm_end, *paired_change(scores_start, scores_after)),
     f"held-out accuracy (levels {LEVELS}, sampled)": (acc_sampled_start, acc_sampled_end,
                                                       *paired_change(correct_start, correct_end)),
     "held-out accuracy (all levels, greedy)": (before.accuracy, after.accuracy,
                                                *paired_change(before.correct, after.correct))},
    index=["before PPO", "after PPO", "change", "SE of change"]).T
comparison["change / SE"] = comparison["change"] / comparison["SE of change"]
comparison.round(3)

# %% [markdown]
# 下图把训练时每步采样的奖励模型分数（左轴，实线）和同一批回答的精确答案正确率（右轴，虚线，判分器给出）画在一起。
# 每个点是连续 4 步（4 × 64 = 256 个回答）的平均：训练采样的 RM 分数标准差约 2.3（第四步打印的 score normalization std），
# 256 个回答平均后的 SE 约 0.14；正确率的 SE 约 0.03。两条纵轴是自动缩放的，通常只跨两三个 SE——图上的起伏大多是噪声。
# 如果奖励模型被"钻了空子"，应看到实线持续上升、虚线持续下降，而且幅度远超这些 SE。

# %%
block = 4 if len(history) >= 8 else 1   # a very short run (a smoke test) plots every step
blocks = range(0, len(history) - block + 1, block)
fig = plot_twin([float(np.mean([h["step"] for h in history[i:i + block]])) for i in blocks],
                {"RM 分数 / RM score": [float(np.mean([h["score"] for h in history[i:i + block]])) for i in blocks]},
                {"精确答案正确率 / exact accuracy": [float(np.mean([h["accuracy"] for h in history[i:i + block]]))
                                                   for i in blocks]},
                title="训练采样：奖励模型分数 vs 真实正确率 / training samples: RM score vs exact accuracy",
                xlabel="PPO 步（每点 4 步平均）/ step (mean of 4)", left_label="RM 原始分数 / raw RM score",
                right_label="正确率 / accuracy (0-1)")

# %%
levels = sorted(before.by_level)
n_at_level = {k: sum(r["level"] == k for r in eval_rows) for k in levels}


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n questions."""
    return float(np.sqrt(p * (1 - p) / n))


fig = plot_grouped_bars({f"难度 {k} (n={n_at_level[k]})": {"SFT": before.by_level[k], "PPO": after.by_level[k]}
                         for k in levels},
                        errors={f"难度 {k} (n={n_at_level[k]})": {"SFT": binomial_se(before.by_level[k], n_at_level[k]),
                                                                 "PPO": binomial_se(after.by_level[k], n_at_level[k])}
                                for k in levels},
                        title="PPO 前后留出题贪心准确率 / held-out greedy accuracy before vs after PPO",
                        ylabel="准确率 / accuracy (0-1)", xlabel="题目难度（误差线 = 1 SE）/ level (error bar = 1 SE)")

# %% [markdown]
# 训练后奖励模型打高分、但答案其实错了的回答：

# %%
wrong = [i for i, (r, t) in enumerate(zip(heldout_rows, texts_after))
         if accuracy_reward([t], answer=[r["answer"]])[0] == 0]
top_wrong = sorted(wrong, key=lambda i: -scores_after[i])[:6]
pd.DataFrame({"question": [heldout_rows[i]["question"] for i in top_wrong],
              "gold": [heldout_rows[i]["answer"] for i in top_wrong],
              "response": [texts_after[i] for i in top_wrong],
              "RM score": [round(scores_after[i], 2) for i in top_wrong]})

# %% [markdown]
# **读结果。** 以下判断都以上面本次运行打印的数字为准，并且在我们测过的 6 次运行（3 个种子 × 两套 CPU 内核，
# 范围见 `benchmarks/spread.md`）里都成立：
# - **KL 比开始时大，但不是一路上升**：最后 5 步的平均 KL（每条回答的 KL 之和）在每次运行里都高于最初 5 步
#   （0.34–0.44 对 0.03–0.14）。6 步一段的平均（上面打印）显示它先升、中间会停住甚至回落，最大值出现在哪一步随种子而变。
#   KL 惩罚 `non_score_reward` 跟着变负，但只有约 $\beta\times\mathrm{KL}\approx 0.1\times0.3=0.03$，
#   而标准化后的分数标准差是 1——在这个 KL 系数下，KL 惩罚几乎不影响总奖励。
# - **奖励模型分数没有可测的上升**：留出题上采样回答的平均 RM 分数（表第一行）在 6 次运行里变化 −0.02 到 +0.20，
#   不超过约 2 个 SE（本次见 `change / SE` 一列；留出题上单条回答的分数标准差见上面打印）。训练采样的分数（双轴图的实线）
#   也看不出超出噪声的持续上升。本次的步数和 KL 系数下，PPO 没有把代理奖励明显推上去。
# - **贪心正确率下降，采样正确率没有可测的变化**：全部难度的贪心正确率在每次运行里都下降（0.947 → 0.857–0.917，
#   本次的下降有几个 SE 见表，哪一级降得超出误差线见柱状图）；3 级题上的采样正确率变化在 −0.05 到 +0.04 之间，不到 2 个 SE。
# - **所以这里没有出现**教科书里"代理奖励上升、真实目标下降"的完整**过度优化（reward hacking / over-optimization）**曲线——
#   代理奖励本身就没涨。能看到的是它的前提：策略离开了 SFT 模型（KL 上升），贪心正确率却下降了；而奖励模型有可以被利用的盲区。
#   实验 02 量过，这个奖励模型在"推理里算错一步但前后一致"的回答对上正确回答时只有约 0.56 的准确率（接近瞎猜）；
#   上面那张"高分错答"表里拿高分的，正是这种回答。要看策略会不会真的钻进这个盲区，需要更长的训练（扩展实验 1）。
# - KL 惩罚限制偏离的幅度：练习 3 在 2 倍学习率下测它。
# - 这也是第 14 章讲到 RLVR 与 GRPO 的动机：数学题的答案可以直接验证，用判分器代替奖励模型，就没有这个盲区可钻
#   （实验 05；扩展实验 3 在 PPO 里试这件事）。
#
# 微型模型与微型奖励模型上的现象只说明机制，幅度不代表大模型。
#
# ## 练习
#
# **练习 1**：奖励塑形。给一个回答每个 token 的策略与参考对数概率、KL 系数 β 和奖励模型分数，返回每个 token 的塑形奖励（列表）。

# %% tags=["solution"]
def my_shaped_rewards(logp: list[float], ref_logp: list[float], beta: float, score: float) -> list[float]:
    # TODO: 按理论回顾里的奖励塑形公式，返回每个 token 的奖励
    rewards = [-beta * (lp - rl) for lp, rl in zip(logp, ref_logp)]
    rewards[-1] += score
    return rewards


# %% tags=["check"]
from labkit import exercises


def check_shaped_rewards(fn):
    got = fn([-1.0, -0.5, -2.0], [-1.5, -0.5, -1.0], 0.1, 3.0)
    exercises.check_close("shaped rewards", got, [-0.05, 0.0, 3.1],
                          hint="KL 惩罚在每个 token 上都有，分数只加在最后一个 token 上")
    exercises.check_close("one-token response", fn([-2.0], [-1.0], 0.5, 1.0), [1.5])
    got, want = [], []  # the 8 responses of step 3's rollout, against what PPOTrainer stored
    for b, keep in enumerate(mask.bool()):
        got += fn(logp[b][keep].tolist(), ref_logp[b][keep].tolist(), beta, float(scores[b])) or [None]
        want += ro.rewards[b][keep].tolist()
    exercises.check_close("step-3 rollout (8 responses)", got, want, hint="与 PPOTrainer.rollout 存下的塑形奖励对照")


check_shaped_rewards(my_shaped_rewards)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_shaped_rewards(
    lambda logp, ref, beta, score: [score - beta * (lp - rl) for lp, rl in zip(logp, ref)]))

# %% [markdown]
# **练习 2**：GAE。给一个回答每个 token 的奖励 $r_t$ 和价值 $V_t$，返回优势 $\hat A_t$（列表）。回答结束后 $V=0$。

# %% tags=["solution"]
def my_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    # TODO: 按理论回顾里的 GAE 公式，从最后一个 token 往前算每个 token 的优势
    advantages, next_value, next_adv = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        advantages[t] = next_adv
        next_value = values[t]
    return advantages


# %% tags=["check"]
def check_gae(fn):
    # delta = (-0.1 + 0.2 - 0.5, 0 + 0.4 - 0.2, 1 - 0.4) = (-0.4, 0.2, 0.6)
    exercises.check_close("gae, gamma=1, lam=0.5", fn([-0.1, 0.0, 1.0], [0.5, 0.2, 0.4], 1.0, 0.5),
                          [-0.15, 0.5, 0.6], hint="从最后一个 token 往前算；最后一步的下一个价值是 0")
    exercises.check_close("gae, lam=1 (Monte Carlo)", fn([0.0, 2.0], [1.0, 1.0], 1.0, 1.0), [1.0, 1.0],
                          hint="lam=1 时 A_t = 回报 - V_t")
    got, want = [], []  # the 8 responses of step 3's rollout: labkit's GAE, before whitening
    for b, keep in enumerate(mask.bool()):
        got += fn(ro.rewards[b][keep].tolist(), ro.values[b][keep].tolist(), config.gamma, config.lam) or [None]
        want += advantages[b][keep].tolist()
    exercises.check_close("step-3 rollout (8 responses)", got, want,
                          hint="与 labkit.algorithms.gae 在第三步那批回答上的结果对照")


check_gae(my_gae)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_gae(lambda r, v, gamma, lam: [ri - vi for ri, vi in zip(r, v)]))

# %% [markdown]
# **练习 3（实验）**：KL 惩罚管不管用？设想你嫌训练太慢，把学习率翻倍。下面的 `short_ppo_run(kl_coef)` 从 SFT 模型重新开始
# （新的 LoRA 和价值头），用 2 倍学习率、每步一半的题目跑 10 步 PPO（CPU 上约 15 秒），打印每步的 KL（每条回答的 KL 之和）、
# 最后 3 步的平均 KL 和训练采样的正确率。先看不加 KL 惩罚（`kl_coef=0`）时会怎样：

# %%
def late_kl(run: list[dict]) -> float:
    """Mean summed KL per response over the last 3 steps of a run."""
    return float(np.mean([h["kl"] for h in run[-3:]]))


def short_ppo_run(kl_coef: float, steps: int = 10, seed: int = SEED) -> list[dict]:
    """`steps` PPO steps from the SFT model (fresh LoRA and value head) at twice the profile's learning
    rate and half its rollout batch, with the given KL coefficient; prints the KL per step."""
    torch.manual_seed(seed)
    fresh = load_policy(sft_dir, profile)
    cfg = replace(config, total_steps=steps, learning_rate=2 * config.learning_rate, kl_coef=kl_coef, seed=seed,
                  rollout_batch_size=max(config.mini_batch_size, config.rollout_batch_size // 2))
    run = PPOTrainer(fresh, tokenizer, rm_score, cfg, profile.system_prompt).train(train_rows, desc="short PPO")
    per_step = " ".join(f"{h['kl']:.2f}" for h in run)
    late_acc = float(np.mean([h["accuracy"] for h in run[-3:]]))
    print(f"kl_coef {kl_coef} (learning rate {cfg.learning_rate:g}): KL per step {per_step}; "
          f"last 3 steps: KL {late_kl(run):.2f}, training-sample accuracy {late_acc:.2f}")
    return run


no_penalty_run = short_ppo_run(0.0)

# %% [markdown]
# 没有 KL 惩罚时，KL 在几步之内涨到 1 以上，训练采样的正确率也往下掉（看上面打印的数）。
# **你的任务**：只改 KL 系数 `MY_KL_COEF`，让 `short_ppo_run(MY_KL_COEF)` 最后 3 步的平均 KL 低于 0.8。
# 从默认的 `KL_COEF`（0.1）试起，看打印的 KL 轨迹，再决定往哪个方向改、改多少；单次运行很吵，拿不准就换个 `seed=` 再跑一次。
# 记下你试过的值和结果：KL 惩罚是在采样之后才起作用的（它进入下一次更新的奖励），所以它能拉回漂移，却挡不住一次过大的更新。
# （阈值只在 cpu 配置上测过；GPU 配置上检查只打印结果，由你自己判断。）

# %% tags=["solution"]
# 你的代码：选一个 KL 系数 MY_KL_COEF，运行 my_run = short_ppo_run(MY_KL_COEF)
MY_KL_COEF = 1.0
my_run = short_ppo_run(MY_KL_COEF)


# %% tags=["check"]
def check_kl_budget(run):
    exercises.check_true("short run of 10 steps", run is not None and len(run) == 10,
                         hint="用 short_ppo_run(MY_KL_COEF) 跑满 10 步，把它返回的记录传进来")
    if profile.name != "cpu":
        print(f"KL of the last 3 steps = {late_kl(run):.2f} （GPU 配置没有测过这个阈值：请自己比较这些数）")
        return
    exercises.check_true(f"KL of the last 3 steps = {late_kl(run):.2f} < 0.8", late_kl(run) < 0.8,
                         hint="KL 还太大：KL 系数越大，每个 token 偏离参考模型的惩罚越重")


check_kl_budget(my_run)

# %% tags=["wrong"]
if profile.name == "cpu":   # kl_coef = 0: the policy drifts away
    exercises.expect_failure(lambda: check_kl_budget(no_penalty_run))

# %% [markdown]
# ## 扩展（约 15 分钟）
#
# 每个实验只改参数格里的一两个值，整本重跑（CPU 上约 3 分钟），然后用第五步的表（变化 ± SE）下结论：
# 变化不到 2 个 SE 的，不要说它"升了"或"降了"。
#
# 1. **训练更久，能看到过度优化吗？** 把 `MAX_STEPS` 改为 `108`（3 倍步数，CPU 上多约 3 分钟）。看双轴图：实线（RM 分数）
#    有没有超出噪声的持续上升？虚线（正确率）和表中的贪心正确率是否继续下降？两者同时出现才是"代理奖励上升、真实目标下降"；
#    如果 RM 分数仍然不动，如实写"这个步数和 KL 系数下没有看到"。再看"高分错答"表：高分的错答是不是仍是"推理一致、但算错一步"的样子？
# 2. **KL 系数的两端**：分别用 `KL_COEF = 0.0` 和 `KL_COEF = 0.5` 跑整本，记下最后 5 步的 KL、贪心正确率和它的 SE。
#    练习 3 在 2 倍学习率下看到了 KL 系数的作用；在默认学习率、36 步里，差别可能落在噪声之内——先看 SE 再下结论。
# 3. **把奖励模型换成判分器（PPO 版的 RLVR）**：在第四步的训练格前加一格
#    `def rule_score(rows, responses): return accuracy_reward(responses, answer=[r["answer"] for r in rows])`，
#    并把 `PPOTrainer(policy, tokenizer, rm_score, ...)` 里的 `rm_score` 换成 `rule_score`（留出题的 RM 分数照常用奖励模型量）。
#    比较训练后的贪心正确率和本次运行、和实验 05 的 GRPO。想一想：PPO 每题只采一个回答、靠价值头做基线，
#    GRPO 每题采 G 个回答、用组内平均做基线，哪一个在 0/1 奖励下的优势估计更稳？
# 4. （选做）`LEVELS = (1, 2, 3)`：SFT 模型已经几乎全对的 1、2 级题混进来后，每批里奖励模型能区分好坏的回答还剩多少？
#    看训练曲线上 `score` 的起伏和第一次 rollout 打印的分数标准差。

# %%
metrics.record(rm_score_start=round(rm_start, 4), rm_score_end=round(rm_end, 4), kl_start=round(kl_start, 4),
               kl_end=round(kl_end, 4),
               heldout_acc_before=round(before.accuracy, 4), heldout_acc_after=round(after.accuracy, 4),
               sampled_acc_start=round(acc_sampled_start, 4), sampled_acc_end=round(acc_sampled_end, 4),
               ppo_steps=len(history))
metrics.show()
