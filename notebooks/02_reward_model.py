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
# # 实验 02：奖励模型（Bradley–Terry）
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/02_reward_model.ipynb)
#
# **目标**
# 1. 理解奖励模型如何把"成对偏好"变成一个标量分数（Bradley–Terry 模型）；
# 2. 亲手算出一批偏好对的分数与损失，并与 TRL `RewardTrainer` 的结果对照；
# 3. 用 TRL 在 SFT 模型上训练奖励模型，评估留出偏好对的准确率，看分数分布；
# 4. 在策略模型新采样的回答上，比较奖励模型与"精确答案判分器"何时意见不一——这正是奖励投机（reward hacking）的种子；
# 5. 自己做一个小实验（练习 3）：亲手写一个**错误**回答，让奖励模型给它和正确回答差不多甚至更高的分。
#
# **前置知识**：实验 01（SFT）；交叉熵与 sigmoid。本实验需要 SFT 模型：`labkit` 会自动取用
# SFT 阶段（CPU 配置随课程发布；GPU 配置第一次需要时训练并缓存），所以不必先运行实验 01。
#
# **运行时间**：2 核 CPU 上约 3 分钟（其中训练约 2.5 分钟）。练习和文末的"扩展"约需一节课的其余时间。

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
MAX_STEPS = None      # None: the profile's default for this lab
LEARNING_RATE = None
SAMPLE_QUESTIONS = 150  # held-out questions the SFT policy answers afresh (section 6)
SAMPLES_PER_QUESTION = 4

# %%
from labkit.runtime import setup

profile = setup(PROFILE, lab="rm", seed=SEED, model_id=MODEL_ID, data_dir=DATA_DIR, max_steps=MAX_STEPS,
                learning_rate=LEARNING_RATE,
                time_budget_min=TIME_BUDGET_MIN,
                lab_params=dict(SAMPLE_QUESTIONS=SAMPLE_QUESTIONS, SAMPLES_PER_QUESTION=SAMPLES_PER_QUESTION))

# %% [markdown]
# ## 理论回顾
#
# **Bradley–Terry 模型。** 给定问题 $x$ 和两个回答，人（或规则）标注出更好的 $y_w$ 与更差的 $y_l$。
# 假设每个回答有一个潜在的"好坏分数" $r(x,y)$，且
#
# $$P(y_w \succ y_l \mid x) = \sigma\big(r(x,y_w) - r(x,y_l)\big) = \frac{1}{1+e^{-(r_w - r_l)}} .$$
#
# 奖励模型 $r_\phi$ 用最大似然拟合它，即最小化
#
# $$\mathcal{L}_{\text{BT}}(\phi) = -\,\mathbb{E}_{(x,y_w,y_l)}\Big[\log \sigma\big(r_\phi(x,y_w) - r_\phi(x,y_l)\big)\Big].$$
#
# 只有分数的**差**有意义：给所有分数加同一个常数，损失不变。
#
# **结构。** 奖励模型 = 语言模型主体 + 一个线性"打分头"：把 `问题+回答` 整段送入模型，取**最后一个
# 非填充 token** 的隐藏状态 $h$，输出 $r = w^\top h$（一个数）。我们从 SFT 模型出发（它已经懂题目和格式），
# 把语言模型头换成随机初始化的打分头（`AutoModelForSequenceClassification`，`num_labels=1`）。
# CPU 配置对这个 86 万参数的小模型做全参数微调；GPU 配置用 LoRA。

# %%
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from trl import RewardTrainer

from labkit import metrics
from labkit.algorithms import bradley_terry_loss
from labkit.data import load_problems, prompt_messages
from labkit.evaluate import generate
from labkit.hardware import detect
from labkit.models import autocast, load_model, load_tokenizer
from labkit.plotting import plot_bars, plot_hist, plot_metrics
from labkit.preferences import load_preferences, pair_dataset
from labkit.preflight import preflight
from labkit.reward_model import (load_reward_model, oracle_agreement, pair_accuracy, reward_config,
                                 rm_lora_config, score_responses)
