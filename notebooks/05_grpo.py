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
# # 实验 05：GRPO——用可验证奖励做强化学习（RLVR）
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/05_grpo.ipynb)
#
# **目标**
# 1. 在一组（同一道题的 G 个回答）上亲手算出 GRPO 的三样东西：组内相对优势、裁剪的目标函数、k3 KL 估计，
#    并与 `labkit.algorithms` 和 TRL `GRPOTrainer` 的数值逐项对照；再在同一组上从 REINFORCE（原始奖励）走到带基线、再到裁剪，
#    比较三种损失与梯度；
# 2. 用 TRL `GRPOTrainer` 从 SFT 模型出发，以 `labkit` 的格式奖励 + 正确率奖励训练；
# 3. 读懂 GRPO 的训练曲线：奖励及其分项、组内奖励标准差、`frac_reward_zero_std`（"信号坍缩"）、回答长度、KL、熵；
# 4. 在留出题目上比较训练前后的正确率，并看几个训练前后的回答。
#
# **前置知识**：实验 01（SFT）；实验 04 的裁剪目标函数有帮助但不是必须。SFT 模型由 `labkit` 自动取用或训练。
#
# **运行时间**：2 核 CPU 上约 4–5 分钟（练习 3 的两次测量约 20 秒）。
#
# **关于 TRL 的私有接口**：第一步为了"拆开"一个训练步，直接调用了 `GRPOTrainer` 的**私有**方法 `_generate_and_score_completions`
# （生成、打分、算优势），并读取私有属性 `_logs`；`labkit.grpo.StepTimer` 包裹的是私有方法 `_generate`、`_calculate_rewards`、
# `_generate_and_score_completions` 和公开的 `training_step`；实验 06 的 `DynamicSamplingGRPOTrainer` 覆盖了 `_generate_and_score_completions`
# 与 `_calculate_rewards`。以下划线开头的名字不属于 TRL 的公开 API，换一个 TRL 版本就可能改名或改变行为。本课程把 TRL 钉在 1.16.0
# （`pyproject.toml`），`tests/test_lab_05_extras.py` 检查这些方法在装好的 TRL 里还在、参数还对得上；`tests/test_api_drift.py`
# 只检查传给 TRL 的关键字参数，不管私有方法。损失的核对用的是公开的 `compute_loss`。

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
MAX_STEPS = None      # GRPO steps; None: the profile's default for this lab
LEARNING_RATE = None
LOSS_TYPE = "grpo"    # TRL's default is "dapo"; lab 06 compares them
BETA = 0.04           # KL coefficient (TRL defaults to 0.0: no KL term, no reference model)
EVAL_SAMPLES = None   # sampled completions per held-out question (pass@1 estimate); None: 8 on cpu, 4 on GPUs
EVAL_LIMIT = None

# %%
from labkit.profiles import notebook_params
from labkit.runtime import setup

profile = setup(PROFILE, lab="grpo", seed=SEED, model_id=MODEL_ID, data_dir=DATA_DIR, max_steps=MAX_STEPS,
                learning_rate=LEARNING_RATE, eval_limit=EVAL_LIMIT,
                time_budget_min=TIME_BUDGET_MIN, lab_params=dict(EVAL_SAMPLES=EVAL_SAMPLES, BETA=BETA))
EVAL_SAMPLES = notebook_params(profile.name, "grpo", EVAL_SAMPLES=EVAL_SAMPLES)["EVAL_SAMPLES"]

