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
# # 实验 01：监督微调（SFT）与 LoRA
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/01_sft.ipynb)
#
# **目标**
# 1. 看懂聊天模板（chat template）如何把一问一答变成一串 token；
# 2. 亲手构造 SFT 的标签掩码（只在助手回复上计算损失），并与 TRL 的结果逐个 token 对照；
# 3. 亲手计算一批数据的 SFT 损失和 LoRA 可训练参数量，再与 TRL / PEFT 对照；
# 4. 用 TRL `SFTTrainer` + LoRA 训练，比较训练前后在留出集上的贪心解码准确率。
#
# **前置知识**：实验 00（环境与硬件配置）；PyTorch 基础；交叉熵。
#
# **运行时间**：2 核 CPU 上约 2 分钟（其中练习 3 的短训练约 20 秒）（基座模型随课程发布在 `data/stages/cpu/base/`，不需要现场训练）。
#
# 本实验的起点是一个"基座模型"（base）：CPU 配置下是本课程自带的微型 Qwen3（参数量见下面的输出），
# 它在 `data/pretrain.jsonl` 上预训练过，会用纯文本解题，但从未见过对话格式和 `<think>` 标签；
# 每台机器拿到的都是同一份权重（文件的 sha256 记录在 `stage.json` 里，加载前逐一校验）；
# GPU 配置下是真实的 Qwen3 模型。SFT 要教会它按课程约定的格式作答：`<think>推理</think>答案`。

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
MAX_STEPS = None      # None: use the profile's default
LEARNING_RATE = None
EVAL_LIMIT = None     # number of held-out problems to evaluate (None: profile default)

# %%
from labkit.runtime import setup

profile = setup(PROFILE, lab="sft", seed=SEED, model_id=MODEL_ID, data_dir=DATA_DIR, max_steps=MAX_STEPS,
                learning_rate=LEARNING_RATE, eval_limit=EVAL_LIMIT,
                time_budget_min=TIME_BUDGET_MIN)

# %% [markdown]
# ## 理论回顾
#
# **SFT 损失。** 一条样本由提示 $x$（用户消息，经聊天模板展开）和回复 $y=(y_1,\dots,y_T)$ 组成。
# 我们只希望模型学会"写回复"，不必学会"复述问题"，所以只在回复 token 上计算负对数似然：
#
# $$\mathcal{L}_{\text{SFT}}(\theta) = -\frac{1}{\sum_t m_t}\sum_{t} m_t \log \pi_\theta(y_t \mid x, y_{<t}),$$
#
# 其中掩码 $m_t=1$ 当且仅当第 $t$ 个 token 属于助手回复（包括结束符 `<|im_end|>`，否则模型学不会停下）。
# 实现上把非回复位置的标签设为 $-100$，PyTorch 的交叉熵会忽略它们。
#
# **LoRA。** 冻结原权重 $W_0\in\mathbb{R}^{d_{out}\times d_{in}}$，只训练低秩增量：
#
# $$W = W_0 + \frac{\alpha}{r} B A,\qquad A\in\mathbb{R}^{r\times d_{in}},\; B\in\mathbb{R}^{d_{out}\times r},\; B \text{ 初始化为 } 0 .$$
#
# 每个被适配的线性层增加多少可训练参数，由 $A$、$B$ 的形状决定（练习 1）；$B=0$ 保证训练开始时模型输出不变。

# %%
import pandas as pd
import torch
from trl import SFTTrainer

from labkit import metrics
from labkit.algorithms import masked_mean, token_logprobs
from labkit.data import load_problems, sft_messages
from labkit.evaluate import evaluate_accuracy
from labkit.hardware import detect
from labkit.models import load_model, load_tokenizer, lora_config
from labkit.plotting import plot_grouped_bars, plot_metrics
from labkit.preflight import preflight
from labkit.sft import sft_config, sft_dataset
from labkit.stages import get_stage, model_path

# Preflight first: on a GPU too small for this profile it raises MemoryBudgetError (with the fix)
# before any weights are loaded. On the CPU profile it only reports the estimate.
estimate = preflight(profile, detect(), lab="sft")
print(f"estimated peak memory for this run: {estimate.total_bytes / 2**30:.2f} GiB")