from labkit.rewards import accuracy_reward
from labkit.stages import get_stage, model_path, publish_stage

estimate = preflight(profile, detect(), lab="rm")   # refuses a config that will not fit, on a GPU
print(f"estimated peak memory for this run: {estimate.total_bytes / 2**30:.2f} GiB")
sft_dir = model_path(get_stage("sft", profile))

# %% [markdown]
# ## 第一步：偏好数据
#
# CPU 配置使用 `data/prefs.jsonl`：同一道题，`chosen` 是正确且格式规范的回答，`rejected` 是更差的回答，
# `rejected_kind` 说明它差在哪里（见 `data/README.md`）：
#
# | 类型 | 例子（rejected） | 难点 |
# |---|---|---|
# | `bad_format` | `3+4=7 7`（没有 think 标签） | 表面特征，容易 |
# | `no_reasoning` | `<think></think>4` | 表面特征，容易 |
# | `wrong_final` | `<think>19+3=22</think>24`（推理对，最终答案抄错） | 要比较两个数 |
# | `wrong_step` | `<think>19+3=24</think>24`（算错一步，答案随之错） | 要会验算 |
#
# 最后 200 对留作留出集，训练时不用。GPU 配置使用 profile 中 `pref_dataset` 指定的公开数学偏好数据集。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
train_rows = load_preferences(profile.pref_dataset, "train")
heldout_rows = load_preferences(profile.pref_dataset, "heldout")
print(f"{len(train_rows)} training pairs, {len(heldout_rows)} held-out pairs")
if "rejected_kind" in train_rows[0]:
    print(pd.Series([r["rejected_kind"] for r in train_rows]).value_counts().to_dict())
pd.DataFrame([{k: r.get(k) for k in ("question", "chosen", "rejected", "rejected_kind")}
              for r in train_rows[:4]])

# %% [markdown]
# ## 第二步：从 SFT 模型构造奖励模型，并构造 RewardTrainer
#
# `load_reward_model` 用 `AutoModelForSequenceClassification` 加载 SFT 权重：主体沿用，打分头 `score`
# 是新建的随机矩阵（transformers 会提示它"newly initialized"，这是预期的）。

# %%
tokenizer = load_tokenizer(sft_dir, padding_side="right")
rm = load_reward_model(sft_dir, profile, tokenizer)
print(type(rm).__name__, "score head:", tuple(rm.score.weight.shape))

check_rows = heldout_rows[:8]   # one small batch for the hand calculation below
trainer = RewardTrainer(model=rm, args=reward_config(profile, "outputs/02_reward_model", seed=SEED),
                        train_dataset=pair_dataset(train_rows, profile.system_prompt),
                        eval_dataset=pair_dataset(check_rows, profile.system_prompt),
                        processing_class=tokenizer, peft_config=rm_lora_config(profile))
args = trainer.args
print({k: getattr(args, k) for k in ["max_steps", "per_device_train_batch_size", "learning_rate",
                                     "lr_scheduler_type", "use_cpu", "bf16", "fp16"]})

# %% [markdown]
# ## 第三步：亲手算分数与 Bradley–Terry 损失
#
# TRL 的整理函数把一批 $B$ 个偏好对排成 $2B$ 行：前 $B$ 行是 chosen，后 $B$ 行是 rejected，右侧填充。
# 我们自己：(1) 用聊天模板渲染并分词，核对与 TRL 的 token 一致；(2) 取每行最后一个真实 token 的隐藏状态，
# 乘以打分头得到分数，核对与模型输出一致；(3) 按公式算损失、准确率和平均分差，核对与 `trainer.evaluate()`
# 在同一批数据上报告的 `eval_loss`、`eval_accuracy`、`eval_margin` 一致。
#
# **练习 1**：先写出一批偏好对的 Bradley–Terry 损失（输入是 chosen 与 rejected 的分数向量，输出一个标量），
# 下面的手算就用你的函数，与 TRL 对照。