# %% [markdown]
# ## 理论回顾
#
# **从 PPO 到 GRPO**：PPO 需要价值函数来估计基线；GRPO 对同一个问题 $q$ 采样一组 $G$ 个回答 $o_1,\dots,o_G$，
# 用组内其他回答的奖励当基线，于是不再需要价值模型。奖励来自规则（答案对不对、格式对不对），不需要奖励模型——
# 这就是 RLVR（可验证奖励的强化学习）。
#
# **组内相对优势**（同一回答的每个 token 共用一个优势）：
# $$\hat A_i=\frac{r_i-\operatorname{mean}(r_1,\dots,r_G)}{\operatorname{std}(r_1,\dots,r_G)+\varepsilon}.$$
# 一组的奖励全相同（全对或全错）时 $\hat A_i=0$：这组题不提供任何梯度，这就是笔记里说的"信号坍缩"，
# TRL 把这种组的比例记为 `frac_reward_zero_std`。
#
# **裁剪的目标函数**（$\rho_{i,t}=\pi_\theta(o_{i,t}\mid q,o_{i,<t})/\pi_{\theta_{\text{old}}}(o_{i,t}\mid q,o_{i,<t})$）：
# $$\mathcal J(\theta)=\frac1G\sum_{i=1}^G\frac1{|o_i|}\sum_{t=1}^{|o_i|}
# \Big[\min\big(\rho_{i,t}\hat A_i,\ \operatorname{clip}(\rho_{i,t},1-\epsilon,1+\epsilon)\hat A_i\big)
# -\beta\,\mathbb D_{\text{KL}}^{(i,t)}\Big].$$
# 先在每个回答内对 token 求平均，再对 $G$ 个回答求平均——这就是 TRL 的 `loss_type="grpo"`。
# **TRL 1.16 的默认值是 `loss_type="dapo"`**（所有 token 一起平均），所以本实验显式写出 `loss_type`；两者的差别是实验 06 的主题。
#
# **k3 KL 估计**（逐 token，$d=\log\pi_{\text{ref}}-\log\pi_\theta$）：$\ \mathbb D_{\text{KL}}\approx e^{d}-d-1\ \ge 0$。
# 它无偏、恒非负、方差小。
#
# **关于 β**：TRL 的默认 `beta=0.0`，即不加 KL 项，也就不需要参考模型（省显存）；DAPO、Dr. GRPO 等后续工作也去掉了它。
# 本实验用 DeepSeekMath 论文的 $\beta=0.04$，好让 TRL 记录 KL 曲线，看清策略离 SFT 模型走了多远。
# 一个细节：TRL 1.16 默认 `use_bias_correction_kl=True`，把每个 token 的 KL 项再乘以比值 $\rho_{i,t}$（DeepSeek-V3.2 的修正，
# 使 KL 的梯度对反向 KL 无偏）。比值为 1 时它的数值与上式相同，梯度则不同；下面手算时照 TRL 的做法乘上 $\rho_{i,t}$。
# CPU 配置做全参数微调，参考模型是 SFT 模型的一份冻结副本；GPU 配置用 LoRA，参考模型就是"关掉适配器"的同一份权重。

# %%
import gc
import math

import numpy as np
import pandas as pd
import torch

from labkit import metrics
from labkit.algorithms import (aggregate_loss, group_advantages, kl_k3, pg_loss_by_kind, policy_gradient_loss,
                               response_logprobs)
from labkit.data import load_problems
from labkit.evaluate import evaluate_accuracy
from labkit.grpo import (GRPO_STAGE_BETA, TRAIN_LEVELS, StepTimer, make_trainer, question_se, reward_setup, rl_dataset,
                         sample_group_correctness, zero_std_share)
from labkit.hardware import detect
from labkit.models import load_model, load_tokenizer, lora_config, save_model
from labkit.plotting import plot_grouped_bars, plot_metrics
from labkit.preflight import preflight
from labkit.stages import get_stage, model_path, publish_stage

sft_dir = model_path(get_stage("sft", profile))
tokenizer = load_tokenizer(sft_dir)
train_set = rl_dataset(profile)
levels = TRAIN_LEVELS.get(profile.dataset)
G = profile.num_generations
print(f"training prompts: {len(train_set)} (levels {levels or 'all'}), G = {G} completions per prompt, "
      f"{profile.rollout_batch_size} prompts per step")
estimate = preflight(profile, detect(), lab="grpo")   # refuses a config that will not fit, on a GPU
print(f"estimated peak memory: {estimate.total_bytes / 2**30:.2f} GiB")

# %% [markdown]
# ## 第一步：在一组回答上亲手算 GRPO
#
# 先建一个 `GRPOTrainer`（不训练），让它对**一道题**采样 $G$ 个回答、打分并算出优势。挑一道组内有对有错的题，
# 否则优势全是 0，没什么可算的。`reward_setup` 给出两个奖励函数与权重：格式奖励（权重 0.5）+ 正确率奖励（权重 1）。

# %%
policy = load_model(sft_dir, profile)
funcs, weights = reward_setup(profile)
print("reward functions:", [f.__name__ for f in funcs], "weights:", weights)
probe = make_trainer("grpo", profile, policy, tokenizer, train_set, "outputs/05_probe", seed=SEED,
                     peft_config=lora_config(profile), beta=BETA or GRPO_STAGE_BETA,
                     loss_type=LOSS_TYPE)
probe.model.train()
torch.manual_seed(SEED)
for index in range(20):
    row = dict(train_set[index])
    batch = probe._generate_and_score_completions([row] * G)   # TRL: generate, score, advantages
    rewards_by_func = {name: list(probe._logs["rewards"][name])[-G:] for name in probe.reward_func_names}
    if len(set(rewards_by_func["accuracy_reward"])) > 1:
        break
completions = tokenizer.batch_decode(batch["completion_ids"], skip_special_tokens=True)
print("question:", row["prompt"][-1]["content"], "| gold answer:", row["answer"])

# %% [markdown]
# **组内相对优势**：按公式用 numpy 算（标准差用无偏估计，即除以 $G-1$，与 TRL 一致），再与 `labkit.algorithms.group_advantages`
# 和 TRL 算出的优势对照。