base_dir = model_path(get_stage("base", profile))
tokenizer = load_tokenizer(base_dir)
model = load_model(base_dir, profile)
print(f"base model: {profile.model_id}, {sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 第一步：聊天模板
#
# 聊天模板把消息列表渲染成一段文本。本课程的微型模型使用与 Qwen 相同的 ChatML 格式；
# 模板中的 `{% generation %}` 标记圈出助手回复，供 TRL 计算"只在助手回复上的损失"。
# 注意分词器把每个数字切成单独的 token（`5`,`3`），这让小模型更容易学会逐位算术。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
train_rows = load_problems(profile.dataset, "sft")
example = sft_messages(train_rows[0], profile.system_prompt)
rendered = tokenizer.apply_chat_template(example, tokenize=False)
print(rendered)
ids = tokenizer.apply_chat_template(example, tokenize=True, return_dict=True)["input_ids"]
print(len(ids), "tokens:", [tokenizer.decode([i]) for i in ids][-24:])

# %% [markdown]
# ## 第二步：训练前的准确率
#
# 在留出集（`data/eval.jsonl`，问题与训练数据不重叠）上做贪心解码。判分用 `labkit.rewards`：
# 取 `</think>` 之后的最后一个数（或 `\boxed{}`），与标准答案做数值等价比较。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
eval_rows = load_problems(profile.dataset, "eval", limit=profile.eval_limit)
before = evaluate_accuracy(model, tokenizer, eval_rows, profile, desc="eval before SFT")
print(f"held-out accuracy before SFT: {before.accuracy:.3f}  (format ok: {before.format_rate:.3f})")
print("by level:", {k: round(v, 3) for k, v in before.by_level.items()})
print("sample completion:", repr(before.completions[0][:120]))

# %% [markdown]
# 基座模型没见过对话格式，几乎不会产生 `<think>...</think>答案` 的回复（看上面的格式正确率），所以准确率很低。
# 它真的不会算吗？用它预训练时见过的纯文本格式（题目 + 换行）提问，再看一次：

# %%
from labkit.evaluate import plain_text_accuracy

if profile.model_id == "tiny":
    base_plain_acc = plain_text_accuracy(model, tokenizer, eval_rows, max_new_tokens=profile.max_new_tokens,
                                         batch_size=profile.eval_batch_size)
    print(f"same base model, plain-text prompt: accuracy {base_plain_acc:.3f} (chat prompt: {before.accuracy:.3f})")
    metrics.record(heldout_acc_base_plain=round(base_plain_acc, 4))

# %% [markdown]
# 在微型模型上，纯文本提问的准确率远高于对话格式：基座"会算"，只是不会按对话格式作答。
# SFT 要解决的正是格式与指令遵循。（GPU 配置的真实基座模型不做这一步对照。）
#
# **t4 配置与"思考"模式。** `Qwen/Qwen3-0.6B` 是带思考模式的对话模型：它的聊天模板默认让模型先在
# `<think>` 里自由推理，推理可能很长。每个配置的生成预算由 `max_new_tokens` 决定（t4 为 256，见上面打印的配置表），
# 不关闭思考（`enable_thinking` 保持默认），系统提示要求"在 `<think>` 里推理、`</think>` 后只给数字"。
# 所以 t4 上"训练前"的准确率同时量了两件事：会不会算，以及能否在预算内收尾给出答案——推理被截断的回答记为错。
# SFT 的训练数据是短推理，看训练后的格式正确率能分辨提升有多少来自"学会收尾"。（这一段描述的是设置；
# 课程尚未在真实 GPU 上测过 t4 的数字。）`24gb` / `80gb` 用的是基座模型 `Qwen3-1.7B-Base`，没有思考习惯，情形与微型模型相同。
#
# ## 第三步：构造 SFTTrainer，并手写标签掩码对照
#
# 先用 `labkit.sft.sft_config` 得到本配置的 `SFTConfig`（关键项：`assistant_only_loss=True`、
# CPU 上 `use_cpu=True, bf16=False`）。构造 trainer 时 TRL 会对数据集分词并生成 `assistant_masks`。

# %%
tokenizer.padding_side = "right"
args = sft_config(profile, output_dir="outputs/01_sft", seed=SEED)
trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(profile),
                     processing_class=tokenizer, peft_config=lora_config(profile))
print({k: getattr(args, k) for k in ["max_steps", "per_device_train_batch_size", "learning_rate",
                                     "assistant_only_loss", "use_cpu", "bf16", "fp16"]})