# %% tags=["solution"]
def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    # TODO: 按"理论回顾"中的 L_BT，返回这批偏好对的平均损失（一个标量张量）
    return -F.logsigmoid(r_chosen - r_rejected).mean()


# %% tags=["check"]
from labkit import exercises


def check_bt_loss(fn):
    r_w, r_l = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 1.0, -3.0])
    exercises.check_close("bt_loss", fn(r_w, r_l), 0.4714222,
                          hint="对照理论回顾的公式：sigmoid 里是谁减谁？别忘了取对数、负号和平均")
    exercises.check_close("bt_loss shifted", fn(r_w + 5, r_l + 5), 0.4714222,
                          hint="给两边加同一个常数，损失应当不变")


check_bt_loss(bt_loss)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_bt_loss(lambda w, l: -F.logsigmoid(l - w).mean()))

# %%
batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(check_rows))])
B = len(check_rows)
for i, row in enumerate(check_rows):
    for side, offset in (("chosen", 0), ("rejected", B)):
        conversation = prompt_messages(row, profile.system_prompt) + [{"role": "assistant", "content": row[side]}]
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
        assert batch["input_ids"][i + offset, :len(ids)].tolist() == ids, f"pair {i} {side}: tokens differ"
print(f"hand-rendered tokens == TRL's for {B} pairs ({2 * B} rows)")

trainer.model.eval()
# With LoRA the trainer holds a PeftModel: get_base_model() is the classifier (LoRA layers still active),
# whose .model is the transformer body and .score the head. GPU profiles run in fp16 / bf16 under autocast.
classifier = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
with torch.no_grad(), autocast(trainer.model):
    hidden = classifier.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    last = batch["attention_mask"].sum(dim=1) - 1                 # index of the last real token (right padding)
    h_last = hidden[torch.arange(2 * B), last]                      # [2B, hidden]
    scores_by_hand = (h_last @ classifier.score.weight.T).squeeze(-1).float()
    scores_model = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1).float()
tolerance = 1e-5 if profile.dtype == "fp32" else 2e-2  # fp16 / bf16 round the head's matmul
assert torch.allclose(scores_by_hand, scores_model, atol=tolerance)
r_w, r_l = scores_by_hand[:B], scores_by_hand[B:]
loss_by_hand = bt_loss(r_w, r_l)                                  # your function (exercise 1)
assert torch.allclose(loss_by_hand, bradley_terry_loss(r_w, r_l), atol=1e-6)   # labkit's version agrees

trl_eval = trainer.evaluate()
print(f"loss      by hand {loss_by_hand.item():.6f}   TRL {trl_eval['eval_loss']:.6f}   (log 2 = {np.log(2):.6f})")
print(f"accuracy  by hand {(r_w > r_l).float().mean().item():.4f}     TRL {trl_eval['eval_accuracy']:.4f}")
print(f"margin    by hand {(r_w - r_l).mean().item():.6f}   TRL {trl_eval['eval_margin']:.6f}")
assert abs(loss_by_hand.item() - trl_eval["eval_loss"]) < max(tolerance, 1e-4)
assert abs((r_w - r_l).mean().item() - trl_eval["eval_margin"]) < max(tolerance, 1e-4)

# %% [markdown]
# 训练前打分头是随机的（初始化的数值很小），分数和分差 $r_w-r_l$ 都接近 0，所以损失在 $\log 2\approx0.69$ 附近：
# 平均分差为正时略低于 $\log 2$，为负时略高（对照上面打印的损失与平均分差）。打分头的随机初始化随 `SEED` 变，
# 我们试过 4 个种子：这一批的初始损失在 0.64–0.73 之间。这一批只有 8 对，准确率只是碰运气。
#
# ## 第四步：训练
#
# 日志中的 `accuracy` 是每个记录区间内训练批次上 $r_w>r_l$ 的比例，`margin` 是平均分差 $r_w-r_l$。