# %%
r = np.array(rewards_by_func["format_reward"]) * weights[0] + np.array(rewards_by_func["accuracy_reward"]) * weights[1]
adv_by_hand = (r - r.mean()) / (r.std(ddof=1) + 1e-4)
adv_labkit = group_advantages(torch.tensor(r, dtype=torch.float32), G)
adv_trl = batch["advantages"].float().cpu()
pd.DataFrame({"completion": [c[:60] for c in completions], "format": rewards_by_func["format_reward"],
              "accuracy": rewards_by_func["accuracy_reward"], "reward r_i": r, "A by hand": adv_by_hand.round(4),
              "A labkit": adv_labkit.numpy().round(4), "A TRL": adv_trl.numpy().round(4)})

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
assert np.allclose(adv_by_hand, adv_labkit.numpy(), atol=1e-5) and np.allclose(adv_by_hand, adv_trl.numpy(), atol=1e-4)
print("advantages: by hand == labkit == TRL")

# %% [markdown]
# **裁剪的目标函数与 k3 KL**：取这组回答在当前策略下的逐 token 对数概率 $\log\pi_\theta$。
# 每次采样后只更新一次时（TRL 默认 `num_iterations=1`），$\pi_{\theta_{\text{old}}}=\pi_\theta$，比值恒为 1，裁剪永远不起作用。
# 为了看到裁剪，这里把"旧策略"的对数概率人为扰动一下（模拟策略已经更新过几步）。参考模型同理：训练开始时策略就是参考模型，
# TRL 算出的 `ref_per_token_logps` 与 $\log\pi_\theta$ 相同、KL 恰为 0，所以也换成一份扰动过的"参考"。
# 然后分别用手算、`labkit` 和 TRL 的 `compute_loss` 算同一个损失。

# %%
prompt_len = batch["prompt_ids"].shape[1]
input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
response_mask = torch.cat([torch.zeros_like(batch["prompt_mask"]), batch["completion_mask"]], dim=1)
with torch.no_grad():
    logp = response_logprobs(probe.model, input_ids, attention, response_mask)[:, prompt_len:].float()
mask = batch["completion_mask"].float()
gen = torch.Generator().manual_seed(SEED)
old_logp = (logp + 0.3 * torch.randn(logp.shape, generator=gen)) * mask   # a pretend "old" policy
ref_logp = (logp + 0.3 * torch.randn(logp.shape, generator=gen)) * mask   # a pretend reference
same_tolerance = 1e-4 if profile.dtype == "fp32" else 5e-2   # fp16 / bf16 log-probs agree to about 1e-2
print("TRL's reference log-probs equal the policy's at the start:",
      torch.allclose(batch["ref_per_token_logps"].float() * mask, logp * mask, atol=same_tolerance))
eps, beta = 0.2, probe.beta

# by hand, token by token
A = adv_trl.unsqueeze(1)
ratio = torch.exp(logp - old_logp)
surrogate = torch.minimum(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)
d = ref_logp - logp
k3 = torch.exp(d) - d - 1
per_token = -(surrogate - beta * ratio * k3)   # TRL 1.16 weighs the KL term by the ratio (see above)
loss_by_hand = ((per_token * mask).sum(1) / mask.sum(1)).mean()          # mean over tokens, then over G
clipped = ((ratio < 1 - eps) & (A < 0)) | ((ratio > 1 + eps) & (A > 0))

# labkit
pg_loss, stats = policy_gradient_loss(logp, old_logp, adv_trl, mask, clip_low=eps, norm="sequence")
loss_labkit = pg_loss + beta * aggregate_loss(ratio * kl_k3(logp, ref_logp), mask, norm="sequence")

# TRL: the same batch with the pretend old log-probs; eval mode so the loss is not divided for accumulation
probe.model.eval()
with torch.no_grad():
    device = batch["completion_ids"].device
    loss_trl = probe.compute_loss(probe.model, {**batch, "old_per_token_logps": old_logp.to(device),
                                                "ref_per_token_logps": ref_logp.to(device)})
print(f"clipped tokens: {clipped[mask.bool()].float().mean():.3f} (labkit: {stats['clip_frac']:.3f}); "
      f"mean k3 KL per token: {(k3 * mask).sum() / mask.sum():.5f}")
print(f"loss  by hand {loss_by_hand:.6f} | labkit {loss_labkit:.6f} | TRL {float(loss_trl):.6f}")
assert abs(loss_by_hand - loss_labkit) < 1e-5 and abs(float(loss_trl) - float(loss_labkit)) < 1e-4 * max(1, abs(float(loss_trl)))

