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
# **运行时间**：2 核 CPU 上约 2 分钟。

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
from labkit.plotting import plot_bars, plot_metrics
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
# 它返回采样时的对数概率、参考对数概率、价值、分数、塑形奖励和优势。我们用更基础的工具把每一项重新算一遍，逐项对照。
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

# (c) reward shaping, token by token
beta = demo.kl_ctl.value
rewards = torch.zeros_like(logp)
for b in range(len(ro.rows)):
    positions = mask[b].nonzero().flatten().tolist()
    for t in positions:
        rewards[b, t] = -beta * (logp[b, t] - ref_logp[b, t])
    rewards[b, positions[-1]] += scores[b]
assert torch.allclose(rewards, ro.rewards, atol=1e-4)
assert torch.allclose(rewards, shape_rewards(scores, logp, ref_logp, mask, beta)[0], atol=1e-4)

# (d) GAE, backwards over each response; V = 0 after the last token
advantages = torch.zeros_like(logp)
for b in range(len(ro.rows)):
    positions = mask[b].nonzero().flatten().tolist()
    next_value, next_adv = 0.0, 0.0
    for t in reversed(positions):
        delta = rewards[b, t] + config.gamma * next_value - ro.values[b, t]
        next_adv = delta + config.gamma * config.lam * next_adv
        advantages[b, t] = next_adv
        next_value = ro.values[b, t]
returns = (advantages + ro.values) * mask
assert torch.allclose(advantages, gae(rewards, ro.values, mask, config.gamma, config.lam)[0], atol=1e-5)
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


rm_start, acc_sampled_start, _, _ = sample_and_score(policy.policy, heldout_rows)
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

# %%
fig = plot_metrics(history, ["total_reward", "score", "non_score_reward"], smooth=0.6,
                   title="PPO：总奖励、奖励模型分数与 KL 惩罚 / total reward, RM score, KL penalty")
fig = plot_metrics(history, ["value_loss", "clip_frac", "response_length", "kl", "entropy", "approx_kl"],
                   smooth=0.6, title="PPO：价值损失、裁剪比例、回答长度等 / value loss, clip fraction, length")

# %% [markdown]
# ## 第五步：奖励模型分数 vs 真实正确率
#
# 同一张图上画训练时每步采样的奖励模型分数与精确答案正确率（`accuracy`，判分器给出）。再在留出题上比较训练前后。

# %%
fig = plot_metrics(history, ["score", "accuracy", "format"], smooth=0.6,
                   title="奖励模型分数与真实正确率 / RM score vs exact-answer accuracy (training samples)")
rm_end, acc_sampled_end, texts_after, scores_after = sample_and_score(policy.policy, heldout_rows)
after = evaluate_accuracy(policy.policy, tokenizer, eval_rows, profile, desc="eval after PPO")
kl_start, kl_end = float(np.mean([h["kl"] for h in history[:5]])), float(np.mean([h["kl"] for h in history[-5:]]))
kl_peak_step = int(np.argmax([h["kl"] for h in history])) + 1
print(f"KL per response: first 5 steps {kl_start:.3f}, last 5 steps {kl_end:.3f}, largest at step {kl_peak_step}")
comparison = pd.DataFrame({"before PPO": [rm_start, acc_sampled_start, before.accuracy],
                           "after PPO": [rm_end, acc_sampled_end, after.accuracy]},
                          index=[f"held-out RM score (levels {LEVELS}, sampled)",
                                 f"held-out accuracy (levels {LEVELS}, sampled)",
                                 "held-out accuracy (all levels, greedy)"]).round(3)
comparison