# %%
train_result = trainer.train()
rm_seconds = train_result.metrics["train_runtime"]
fig = plot_metrics(trainer.state.log_history, ["loss", "accuracy", "margin"],
                   title="奖励模型训练曲线 / reward-model training")

# %% [markdown]
# ## 第五步：留出集上的偏好准确率与分数分布

# %%
rm = trainer.model
heldout = pair_accuracy(rm, tokenizer, heldout_rows, profile.system_prompt, batch_size=profile.eval_batch_size)
print(f"held-out pair accuracy: {heldout.accuracy:.3f} on {len(heldout_rows)} pairs")
print("by rejected kind:", {k: round(v, 3) for k, v in heldout.by_group.items()})
metrics.record(**{f"rm_acc_{kind}": round(v, 4) for kind, v in heldout.by_group.items()})
fig = plot_bars({k: v for k, v in heldout.by_group.items()},
                title="留出偏好对准确率（按 rejected 类型）/ held-out pair accuracy by kind",
                ylabel="准确率 (0-1)")

# %%
fig = plot_hist({"chosen": heldout.chosen, "rejected": heldout.rejected},
                title="留出集上的奖励分数分布 / reward scores on held-out pairs", xlabel="奖励分数 r（无单位）")

# %% [markdown]
# **读结果。** 看按类型的准确率：格式类错误（`bad_format`、`no_reasoning`）最容易分辨；
# `wrong_final`（推理与答案不一致）需要模型比较两个数；`wrong_step`（算错一步、答案与推理一致）
# 需要真正验算，小模型在这里最弱。留出集准确率高，并不等于奖励模型"懂数学"——它可能只学到了
# 与好回答相关的表面特征。下一步在策略模型**自己**生成的回答上检验这一点。
#
# ## 第六步：奖励模型 vs 精确答案判分器
#
# 让 SFT 策略模型对留出问题各采样几个回答（温度 1.0），用两种方式打分：
# - **判分器（oracle）**：`labkit.rewards.accuracy_reward`，与标准答案精确比较，对/错；
# - **奖励模型**：一个实数分数。
#
# 对同一道题里"一个对、一个错"的每一对回答，看奖励模型是否给对的更高分：这个比例叫
# **与判分器的一致率**（`rm_oracle_agreement`，0.5 相当于瞎猜）。
#
# 答对的样本远多于答错的，所以直方图画的是**密度**（每组面积为 1），两组的形状才能比较；图例里的 n 是每组的样本数。

# %%
policy = load_model(sft_dir, profile)
policy_tokenizer = load_tokenizer(sft_dir)
questions = load_problems(profile.dataset, "eval", limit=SAMPLE_QUESTIONS)
repeated = [row for row in questions for _ in range(SAMPLES_PER_QUESTION)]
samples = generate(policy, policy_tokenizer, [prompt_messages(r, profile.system_prompt) for r in repeated],
                   max_new_tokens=profile.max_new_tokens, batch_size=profile.eval_batch_size,
                   do_sample=True, temperature=1.0, desc="sample from the SFT policy")