# %% [markdown]
# **从 REINFORCE 到裁剪**：上面的裁剪目标函数是一步步演变来的。策略梯度定理给出最朴素的估计 REINFORCE：
# 对采样出的回答，逐 token 的损失取 $-r_i\log\pi_\theta(o_{i,t})$，没有比值，样本必须来自当前策略。
# 它的期望梯度是对的，但方差大：本实验的奖励都不小于 0，于是每个被采样的回答（包括答错的）都会被推高概率，只是推多推少的区别。
# 减去一个与该回答无关的基线 $b$（这里取组内平均奖励），损失变为 $-(r_i-b)\log\pi_\theta(o_{i,t})$：期望梯度不变，方差变小，
# 而且一组奖励全相同时梯度恰好为 0——这正是 GRPO 优势的分子。PPO/GRPO 再把 $\log\pi_\theta$ 换成比值 $\rho_{i,t}$ 并加上裁剪，
# 好让同一批样本能安全地多更新几步。
#
# `labkit.algorithms.pg_loss_by_kind` 按名字选这三种损失（`"reinforce"`、`"reinforce_baseline"`、`"clipped"`），
# 同时返回总损失和逐 token 的损失。
# 下面在上面这一组 $G$ 个回答上各算一次，重新前向一遍并对策略参数求梯度（不调用优化器，参数不变）。
# 这里 `clipped` 不传旧策略，即在策略上（$\pi_{\theta_{\text{old}}}=\pi_\theta$，TRL 默认 `num_iterations=1` 时训练就是这样）。

# %%
params = [p for p in probe.model.parameters() if p.requires_grad]


def loss_and_grad(kind, weights):
    """pg_loss_by_kind on this group, backpropagated to the policy: (loss, per-token losses, flat gradient)."""
    probe.model.zero_grad(set_to_none=True)
    live = response_logprobs(probe.model, input_ids, attention, response_mask)[:, prompt_len:].float()
    loss, per_token, _ = pg_loss_by_kind(live, weights.to(live.device), mask, kind, norm="sequence")
    loss.backward()
    grad = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.detach().float().flatten().cpu()
                      for p in params])
    return float(loss.detach()), per_token.detach().cpu(), grad


rewards_t = torch.tensor(r, dtype=torch.float32)
baseline_adv = group_advantages(rewards_t, G, scale_std=False)   # A_i = r_i - mean(r)
per_seq, summary, grads = {}, [], {}
for kind, w in [("reinforce", rewards_t), ("reinforce_baseline", baseline_adv), ("clipped", baseline_adv)]:
    loss, per_token, grads[kind] = loss_and_grad(kind, w)
    per_seq[f"{kind} loss_i"] = ((per_token * mask.cpu()).sum(1) / mask.cpu().sum(1)).numpy().round(4)
    summary.append({"kind": kind, "loss": round(loss, 6), "grad norm": round(float(grads[kind].norm()), 6)})
print(pd.DataFrame(summary).to_string(index=False))
print("negative weights: reinforce", int((rewards_t < 0).sum()), "| reinforce_baseline", int((baseline_adv < 0).sum()))
pd.DataFrame({"reward r_i": r, "A_i = r_i - mean": baseline_adv.numpy().round(4), **per_seq})

# %%
# on-policy the clipped loss has another value but the same gradient as REINFORCE with a baseline
gap = float((grads["clipped"] - grads["reinforce_baseline"]).norm())
scale = float(grads["reinforce_baseline"].norm())   # 0 when every answer of the group got the same reward
print(f"|grad clipped - grad baseline| = {gap:.2e}  (|grad baseline| = {scale:.2e})")
assert gap <= 1e-4 * scale or gap == 0.0
# a group whose rewards are all equal (say every answer right): raw rewards still push, the baseline gives nothing
equal = torch.ones(G)
g_raw = loss_and_grad("reinforce", equal)[2]
g_base = loss_and_grad("reinforce_baseline", group_advantages(equal, G, scale_std=False))[2]
print(f"all rewards 1: grad norm reinforce {float(g_raw.norm()):.6f} | reinforce_baseline {float(g_base.norm()):.6f}")
assert float(g_raw.norm()) > 0 and float(g_base.abs().max()) == 0.0
probe.model.zero_grad(set_to_none=True)

# %% [markdown]
# 读上面的输出：`reinforce` 的权重就是原始奖励，没有一个是负的；减去组均值后，低于平均的回答得到负权重，概率被往下压。
# 在策略上比值恒为 1，`clipped` 的逐 token 损失就是 $-A_i$，按回答平均后损失值为 $-\frac1G\sum_i A_i=0$，与 `reinforce_baseline` 不同，
# 梯度却相同（上面的 assert）：裁剪要到策略更新过、比值离开 1 之后才起作用。最后一行是"信号坍缩"的另一面：
# 奖励全相同的组，没有基线时仍在推高这组回答，有了基线梯度恰为 0。

# %%
del probe, policy, batch
_ = gc.collect()

# %% [markdown]
# ## 第二步：训练前的起点
#
# 起点有没有"提升空间"很关键：SFT 模型在 1、2 级题上已经大多做对（见实验 01 按等级的柱状图、实验 07 按等级的 pass@1），
# RL 几乎没什么可学。所以在 CPU 配置上，
# 训练与评估都只用 **3 级（最难）** 题；GPU 配置用 GSM8K 的全部题目。评估两种正确率：
# 贪心解码（每题一个确定的回答），以及温度 1 采样 `EVAL_SAMPLES` 次的平均正确率（pass@1 的估计；RL 优化的正是采样策略的期望奖励）。