# %%
levels = sorted(before.by_level)
fig = plot_bars({**{f"L{k} SFT": before.by_level[k] for k in levels},
                 **{f"L{k} PPO": after.by_level[k] for k in levels}},
                title="PPO 前后留出题贪心准确率 / held-out greedy accuracy before vs after PPO",
                ylabel="准确率 (0-1)")

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
# **读结果。** 以下判断都以上面本次运行打印的数字为准（3 个种子 × 两套 CPU 内核的范围见 `benchmarks/spread.md`）：
# - **KL 随训练增长**：最后几步的 KL 明显高于最初几步（上面打印的两个数），KL 惩罚（`non_score_reward`）随之变得更负；
#   KL 曲线不一定单调，最大值出现在哪一步也随种子而变。
# - **奖励模型分数几乎没动**：留出题上采样回答的平均 RM 分数（表第一行）训练前后只差零点几，和分数本身的散布相比很小；
#   3 个种子里有升有降。训练曲线上的 `score` 很吵（每步只有一批 64 个回答），平滑后也看不出稳定的上升。
#   36 步 PPO、这样小的 KL 预算，还不足以把代理奖励推上去。
# - **真实正确率没有跟着变好**：比较表中第二、三行。贪心正确率在我们测过的每次运行里都下降了；采样正确率有升有降。
#   实验 02 已经看到，这个奖励模型分不清"推理里算错一步但前后一致"的回答和正确回答，却会重罚"答案和推理对不上"的回答。
#   PPO 只看得见奖励模型的分数，于是它朝奖励模型喜欢的方向走，而不一定朝答案正确的方向走——上面那张"高分错答"表
#   就是奖励模型的盲区。代理奖励上升、真实目标下降的**奖励模型被利用（reward hacking / over-optimization）**
#   需要更长的训练才看得清；这里能看到的是它的起点：策略离开了 SFT 模型（KL 上升），任务表现却没有变好。
# - KL 惩罚限制了偏离的幅度；增大 `KL_COEF` 会让策略更贴近 SFT 模型（见思考题）。
# - 这也是第 14 章讲到 RLVR 与 GRPO 的动机：数学题的答案可以直接验证，用判分器代替奖励模型，就没有这个盲区可钻
#   （实验 05）。
#
# 微型模型与微型奖励模型上的现象只说明机制，幅度不代表大模型。
#
# ## 练习
#
# **练习 1**：奖励塑形。给一个回答每个 token 的策略与参考对数概率、KL 系数 β 和奖励模型分数，返回每个 token 的塑形奖励（列表）。

# %% tags=["solution"]
def my_shaped_rewards(logp: list[float], ref_logp: list[float], beta: float, score: float) -> list[float]:
    # TODO: 每个 token: -beta * (logp - ref_logp)；最后一个 token 再加上 score
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


check_shaped_rewards(my_shaped_rewards)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_shaped_rewards(
    lambda logp, ref, beta, score: [score - beta * (lp - rl) for lp, rl in zip(logp, ref)]))

# %% [markdown]
# **练习 2**：GAE。给一个回答每个 token 的奖励 $r_t$ 和价值 $V_t$，返回优势 $\hat A_t$（列表）。回答结束后 $V=0$。

# %% tags=["solution"]
def my_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    # TODO: 从后往前：delta = r_t + gamma * V_{t+1} - V_t，A_t = delta + gamma * lam * A_{t+1}
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


check_gae(my_gae)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_gae(lambda r, v, gamma, lam: [ri - vi for ri, vi in zip(r, v)]))

# %% [markdown]
# **思考题**（不计分）：把 `KL_COEF` 改为 `0.5` 重新运行，KL、奖励模型分数和真实正确率分别怎样变化？
# 再把 `LEVELS` 改为 `(1, 2, 3)`：当大部分题目 SFT 模型已经做对时，奖励模型能提供的信号还剩多少？

# %%
metrics.record(rm_score_start=round(rm_start, 4), rm_score_end=round(rm_end, 4), kl_start=round(kl_start, 4),
               kl_end=round(kl_end, 4),
               heldout_acc_before=round(before.accuracy, 4), heldout_acc_after=round(after.accuracy, 4),
               sampled_acc_start=round(acc_sampled_start, 4), sampled_acc_end=round(acc_sampled_end, 4),
               ppo_steps=len(history))
metrics.show()