correct = accuracy_reward(samples, answer=[r["answer"] for r in repeated])
fresh = pd.DataFrame({
    "id": [r["id"] for r in repeated], "level": [r["level"] for r in repeated],
    "question": [r["question"] for r in repeated], "gold": [r["answer"] for r in repeated],
    "completion": samples, "correct": correct,
    "rm_score": score_responses(rm, tokenizer, repeated, samples, profile.system_prompt,
                                batch_size=profile.eval_batch_size),
})
agreement, n_pairs = oracle_agreement(fresh["rm_score"].tolist(), correct, fresh["id"].tolist())
print(f"{len(fresh)} samples, oracle accuracy {fresh['correct'].mean():.3f}")
print(f"RM-oracle agreement on {n_pairs} (right, wrong) pairs of the same question: {agreement:.3f}")
right_scores = fresh.loc[fresh.correct == 1, "rm_score"].tolist()
wrong_scores = fresh.loc[fresh.correct == 0, "rm_score"].tolist()
# the two groups differ in size (most samples are right): densities, so each histogram has area 1
fig = plot_hist({"判分器：正确 right": right_scores,
                 "判分器：错误 wrong": wrong_scores}, density=True,
                title="新采样回答的奖励分数（各组归一化）/ RM scores of fresh samples (density)",
                xlabel="奖励分数 r（无单位）")

# %% [markdown]
# 策略模型的错误属于哪一类？按偏好数据的分类给错误回答归类：格式不对（`bad_format` 一类）、
# 答案与推理的最后结果不一致（`wrong_final` 一类）、答案与推理一致但推理里算错了（`wrong_step` 一类）。

#
# 规则写在 `labkit.reward_model.error_kind` 里（实验 07 也用它）：没有 `<think>…</think>` → `bad_format`；
# 推理里没有数字 → `no_reasoning`；最终答案等于推理的最后一个数 → `wrong_step`，否则 → `wrong_final`。

# %%
from labkit.reward_model import error_kind

fresh["kind"] = ["correct" if ok else error_kind(c) for c, ok in zip(fresh["completion"], fresh["correct"])]
fresh.groupby("kind")["rm_score"].agg(["count", "mean"]).round(2)

# %% [markdown]
# 下面列出奖励模型**打分最高的错误回答**：奖励模型喜欢它们，判分器却判错。若之后用这个奖励模型做
# 强化学习（实验 04 的 PPO），策略会被推向这类回答——这就是奖励投机的起点。

# %%
threshold = fresh.loc[fresh.correct == 1, "rm_score"].median()
fooled = fresh[(fresh.correct == 0) & (fresh.rm_score > threshold)]
print(f"wrong answers scored above the median score of right answers: {len(fooled)} of "
      f"{int((fresh.correct == 0).sum())} wrong samples")
fresh[fresh.correct == 0].sort_values("rm_score", ascending=False).head(6)[
    ["question", "gold", "completion", "rm_score"]]

# %% [markdown]
# **读结果。** 对照上面的数字：
# - 奖励模型在留出偏好对上的准确率，明显高于它在新采样回答上与判分器的一致率；
# - 归类表显示策略模型自己的错误主要属于哪一类、奖励模型给各类错误打多少分。若错误多为
#   `wrong_step`（答案与推理一致、推理里算错），它们正是偏好数据里最少、奖励模型最弱的一类：
#   训练分布与策略分布不同，是奖励模型被"钻空子"的根本原因；
# - 打分最高的错误回答说明：只要格式规范、答案与推理一致，奖励模型就可能给高分，不管算得对不对。
#
# 在可验证任务上直接用判分器做奖励（RLVR，实验 05）可以绕开这个问题；实验 04 的 PPO 则会用这个奖励模型，
# 观察策略是否去利用它的漏洞。
#
# ## 第七步：保存为 labkit 阶段
#
# 后面的实验（PPO、测试时计算）通过 `get_stage("rm", profile)` 取奖励模型。CPU 配置的 `rm` 阶段随课程发布
# （同一配方 `labkit.reward_model.train_reward_model`），所以每台机器上的后续实验用的是同一个奖励模型，
# 本 notebook 训练的模型不替换它。GPU 配置下，若本 notebook 用的是阶段的标准配方（没有改步数、学习率等，
# `SEED = 0`），就把刚训练的模型存为该阶段；否则 labkit 会在需要时用同一配方自己训练一个。

# %%
def save_rm(folder):
    rm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