# %%
heldout = load_problems(profile.dataset, "eval", levels=levels, limit=profile.eval_limit)
policy = load_model(sft_dir, profile)
torch.manual_seed(SEED)
greedy_before = evaluate_accuracy(policy, tokenizer, heldout, profile, desc="greedy, before")
sampled_before = evaluate_accuracy(policy, tokenizer, heldout, profile, desc="sampled, before", samples=EVAL_SAMPLES)
print(f"{len(heldout)} held-out questions | greedy acc {greedy_before.accuracy:.3f} | "
      f"sampled acc {sampled_before.accuracy:.3f} (x{EVAL_SAMPLES}) | format {sampled_before.format_rate:.3f}")

# %% [markdown]
# ## 第三步：用 TRL GRPOTrainer 训练
#
# `labkit.grpo.grpo_config` 把 GRPO 论文的选择都显式写出：`loss_type="grpo"`、`scale_rewards="group"`（组内标准差归一化）、
# 对称裁剪 `epsilon=0.2`、温度 1 采样、`num_iterations=1`。每步采 `rollout_batch_size` 道题 × G 个回答。

# %%
trainer = make_trainer("grpo", profile, policy, tokenizer, train_set, "outputs/05_grpo", seed=SEED,
                       peft_config=lora_config(profile), beta=BETA, loss_type=LOSS_TYPE)
args = trainer.args
print({k: getattr(args, k) for k in ("loss_type", "scale_rewards", "beta", "epsilon", "num_generations",
                                     "max_completion_length", "learning_rate", "max_steps",
                                     "per_device_train_batch_size", "gradient_accumulation_steps")})
timer = StepTimer(trainer)   # times generation / scoring / log-probs / update; changes no number
trainer.train()
history = trainer.state.log_history
policy = trainer.model

# %% [markdown]
# **一步的时间花在哪里**：RL 的一步 = 生成 G 个回答 → 打分 → 算旧策略与参考模型的对数概率和优势 → 前向 + 反向 + 优化器更新。

# %%
parts = pd.Series(timer.table())
print(pd.DataFrame({"seconds": parts.round(1), "share": (parts / parts.sum()).round(3)}).to_string())
print(f"slowest part: {parts.idxmax()}")

# %% [markdown]
# ## 第四步：训练曲线
#
# - **reward** 与各分项（第一张图右上：正确率与格式画在同一个 0–1 刻度上）：格式奖励从一开始就接近满分，上升的主要是正确率奖励；
# - **reward_std**：组内奖励的标准差，GRPO 的学习信号就来自它；
# - **frac_reward_zero_std**：全对或全错、优势为 0 的组的比例。题目越被"做熟"，它越高，信号越少——实验 06 的动态采样就是为此而生；
# - 回答长度（纵轴画满整个生成预算，虚线是上限）、KL（离 SFT 模型多远）、熵（策略还有多少随机性）。
# 曲线每步只有 `rollout_batch_size` 道题，噪声大，图中细线是原始值，粗线是平滑后的值。

# %%
fig = plot_metrics(history, ["reward", ("rewards/accuracy_reward/mean", "rewards/format_reward/mean"), "reward_std",
                              "frac_reward_zero_std"], smooth=0.8,
                   title="GRPO 训练：奖励与学习信号 / GRPO training: reward and learning signal", ncols=2)
fig.axes[1].set_title("奖励分项 reward per function")   # accuracy and format on one 0-1 scale
_ = fig.axes[1].set_ylabel("奖励 reward (0-1)")

# %%
fig = plot_metrics(history, ["completion_length", "kl", "entropy"], smooth=0.8,
                   title="GRPO 训练：回答长度、KL 与熵 / GRPO training: length, KL and entropy", ncols=3)
fig.axes[0].set_ylim(0, profile.max_new_tokens * 1.05)   # the whole generation budget: length against its limit
fig.axes[0].axhline(profile.max_new_tokens, color="grey", linestyle=":", label="生成上限 budget")
_ = fig.axes[0].legend(fontsize="small")