# %% [markdown]
# 手写版本：把"提示 + 助手头"（`add_generation_prompt=True`）单独分词，它是完整对话分词结果的前缀；
# 前缀之后、直到（包括）助手回复的 `<|im_end|>` 为止的 token 是要学习的部分，其余标签为 $-100$。
#
# 哪些 token 算"助手回复"由聊天模板里的 `{% generation %}` 块决定。微型模型的模板自带这个块，块在 `<|im_end|>` 处结束；
# Qwen3 的官方模板没有这个块，TRL 会换上自己的 Qwen3 训练模板（`trainer.chat_template`），
# 它的块把 `<|im_end|>` 后面的换行也包了进去，所以 GPU 配置下换行也要学。手写版本用同一个模板、同一条规则。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
def labels_by_hand(tokenizer, messages: list[dict], chat_template: str | None = None,
                   newline_after_eos: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = -100 everywhere except the assistant reply (through
    <|im_end|>, and the newline after it when the template's generation block holds it)."""
    render = dict(tokenize=True, return_dict=True, chat_template=chat_template)
    full = tokenizer.apply_chat_template(messages, **render)["input_ids"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, **render)["input_ids"]
    assert full[:len(prompt)] == prompt, "the prompt must be a prefix of the full conversation"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")              # ends every turn of the chat
    end = len(full) - full[::-1].index(im_end) + newline_after_eos      # just after the last <|im_end|> (+ "\n")
    labels = [-100] * len(prompt) + full[len(prompt):end] + [-100] * (len(full) - end)
    return full, labels


# TRL swapped in its own training template only when the tokenizer's had no {% generation %} block.
template = trainer.chat_template
newline_after_eos = template is not None and "<|im_end|>\\n' }}\n        {%- endgeneration" in template
if template is not None:
    print("TRL's training template is in use; it trains the newline after <|im_end|>:", newline_after_eos)
trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
for i in range(4):
    ids_hand, labels_hand = labels_by_hand(tokenizer, sft_messages(train_rows[i], profile.system_prompt),
                                           template, newline_after_eos)
    ids_hand, labels_hand = ids_hand[:args.max_length], labels_hand[:args.max_length]  # TRL truncates too
    n = len(ids_hand)
    assert trl_batch["input_ids"][i, :n].tolist() == ids_hand
    assert trl_batch["labels"][i, :n].tolist() == labels_hand, f"row {i}: masks differ"
print("hand-built labels == TRL labels for 4 rows")
print("learned tokens of row 0:", repr(tokenizer.decode([t for t in labels_hand if t != -100])))

# %% [markdown]
# ## 第四步：手算一批数据的 SFT 损失
#
# 因果语言模型在位置 $t$ 预测第 $t+1$ 个 token，所以 logits 要左移一位与标签对齐。
# 用 `labkit.algorithms.token_logprobs` 取每个标签的对数概率，再对掩码求平均，应与模型自己算出的损失一致。

# %%
with torch.no_grad():
    out = trainer.model(input_ids=trl_batch["input_ids"], attention_mask=trl_batch["attention_mask"],
                        labels=trl_batch["labels"])
    logits, labels = out.logits[:, :-1], trl_batch["labels"][:, 1:]
    mask = labels != -100
    logp = token_logprobs(logits.float(), labels.clamp(min=0))
    loss_by_hand = -masked_mean(logp, mask)
print(f"loss by hand {loss_by_hand.item():.5f}   model loss {out.loss.item():.5f}")
assert torch.allclose(loss_by_hand, out.loss.float(), atol=1e-4)

# %% [markdown]
# ## 第五步：LoRA 参数量
#
# `labkit.memory.lora_params` 只凭模型配置（各投影层的形状）和 LoRA 的秩数出适配器参数量——显存估算用的就是它；
# 它与 PEFT 实际创建的可训练参数量应完全一致。（每层的计数公式留给练习 1。）

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
from labkit.memory import ModelSpec, TrainPlan, lora_params

plan = TrainPlan(model=ModelSpec.from_config(model.config), lora_rank=profile.lora_rank,
                 lora_target_modules=tuple(profile.lora_targets), seq_len=profile.max_length)
lora_from_config = lora_params(plan)                       # counted from the config, no model needed
trainable, total = trainer.model.get_nb_trainable_parameters()
print(f"LoRA parameters from the config (labkit.memory) {lora_from_config:,}; PEFT: {trainable:,} trainable "
      f"of {total:,} ({100 * trainable / total:.1f} %)")
assert lora_from_config == trainable

# %% [markdown]
# ## 第六步：训练
#
# 进度条显示训练步数；日志中的 `loss` 与 `mean_token_accuracy` 都只统计助手回复上的 token。

# %%
train_result = trainer.train()
sft_seconds = train_result.metrics["train_runtime"]
fig = plot_metrics(trainer.state.log_history, ["loss", "token_accuracy"],
                   title="SFT 训练曲线 / SFT training curves")

# %% [markdown]
# ## 第七步：训练后的评估

# %%
sft_model = trainer.model.merge_and_unload() if profile.quant is None else trainer.model
after = evaluate_accuracy(sft_model, tokenizer, eval_rows, profile, desc="eval after SFT")
print(f"held-out accuracy: before {before.accuracy:.3f} -> after {after.accuracy:.3f}")
print(f"format ok:         before {before.format_rate:.3f} -> after {after.format_rate:.3f}")
if profile.model_id == "tiny":
    print(f"for reference, the base model with a plain-text prompt: {base_plain_acc:.3f}")
levels = sorted(after.by_level)
level_sizes = {k: sum(r["level"] == k for r in eval_rows) for k in levels}
models = {"基座 base": before, "SFT": after}
se = lambda p, n: (p * (1 - p) / n) ** 0.5                 # binomial standard error of an accuracy
fig = plot_grouped_bars(
    {f"难度 {k} (n={level_sizes[k]})": {name: r.by_level[k] for name, r in models.items()} for k in levels},
    title="各难度级别的留出集准确率 / held-out greedy accuracy by level", ylabel="准确率 accuracy (0-1)",
    xlabel="难度级别 / level", errors={f"难度 {k} (n={level_sizes[k]})": {name: se(r.by_level[k], level_sizes[k])
                                                                    for name, r in models.items()}
                                      for k in levels})

# %%
samples = pd.DataFrame({
    "question": [r["question"] for r in eval_rows[:6]],
    "gold": [r["answer"] for r in eval_rows[:6]],
    "before SFT": [c[:60] for c in before.completions[:6]],
    "after SFT": [c[:60] for c in after.completions[:6]],
})
samples

# %% [markdown]
# **读结果。** 请对照上面本次运行打印的数字：
# - SFT 主要改变了"如何作答"：格式正确率从接近 0 升到接近 1，准确率随之大幅上升；
# - 把 SFT 后的准确率与基座在纯文本格式下的准确率比较：如果前者更低，说明短短 `max_steps` 步（CPU 配置 100 步）的 LoRA
#   还没有把基座的全部能力迁移到新格式上（可以试试更多步数或更大的学习率，观察变化）；
# - 按难度看（图中误差线是 ±1 个二项标准误），第 1 级（一步运算）最高：在测过的 3 个种子 × 2 种 CPU 上为 0.97–0.99；
#   2、3 级较低（0.92–0.95 与 0.83–0.93），哪一级更低随 `SEED` 而变（见 `benchmarks/spread.md`）——两者的差在误差线之内。
#   第 3 级在温度 1 的**采样**下错得最多（实验 07 按等级的 pass@1：0.72–0.73），这为后面的强化学习实验（实验 05）留出提升空间。
#
# 微型模型上的结论只说明机制，不代表大模型上的幅度。
#
# 后续实验需要 SFT 模型时调用 `get_stage("sft", profile)`：CPU 配置直接用课程发布的 SFT 阶段（用与本实验相同的配方
# `labkit.sft` 训练，所以每台机器上的后续实验都从同一个模型出发）；GPU 配置第一次需要时按同一配方训练并缓存。
# 所以不必先运行本 notebook。
#
# ## 练习
#
# **练习 1**：写出 LoRA 给一个 $d_{in}\times d_{out}$ 线性层增加的可训练参数量。

# %% tags=["solution"]
def lora_extra_params(d_in: int, d_out: int, r: int) -> int:
    # TODO: 返回秩为 r 的 LoRA 增加的参数量
    return r * (d_in + d_out)


# %% tags=["check"]
from labkit import exercises


def check_lora_extra_params(fn):
    exercises.check_equal("lora_extra_params(1024, 2048, 8)", fn(1024, 2048, 8), 24576,
                          hint="A 是 r×d_in，B 是 d_out×r")
    exercises.check_equal("lora_extra_params(128, 128, 16)", fn(128, 128, 16), 4096)


check_lora_extra_params(lora_extra_params)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_lora_extra_params(lambda d_in, d_out, r: d_in * d_out))

# %% [markdown]
# **练习 2**：给定每个位置的对数概率 `logp` 和掩码 `mask`（1 表示助手回复），写出 SFT 损失
# （只在掩码位置上平均负对数似然）。

# %% tags=["solution"]
def sft_loss(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # TODO: 返回 SFT 损失（定义见"理论回顾"）
    return -(logp * mask).sum() / mask.sum()


# %% tags=["check"]
def check_sft_loss(fn):
    logp = torch.tensor([[-0.1, -2.0, -0.5], [-1.0, -0.2, -3.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    exercises.check_close("sft_loss", fn(logp, mask), (2.0 + 0.5 + 3.0) / 3,
                          hint="分母是掩码中 1 的个数，而不是全部 token 数")


check_sft_loss(sft_loss)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_sft_loss(lambda logp, mask: -(logp * mask).mean()))

# %% [markdown]
# **练习 3（实验）**：完整的配方训练 100 步。**最多用 30 步**，能不能让模型学会格式？
# 选一个步数 `MY_STEPS`（≤ 30）和学习率 `MY_LR`，用
# `short_sft_run(profile, base_dir, eval_rows[:100], max_steps=MY_STEPS, learning_rate=MY_LR, seed=SEED)`
# 从基座模型重新训练（约 0.5 秒一步），把结果存为 `my_run`。目标：留出集前 100 题的**格式正确率 ≥ 0.95**。
# 不达标就换一组设置再跑。可以先想一想：学习率太小会怎样？太大呢？（阈值只在 cpu 配置上测过；GPU 配置上检查只打印结果，由你自己判断。）

# %% tags=["solution"]
from labkit.sft import ShortRun, short_sft_run

# TODO: 选择 MY_STEPS 和 MY_LR，运行短训练，结果存为 my_run
MY_STEPS, MY_LR = 30, 1e-2
my_run = short_sft_run(profile, base_dir, eval_rows[:100], max_steps=MY_STEPS, learning_rate=MY_LR, seed=SEED)
print(my_run)


# %% tags=["check"]
def check_short_run(run: ShortRun) -> None:
    exercises.check_true(f"max_steps {run.max_steps} <= 30", run.max_steps <= 30,
                         "最多 30 步 / at most 30 steps")
    if profile.name != "cpu":
        print("（GPU 配置没有测过这个阈值：请自己比较这些数）")
        return
    exercises.check_true(f"format rate {run.format_rate:.2f} >= 0.95", run.format_rate >= 0.95,
                         "试试别的学习率或步数 / try another learning rate or number of steps")


check_short_run(my_run)

# %% tags=["wrong"]
if profile.name == "cpu":   # the full 100-step run above: too many steps
    exercises.expect_failure(lambda: check_short_run(ShortRun(
        max_steps=args.max_steps, learning_rate=args.learning_rate, accuracy=after.accuracy,
        format_rate=after.format_rate, train_seconds=sft_seconds)))

# %% [markdown]
# 再看 `my_run` 的**准确率**，与上面完整训练的准确率比较。课程测过的几次不超过 30 步的短训练（不同种子与学习率），
# 格式正确率大多已到 0.9 以上，准确率却都不到 0.3：模型先学会"怎么答"，"答什么"要更多步数。
# 你的结果也是这样吗？
#
# ## 扩展（约 15 分钟）
#
# 1. **步数与学习率的权衡。** 用 `short_sft_run` 在 `max_steps` 取 20、40、60，`learning_rate` 取 2e-3、5e-3、1e-2
#    时各跑一次（每次 10–30 秒），把准确率和格式正确率记成一张表。看：格式和准确率哪个先饱和？
#    同样步数下学习率越大越好吗？注意只有 100 道题，准确率的标准误约 $\sqrt{p(1-p)/100}\approx 0.05$，
#    换一个 `seed` 再跑一次最好的两组，差别小于两个标准误时不要下结论。
# 2. **只在回复上算损失有多重要？** 在 `labkit.sft.sft_config` 返回的配置上把 `assistant_only_loss` 设为 `False`
#    （在全部 token 上算损失），用与第六步相同的步数训练并评估，与本次的准确率对比。
#    提示：问题中的名字和数字是随机的，模型会把容量花在预测它们上；步数少时差别可能看不出来，如实记录。
# 3. **LoRA 的秩。** 用 `dataclasses.replace(profile, lora_rank=...)` 试秩 2 和 64，重跑第五步的参数量对照和练习 3 的短训练：
#    可训练参数量怎么变？在这个微型模型上，格式和准确率对秩敏感吗？

# %%
metrics.record(heldout_acc_before=round(before.accuracy, 4), heldout_acc_after=round(after.accuracy, 4),
               format_rate_before=round(before.format_rate, 4), format_rate_after=round(after.format_rate, 4),
               **{f"heldout_acc_after_level{k}": round(v, 4) for k, v in after.by_level.items()},
               sft_train_seconds=round(sft_seconds, 1))
metrics.show()