publish_stage("rm", profile, save_rm, {"heldout_pair_acc": heldout.accuracy}, seed=SEED)

# %% [markdown]
# ## 练习
#
# 练习 1 在第三步。

# %% [markdown]
# **练习 2**：Bradley–Terry 模型下，奖励模型认为 chosen 优于 rejected 的**概率**是多少？
# 写出函数，输入两个分数，返回概率 $P(y_w \succ y_l)$。

# %% tags=["solution"]
def preference_probability(r_chosen: float, r_rejected: float) -> float:
    # TODO: 按"理论回顾"中的 Bradley-Terry 模型返回这个概率
    return float(torch.sigmoid(torch.tensor(r_chosen - r_rejected)))


# %% tags=["check"]
def check_preference_probability(fn):
    exercises.check_close("P(2.0 vs 2.0)", fn(2.0, 2.0), 0.5, hint="分数相同，概率是一半")
    exercises.check_close("P(1.0 vs -1.0)", fn(1.0, -1.0), 0.8807971, hint="sigmoid(1 - (-1))")
    exercises.check_close("P(-1.0 vs 1.0)", fn(-1.0, 1.0), 0.1192029)


check_preference_probability(preference_probability)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_preference_probability(lambda w, l: float(torch.sigmoid(torch.tensor(w)))))

# %% [markdown]
# **练习 3（实验）：骗过奖励模型。** 下面这道留出题目有一个正确回答（偏好数据里的 `chosen`）。请写一个**错误**的回答
# `MY_WRONG`（判分器判它错，且有 `<think>…</think>` 推理），让本 notebook 训练的奖励模型给它的分数**不低于正确回答的分数减 1**，
# 即按 Bradley–Terry 模型，奖励模型认为"你的错答比正确回答好"的概率至少 $\sigma(-1)\approx 0.27$
# （一个真懂算术的裁判会给出接近 0 的概率）。
#
# 做法：每写一个候选，就用 `score_responses(rm, tokenizer, [target], [候选], profile.system_prompt)` 打分，看差多少。
# 提示：对照第五步"按类型的准确率"和第六步打分最高的错误回答——奖励模型在哪一类错误上最弱？
# 也试试 `wrong_final` 式的错法（推理对、最后答案抄错），看分数差多少。下面的检查只在 cpu 配置上设了阈值。
# （GPU 配置的 Hub 偏好对没有标准答案，所以改用第六步里 SFT 模型答对的一道题和它的那个回答。）

# %%
if "answer" in heldout_rows[4]:   # the kit's pairs carry the gold answer: a held-out pair and its chosen answer
    target = heldout_rows[4]
else:   # hub pairs have no gold answer: a step-6 question and a sample the SFT policy got right (if any)
    right = fresh[fresh.correct == 1]
    row = next(r for r in questions if r["id"] == (right.id.iloc[0] if len(right) else questions[0]["id"]))
    chosen = right.completion.iloc[0] if len(right) else f"<think>{row['answer']}</think>{row['answer']}"
    target = {**row, "chosen": chosen}
reference_score = score_responses(rm, tokenizer, [target], [target["chosen"]], profile.system_prompt)[0]
print("question:", target["question"], "| gold:", target["answer"])
print(f"right answer: {target['chosen']!r}  RM score {reference_score:.2f}")

# %% tags=["solution"]
# TODO: 写一个错误的回答（带 <think> 推理），让奖励模型给它接近或高于正确回答的分数
MY_WRONG = "<think>16+14=30, 30+28=58, 58+6=65</think>65"