# %%
steps = [h for h in history if "reward" in h]
window = max(1, len(steps) // 5)
reward_start = float(np.mean([h["reward"] for h in steps[:window]]))
reward_end = float(np.mean([h["reward"] for h in steps[-window:]]))
zero_std_start = float(np.mean([h["frac_reward_zero_std"] for h in steps[:window]]))
zero_std_end = float(np.mean([h["frac_reward_zero_std"] for h in steps[-window:]]))
kl_end = float(np.mean([h["kl"] for h in steps[-window:]])) if "kl" in steps[-1] else 0.0
format_start = float(np.mean([h["rewards/format_reward/mean"] for h in steps[:window]]))
entropy_start = float(np.mean([h["entropy"] for h in steps[:window]]))
entropy_end = float(np.mean([h["entropy"] for h in steps[-window:]]))
len_start = float(np.mean([h["completions/mean_length"] for h in steps[:window]]))
len_end = float(np.mean([h["completions/mean_length"] for h in steps[-window:]]))
print(f"mean reward over the first / last {window} steps: {reward_start:.3f} -> {reward_end:.3f} "
      f"(format reward at the start: {format_start:.3f} of 1)")
print(f"entropy: {entropy_start:.3f} -> {entropy_end:.3f}; completion length: {len_start:.1f} -> {len_end:.1f} tokens "
      f"(budget {profile.max_new_tokens})")
print(f"frac_reward_zero_std: {zero_std_start:.3f} -> {zero_std_end:.3f}; KL at the end: {kl_end:.4f}")

# %% [markdown]
# ## 第五步：训练后的留出集正确率与回答样例

# %%
torch.manual_seed(SEED)
greedy_after = evaluate_accuracy(policy, tokenizer, heldout, profile, desc="greedy, after")
sampled_after = evaluate_accuracy(policy, tokenizer, heldout, profile, desc="sampled, after", samples=EVAL_SAMPLES)
results = pd.DataFrame({"before (SFT)": [greedy_before.accuracy, sampled_before.accuracy, sampled_before.format_rate],
                        "after GRPO": [greedy_after.accuracy, sampled_after.accuracy, sampled_after.format_rate]},
                       index=["greedy accuracy", f"sampled accuracy (x{EVAL_SAMPLES})", "sampled format rate"])
results.round(3)

# %%
# standard errors with the question as the unit (the EVAL_SAMPLES answers to one question are correlated)
k = max(EVAL_SAMPLES, 1)
se = {("greedy", "SFT"): question_se(greedy_before.correct, 1), ("greedy", "GRPO"): question_se(greedy_after.correct, 1),
      ("sampled", "SFT"): question_se(sampled_before.correct, k), ("sampled", "GRPO"): question_se(sampled_after.correct, k)}
naive = math.sqrt(sampled_before.accuracy * (1 - sampled_before.accuracy) / len(sampled_before.correct))
gain = (np.reshape(sampled_after.correct, (-1, k)).mean(1) - np.reshape(sampled_before.correct, (-1, k)).mean(1))
gain_se = float(gain.std(ddof=1) / math.sqrt(len(gain)))
print("standard errors (per question):", {f"{a}, {b}": round(v, 4) for (a, b), v in se.items()})
print(f"sampled SFT accuracy: SE over questions {se[('sampled', 'SFT')]:.4f} vs {naive:.4f} if all "
      f"{len(sampled_before.correct)} answers were independent")
print(f"sampled accuracy gain {gain.mean():+.3f} +- {gain_se:.3f} (paired by question) = {gain.mean() / gain_se:.1f} SE")
fig = plot_grouped_bars({"贪心 greedy": {"SFT": greedy_before.accuracy, "GRPO": greedy_after.accuracy},
                         f"采样 sampled (x{EVAL_SAMPLES})": {"SFT": sampled_before.accuracy, "GRPO": sampled_after.accuracy}},
                        errors={"贪心 greedy": {m: se[("greedy", m)] for m in ("SFT", "GRPO")},
                                f"采样 sampled (x{EVAL_SAMPLES})": {m: se[("sampled", m)] for m in ("SFT", "GRPO")}},
                        title=f"留出集正确率（{len(heldout)} 题，误差棒 = 按题的标准误）/ Held-out accuracy (+-1 SE)",
                        ylabel="正确率 accuracy", xlabel="解码方式 decoding")

# %%
pd.DataFrame([{"question": q["question"][:50], "gold": q["answer"],
               "SFT sample": sampled_before.completions[i * k][:60], "GRPO sample": sampled_after.completions[i * k][:60]}
              for i, q in enumerate(heldout[:6])])

# %% [markdown]
# **读数**（CPU 配置，以本次输出为准；3 个种子 × 两套 CPU 内核上方向都一样，见 `benchmarks/spread.md`）：
# 采样正确率的提升明显大于贪心正确率的提升。GRPO 主要是把 SFT 策略已经"有时能做对"的题变得"更常做对"——
# 把概率集中到正确的推理路径上（熵下降也说明了这一点），而不是教会模型新的算术。
# `frac_reward_zero_std` 随训练上升：题目被"做熟"后，越来越多的组全对，不再提供信号。
# 在 3 个种子 × 两套 CPU 内核上（`benchmarks/spread.md`），留出集采样正确率都比 SFT 起点高 0.15 以上（`heldout_gain` 为 0.154–0.173）；
# 上面按题配对算出的这个提升的标准误约 0.02，提升是它的 8 倍以上。贪心正确率的提升（0.054–0.077）比柱子上的标准误（约 0.02）大，
# 但比采样正确率的提升小得多：贪心解码本来就挑最可能的回答，SFT 已经"会"的题，贪心早就做对了。
# **标准误为什么按题算**：同一道题的 `EVAL_SAMPLES` 个回答高度相关（会做的题几乎次次做对），把 222 × 8 个回答当成独立的硬币，
# 标准误会被低估（上面打印了两者）。
# **回答长度**几乎不变（上面打印的 `completion length`，远低于生成上限）：这个小世界的题目需要的推理步数是固定的，
# 答对并不需要更长的回答，所以这里看不到推理模型里"越训越长"的现象——那需要更难、步数不定的题和长得多的生成预算。
# **时间**：上面的表显示，这次在 CPU 上的小模型里，一步的大头是更新（前向 + 反向），其次是生成（秒数随机器而变）；在 GPU 上生成通常占大头，
# 所以 GPU 配置在装了 vLLM 时用它来生成（`labkit.grpo.use_vllm`）。
# 这个不到 100 万参数的小模型只走了上面打印的那么多步；GPU 配置（Qwen3 + GSM8K）的效果本课程还没有测过，不要拿这里的幅度去推断。
#
# CPU 配置的 `grpo` 阶段随课程发布（同一配方），实验 07 用的是它；GPU 配置下，若本 notebook 用的是阶段的标准配方
# （默认参数、SEED=0），训练好的策略会存为 `grpo` 阶段，实验 07 直接取用。

# %%
if BETA == GRPO_STAGE_BETA and LOSS_TYPE == "grpo":
    publish_stage("grpo", profile, lambda folder: save_model(policy, tokenizer, folder, sft_dir),
                  {"log_history": history}, seed=SEED)

# %% [markdown]
# ## 练习
#
# **练习 1**：组内相对优势。给一组 G 个奖励，返回每个回答的优势（减组均值，除以无偏标准差加 `eps`）。

# %% tags=["solution"]
def my_group_advantages(rewards: list[float], eps: float = 1e-4) -> list[float]:
    # TODO: 返回每个回答的组内相对优势（公式见"理论回顾"；eps 加在标准差上）
    mean = sum(rewards) / len(rewards)
    std = (sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1)) ** 0.5
    return [(x - mean) / (std + eps) for x in rewards]


# %% tags=["check"]
from labkit import exercises


def check_group_advantages(fn):
    got = fn([1.0, 0.0, 0.0, 1.0])   # mean 0.5, unbiased std = sqrt(1/3)
    exercises.check_close("advantages", got, [0.8658, -0.8658, -0.8658, 0.8658], tol=1e-3,
                          hint="标准差除以 G-1（无偏），不是 G")
    exercises.check_close("all equal: no signal", fn([1.0, 1.0, 1.0]), [0.0, 0.0, 0.0],
                          hint="全对的组优势为 0")


check_group_advantages(my_group_advantages)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_group_advantages(
    lambda r, eps=1e-4: [(x - sum(r) / len(r)) / ((sum((y - sum(r) / len(r)) ** 2 for y in r) / len(r)) ** 0.5 + eps)
                         for x in r]))

# %% [markdown]
# **练习 2**：k3 KL 估计。给一个回答每个 token 在策略和参考模型下的对数概率，返回每个 token 的 k3 估计。

# %% tags=["solution"]
def my_k3(logp: list[float], ref_logp: list[float]) -> list[float]:
    # TODO: 返回每个 token 的 k3 估计（定义见"理论回顾"）
    import math
    return [math.exp(r - p) - (r - p) - 1 for p, r in zip(logp, ref_logp)]


# %% tags=["check"]
def check_k3(fn):
    exercises.check_close("k3", fn([-1.0, -2.0, -0.5], [-1.0, -1.0, -1.5]), [0.0, 0.7183, 0.3679], tol=1e-3,
                          hint="见理论回顾的 k3 定义：先算 d = log pi_ref - log pi；k3 永远 >= 0")


check_k3(my_k3)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_k3(lambda logp, ref: [p - r for p, r in zip(logp, ref)]))

# %% [markdown]
# **练习 3（实验）：采样温度与"信号坍缩"**。训练开始时约三成的组全对或全错（上面的 `frac_reward_zero_std`），这些组不提供梯度。
# 除了换题（实验 06 的动态采样），另一个旋钮是采样温度（TRL 的 `GRPOConfig(temperature=...)`，本实验用 1.0）：温度越高，
# 同一道题的 G 个回答越不一样，但答对的也越少。下面的检查让 SFT 模型（RL 的起点）在 192 道训练题上每题采 G 个回答，测两样东西：
# 零方差组的比例和采样正确率。**找一个温度，使零方差组比例 ≤ 0.2，同时采样正确率 ≥ 0.5。** 先猜，再试几个值
# （每次约 10 秒）。阈值只在 cpu 配置上测过；GPU 配置上检查只打印这两个数：先用 `MY_TEMPERATURE = 1.0` 看起点，再定自己的目标。