# %% tags=["check"]
def check_fools_rm(completion: str) -> None:
    exercises.check_true("judged wrong", accuracy_reward([completion], answer=[target["answer"]])[0] == 0,
                         hint="判分器认为这个回答是对的：要写一个最终答案错误的回答")
    exercises.check_true("has reasoning", bool(error_kind(completion) in ("wrong_final", "wrong_step")),
                         hint="要有 <think>…</think>，且推理里有算式：没有推理的回答太容易被识破")
    score = score_responses(rm, tokenizer, [target], [completion], profile.system_prompt)[0]
    gap = score - reference_score
    print(f"your wrong answer: RM score {score:.2f}, {gap:+.2f} against the right one; "
          f"P(wrong > right) = {torch.sigmoid(torch.tensor(gap)):.2f}, kind {error_kind(completion)}")
    if profile.name != "cpu":
        print("（GPU 配置没有测过阈值：请自己判断奖励模型有没有被骗）")
        return
    exercises.check_true("fools the RM", gap >= -1.0,
                         hint=f"分数比正确回答低 {-gap:.2f}（要求不低于 1）：换一种错法，哪一类错误奖励模型最难分辨？")


check_fools_rm(MY_WRONG)

# %% tags=["wrong"]
if profile.name == "cpu":   # a wrong final answer after correct reasoning: the RM catches it
    exercises.expect_failure(lambda: check_fools_rm(target["chosen"].rsplit("</think>", 1)[0] + "</think>63"))

# %% [markdown]
# **思考题**（不计分）：如果偏好数据里加入更多 `wrong_step` 类型的对，奖励模型与判分器的一致率会怎样变化？
# 小模型能学会验算吗？把 `MAX_STEPS` 调大试试，并观察 `wrong_step` 一栏。

# %% [markdown]
# ## 扩展（约 15 分钟）
#
# 下面三个实验都没有在本 notebook 里运行过，结论要靠你自己的输出；先想好"多大的差别才算差别"。
# 留出集里每类的对数不多（本次 `wrong_step` 只有 16 对、`wrong_final` 41 对），16 对上的准确率差 0.1 以内只是噪声。
#
# 1. **数据决定奖励模型学到什么。** 只用格式类的偏好对训练一个新的奖励模型：
#    `only_format = [r for r in train_rows if r["rejected_kind"] in ("bad_format", "no_reasoning")]`，照第二步重新
#    `load_reward_model` 并构造 `RewardTrainer`（`train_dataset=pair_dataset(only_format, profile.system_prompt)`，
#    `max_steps=100`，cpu 上约 40 秒），训练后用 `pair_accuracy` 看按类型的准确率。看什么：格式两类应仍接近 1；
#    `wrong_final`、`wrong_step` 两栏是否掉到 0.5 附近（猜）？这说明奖励模型只学到训练数据里**有**的区分。
# 2. **奖励模型当裁判：Best-of-4（实验 07 的预告）。** 第六步每道题有 `SAMPLES_PER_QUESTION` 个样本。
#    `fresh.loc[fresh.groupby("id").rm_score.idxmax(), "correct"].mean()` 是"每题取奖励模型最高分的回答"的正确率；
#    与单个样本的平均正确率（`fresh.correct.mean()`）和"至少一个对"的比例（`fresh.groupby("id").correct.max().mean()`）比较。
#    看什么：奖励模型挑的比随便挑一个好，还是更差？150 道题上，差别小于约 0.05 不要下结论。
# 3. **奖励模型看重什么。** 拿练习 3 的 `target`，用 `score_responses` 给几种改写打分：正确回答去掉 `<think>` 标签、
#    推理里多加一步无用的 `+0`、把最后答案换成错的、把整段推理换成另一道题的推理。看什么：哪种改写分数掉得最多？
#    与第五步按类型的准确率对照——奖励模型对"格式"敏感，对"算得对不对"迟钝，这正是实验 04 里 PPO 可能利用的漏洞。

# %%
metrics.record(rm_heldout_pair_acc=round(heldout.accuracy, 4), rm_oracle_agreement=round(agreement, 4),
               rm_oracle_pairs=n_pairs, fresh_sample_acc=round(float(fresh["correct"].mean()), 4),
               rm_train_seconds=round(rm_seconds, 1))
metrics.show()