# %% tags=["solution"]
# TODO: 把 MY_TEMPERATURE 设成你找到的温度
MY_TEMPERATURE = 1.3

# %% tags=["check"]
signal_rows = load_problems(profile.dataset, "rl", levels=levels, limit=192)
sft_policy = load_model(sft_dir, profile)


def check_temperature(temperature):
    correct = sample_group_correctness(sft_policy, tokenizer, signal_rows, profile, G, temperature=temperature, seed=SEED)
    share, accuracy = zero_std_share(correct), float(correct.mean())
    print(f"temperature {temperature}: zero-std groups {share:.3f}, sampled accuracy {accuracy:.3f} "
          f"({len(signal_rows)} questions x G = {G})")
    if profile.name != "cpu":
        print("（GPU 配置没有测过这个阈值：请自己比较这些数）")
        return
    exercises.check_true("zero-std share <= 0.2", share <= 0.2, hint="温度太低：同一题的回答太像，升高温度")
    exercises.check_true("sampled accuracy >= 0.5", accuracy >= 0.5, hint="温度太高：回答变成噪声，降低温度")


check_temperature(MY_TEMPERATURE)

# %% tags=["wrong"]
if profile.name == "cpu":   # the training temperature: a third of the groups give no signal
    exercises.expect_failure(lambda: check_temperature(1.0))

# %% [markdown]
# 读数：对比上面两行（你的温度，和 `wrong` 单元里训练用的 1.0）：温度升高，零方差组变少（有信号的组多了），采样正确率却下降。
# 再往上多试几个温度，看零方差组是否还会继续减少、回答什么时候开始变成噪声。
# 有信号的组变多，不等于学得更好：策略梯度改进的是"被采样的那个策略"，在高温下学到的是高温策略的改进，评估时温度 1 的策略未必同样受益。
# 这是一个权衡，不是免费的午餐——和动态采样多花的生成一样。

# %% [markdown]
# **思考题**（不计分）：把 `BETA` 改为 `0.0`（TRL 的默认）重新运行：KL 曲线消失，训练变快了多少？正确率呢？
# 把 `LOSS_TYPE` 改为 `"dapo"`：回答长度的曲线有没有变化？（答案见实验 06。）

# %% [markdown]
# ## 扩展（约 15 分钟）
#
# 下面三个实验都只改参数区（`parameters` 格）再整本重跑，在 2 核 CPU 上每次约 4 分钟。先写下预测，再看输出。
#
# 1. **KL 项有没有用**：`BETA = 0.0`（TRL 的默认）。看：KL 曲线消失；`StepTimer` 表里"log-probs + advantages"一行变短
#    （不再需要参考模型的前向）；留出集采样正确率与 `BETA = 0.04` 相比的差，是否超过第五步那样按题配对的标准误（约 0.02）的两倍。
#    在这个 64 步、KL 只有约 0.01 的设置下，预期看不出差别——如实这样写，不要硬说"KL 防止了崩溃"。
# 2. **学习率与"做熟"的速度**：`LEARNING_RATE = 3e-4`（默认 1e-4）。看：`frac_reward_zero_std` 是否更快升高、熵是否更快下降，
#    留出集采样正确率是更高还是更低（与第五步一样，用标准误判断差别是否可信）。再试 `1e-3`，看有没有出现格式奖励下降、回答变乱的迹象。
# 3. **组大小 G 的代价与收益**：参数区设 `MAX_STEPS = 32`，并在第一个代码格的 `setup(...)` 调用里加上 `num_generations=16`：
#    每步生成翻倍、步数减半，总生成量不变。先用练习 3 的检查函数里那一行 `sample_group_correctness(..., 16, ...)` 预测
#    `frac_reward_zero_std` 的起点会比 G = 8 低多少，再看训练曲线、每步时间和留出集正确率怎样变化。结论以你测到的数为准。

# %%
metrics.record(heldout_acc_before=round(sampled_before.accuracy, 4), heldout_acc_after=round(sampled_after.accuracy, 4),
               greedy_acc_before=round(greedy_before.accuracy, 4), greedy_acc_after=round(greedy_after.accuracy, 4),
               reward_start=round(reward_start, 4), reward_end=round(reward_end, 4),
               frac_zero_std_start=round(zero_std_start, 4), frac_zero_std_end=round(zero_std_end, 4),
               kl_end=round(kl_end, 5), format_reward_start=round(format_start, 4),
               entropy_start=round(entropy_start, 4), entropy_end=round(entropy_end, 4), grpo_steps=len(steps),
               len_start=round(len_start, 2), len_end=round(len_end, 2),
               heldout_gain=round(sampled_after.accuracy - sampled_before.accuracy, 4))
metrics.show()
