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
# # 实验 08：工程工具——一个配方，四种引擎；多进程训练；KTO 与 ORPO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/08_tools.ipynb)
#
# **目标**
# 1. 把实验 05 的 GRPO 配方（模型、数据、组大小 G、裁剪、KL、损失聚合、长度、学习率）翻译成四种引擎的写法：
#    TRL 的 `GRPOConfig`、accelerate / DeepSpeed ZeRO 的启动配置、veRL 的 Hydra 覆盖项、OpenRLHF 的命令行，以及 vLLM 的两种用法；
# 2. 用这些引擎**自己的** schema 检查翻译结果（veRL 的配置组合、OpenRLHF 的参数解析器、DeepSpeed 的配置校验），
#    并确认故意拼错的键会被拒绝；
# 3. 在 CPU 上把同一个 GRPO 训练分别用 1 个进程和 2 个进程（DDP，gloo）跑一遍，读回两份日志：两个 rank 都在、同一种子下
#    两条曲线重合，并如实比较耗时；
# 4. 在同一份偏好数据、同样的预算下训练 DPO、KTO、ORPO，用同一把尺子比较它们。
#
# **前置知识**：实验 03（DPO）、实验 05（GRPO）。SFT 模型由 `labkit` 自动取用或训练。
#
# **运行时间**：2 核 CPU 上约 4 分钟（第一次运行还要从 PyPI 装引擎的检查环境，约 30 秒）。

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
MAX_STEPS = None      # None: lab 03's DPO budget, the same for DPO, KTO and ORPO
LEARNING_RATE = None
EVAL_LIMIT = None
DDP_STEPS = 4         # GRPO steps of the single-process and the 2-process run (always the tiny model, on the CPU)
CHECK_ENGINES = True  # build the pinned engines' check environment (PyPI) and validate against their schemas

# %%
from labkit.runtime import setup

profile = setup(PROFILE, lab="tools", seed=SEED, model_id=MODEL_ID, data_dir=DATA_DIR,
                max_steps=MAX_STEPS, learning_rate=LEARNING_RATE, eval_limit=EVAL_LIMIT,
                time_budget_min=TIME_BUDGET_MIN)

# %% [markdown]
# ## 理论回顾
#
# **四种工具各管什么。** 讲义 4.4 的结论可以压成一张表：
#
# | 工具 | 训练后端 | 生成 | 适合 |
# |---|---|---|---|
# | TRL | transformers Trainer + accelerate（DDP / DeepSpeed / FSDP） | `model.generate`，或 vLLM（同卡 colocate / 独立 server） | 单卡到单机多卡：教学、原型、中小模型 |
# | OpenRLHF | DeepSpeed ZeRO，Ray 调度 | vLLM 引擎（Ray actor） | 多卡到多机的 RLHF / GRPO |
# | veRL | FSDP 或 Megatron-LM，Ray 调度 | vLLM / SGLang，训练与推理解耦 | 多机、超大模型（含 MoE）的工业级 GRPO |
#
# 算法是同一个，变的是"谁来生成、谁来训练、参数怎么切"。因此从 TRL 换到别的引擎，最容易出错的不是算法，
# 而是**同一个旋钮在各家叫什么名字**、以及默认值是否相同。
#
# **数据并行（DDP）。** $N$ 个进程各持一份完整模型，各算全局批的 $1/N$，反向传播后对梯度做 all-reduce 取平均：
#
# $$g = \frac{1}{N}\sum_{r=1}^{N} g_r,\qquad \text{全局批} = \text{每卡批} \times \text{梯度累积步数} \times N.$$
#
# 只要每个 rank 的损失是自己那一份的平均、且各份大小相同，$g$ 就等于单进程在整批上的梯度——所以同一种子、同一全局批，
# 单进程与 DDP 应当算出同一条曲线（差别只在浮点求和顺序）。
#
# **ZeRO 省的是什么。** 混合精度 + Adam 训练时，每个参数大约要 2 字节权重、2 字节梯度、12 字节优化器状态
# （fp32 主权重 + 两个动量）。记参数量为 $\Psi$，$N$ 张卡时每张卡约需：
#
# $$\text{DDP: } 16\Psi,\quad \text{ZeRO-1: } 4\Psi + \tfrac{12\Psi}{N},\quad \text{ZeRO-2: } 2\Psi + \tfrac{14\Psi}{N},\quad
# \text{ZeRO-3: } \tfrac{16\Psi}{N}.$$
#
# 代价是通信：ZeRO-3 每次前向、反向都要临时收集被切开的参数。
#
# **vLLM 的两种用法（TRL）。** `vllm_mode="colocate"`：vLLM 与训练进程共用一张卡，按 `vllm_gpu_memory_utilization` 分显存，
# 每步把新权重直接写进引擎；`vllm_mode="server"`：另起一个进程（`trl vllm-serve` / `vllm serve`）占用单独的卡，训练进程把权重推过去。
# GRPO 的大部分时间花在生成上，所以大规模训练几乎都用 vLLM 生成。

# %%
# NBVAL_CHECK_OUTPUT  (nbval compares this cell's output with the committed one)
import time
from pathlib import Path

import pandas as pd

from labkit import ddp, engines, metrics
from labkit.hardware import detect
from labkit.kto_orpo import compare as compare_methods
from labkit.plotting import plot_bars, plot_curves
from labkit.preflight import preflight
from labkit.profiles import get_profile

# The recipe lab 05 trains with, on this profile (its own GRPO sizes: lab "grpo"). The cpu profile trains
# in fp32, which OpenRLHF cannot express (it trains in bf16 or fp16): its translation uses bf16.
grpo_profile = get_profile(profile.name, lab="grpo", model_id=MODEL_ID)
recipe = engines.recipe_from_profile(grpo_profile, **({"precision": "bf16"} if grpo_profile.dtype == "fp32" else {}))
print(recipe)

# %% [markdown]
# ## 第一步：一个配方，四种引擎
#
# `labkit.engines.KNOBS` 是一张表：每一行是配方里的一个旋钮，以及它在 TRL、veRL、OpenRLHF 里的名字。
# 下面按这张表把实验 05 的配方翻译成三种写法，并排放在一起。`n/a` 表示那个引擎表达不了这个值（不会悄悄换成近似的值）。

# %%
pd.set_option("display.max_colwidth", 80)
pd.DataFrame(engines.side_by_side(recipe)).set_index("knob")

# %% [markdown]
# 几个值得注意的差别（都来自各引擎锁定版本的源码，`labkit/engines.py` 里有出处）：
# - **组大小** $G$：TRL 叫 `num_generations`，veRL 叫 `actor_rollout_ref.rollout.n`，OpenRLHF 叫 `--rollout.n_samples_per_prompt`；
# - **每步多少道题**：TRL 只说每步生成多少个回答（`generation_batch_size` = 题数 × $G$），veRL 和 OpenRLHF 直接写题数；
# - **KL**：TRL 的 `beta` 只有 k3 一种估计；veRL 要同时打开 `use_kl_loss` 并选 `kl_loss_type`（k3 叫 `low_var_kl`），
#   OpenRLHF 的 KL 系数默认是 0.01 而不是 0；
# - **损失聚合**：TRL 的 `loss_type`（`grpo` / `dapo` / `dr_grpo`）对应 veRL 的 `loss_agg_mode`
#   （`seq-mean-token-mean` / `token-mean` / `seq-mean-token-sum-norm`，Dr. GRPO 还要设 `loss_scale_factor`）；
#   OpenRLHF 0.11.2 没有 Dr. GRPO 的聚合方式。
#
# 下面是同一个配方的 veRL 与 OpenRLHF 启动命令，以及 TRL 用 accelerate 启动 2 进程 DDP、用 DeepSpeed ZeRO-3 的写法：

# %%
def show_command(title: str, command: list[str]) -> None:
    print(f"# {title}\n" + " \\\n    ".join(command) + "\n")


show_command("veRL", engines.verl_command(recipe))
show_command("OpenRLHF", engines.openrlhf_command(recipe))
show_command("TRL + accelerate, 2-process DDP", engines.accelerate_command("train_grpo.py", 2))
show_command("TRL + accelerate + DeepSpeed ZeRO-3", engines.accelerate_command("train_grpo.py", 2, "zero3.yaml"))
zero3 = engines.deepspeed_config(3, recipe)
print("zero3 DeepSpeed config:", {k: zero3[k] for k in ("zero_optimization", "bf16", "fp16") if k in zero3})
for mode in ("colocate", "server"):
    vllm = engines.vllm_settings(recipe, mode)
    print(f"vLLM {mode}: GRPOConfig(**{vllm.grpo_kwargs})")
    if vllm.serve_command:
        show_command("... after starting the vLLM server", vllm.serve_command)

# %% [markdown]
# ## 第二步：用引擎自己的 schema 检查翻译
#
# 名字写错是最常见的错误，而有的引擎不会报错：DeepSpeed 会忽略不认识的顶层键，OpenRLHF 的参数解析器默认接受前缀缩写
# （`--rollout.n_samples 8` 会被悄悄当成 `--rollout.n_samples_per_prompt`）。所以这里不靠眼睛对，而是让引擎自己检查：
# - **veRL 0.9.1**：用 Hydra 把覆盖项组合进 veRL 包里自带的 `ppo_trainer.yaml`，读回每个值；
# - **OpenRLHF 0.11.2**：运行 `train_ppo_ray.py` 自己的参数解析（关闭前缀缩写），读回每个参数；
# - **DeepSpeed 0.19.8**：把 ZeRO-2 / ZeRO-3 配置交给 transformers 填好 `auto` 值，再由 DeepSpeed 自己的 `DeepSpeedConfig` 校验。
#
# 每项检查还会故意拼错一个键或参数，必须被拒绝——否则这项检查什么也证明不了。
# 这三个引擎与课程环境的依赖冲突（例如 veRL 要求 transformers < 5.11），所以 `labkit.engine_checks` 从 PyPI
# 把它们按锁定版本、不带依赖地装进缓存里单独的目录（`requirements/engines.txt`），只读它们的配置与源码，不在这里运行训练。

# %%
engine_results = {}
if CHECK_ENGINES:
    from labkit.engine_checks import check_all

    start = time.perf_counter()
    engine_results = {check.metric: check for check in check_all(recipe).values()}
    for check in engine_results.values():
        print(check)
    print(f"({time.perf_counter() - start:.0f} s; the first run on a machine also builds the check environment)")
else:
    print("CHECK_ENGINES = False: skipped (python -m labkit.engine_checks runs the same checks)")

# %% [markdown]
# ## 第三步：同一个 GRPO 训练，1 个进程 vs 2 个进程（DDP）
#
# `labkit.ddp` 在 CPU 上用微型模型（不论本 notebook 用哪个配置）跑 `DDP_STEPS` 步 GRPO：同一全局批（4 道题 × $G=4$ = 16 个回答，
# 不做梯度累积），单进程每步处理 16 个回答，DDP 的两个 rank 各处理 8 个。启动命令就是上面那条
# `accelerate launch --multi_gpu --num_processes 2 ...`。**一个陷阱**：`accelerate launch --cpu --num_processes 2` 只会启动**一个**进程，
# 而且不报错；所以每个 rank 都把自己的 rank、world size 和进程号写进日志，`labkit.ddp` 读回来核对。
#
# 要让两次运行可比，还差一件事：TRL 给每个 rank 设不同的随机种子（`seed + rank`），两边采样出的回答本来就不同，
# 曲线不可能重合。`labkit.ddp` 让每组的 $G$ 个回答从"种子、步数、题目"决定的随机数生成器里采样（温度仍为 1），
# 于是一道题无论落在哪个 rank 上，采出的回答都一样。（做法是子类化 `GRPOTrainer`、改写它的内部方法
# `_generate_single_turn`：这是 TRL 1.16 的私有接口，升级 TRL 时可能要跟着改；`tests/test_ddp.py` 检查它还在。）
# 两个运行同时启动，各自计时。

# %%
import tempfile
from concurrent.futures import ThreadPoolExecutor

out = Path(tempfile.mkdtemp(prefix="labkit-08_tools-"))   # the runs' logs (a fresh folder: runs never mix)
with ThreadPoolExecutor(2) as pool:
    single_future = pool.submit(ddp.run_single, out / "single", DDP_STEPS, SEED)
    ddp_future = pool.submit(ddp.run_ddp, out / "ddp", DDP_STEPS, SEED, num_processes=2)
    single, multi = single_future.result(), ddp_future.result()
for name, run in (("single", single), ("DDP", multi)):
    print(f"{name:6s} world_size={run.world_size} ranks={run.ranks} backends={run.backends} "
          f"distinct pids={len(set(run.pids))} wall={run.seconds:.1f} s")
match = ddp.compare(single, multi)
pd.DataFrame({"step": [s["step"] for s in single.steps],
              "loss single": single.losses, "loss DDP": multi.losses,
              "grad_norm single": single.series("grad_norm"), "grad_norm DDP": multi.series("grad_norm"),
              "reward single": single.series("reward"), "reward DDP": multi.series("reward"),
              "same completions": [a == b for a, b in zip(single.series("completions_sha"),
                                                          multi.series("completions_sha"))]})

# %%
steps = [s["step"] for s in single.steps]
plot_curves({"梯度范数 grad_norm（DDP 为 all-reduce 之后）": {"1 个进程": (steps, single.series("grad_norm")),
                                                    "2 个进程 DDP": (steps, multi.series("grad_norm"))},
             "平均奖励 reward": {"1 个进程": (steps, single.series("reward")),
                             "2 个进程 DDP": (steps, multi.series("reward"))}},
            title="同一种子、同一全局批：单进程与 DDP 的训练曲线 / one seed, one global batch: 1 process vs DDP",
            xlabel="训练步 step", ylabel="每步的值",
            dashed=["2 个进程 DDP"], ncols=2);
print({k: (f"{v:.2e}" if isinstance(v, float) and k.endswith("diff") else v) for k, v in match.items()})
# the checks (CI runs them here): two gloo ranks in two processes, the same samples, float-rounding differences only
assert multi.world_size == 2 and multi.ranks == [0, 1] and multi.backends == ["gloo", "gloo"]
assert len(set(multi.pids)) == 2 and single.pids[0] not in multi.pids
assert match["same_completions"] == match["steps"] and match["reward_max_diff"] == 0.0
assert match["ddp_loss_max_diff"] <= 1e-5 and match["grad_norm_max_rel_diff"] <= 1e-4

# %% [markdown]
# **读结果。** DDP 这一行 world size 为 2、两个 rank、两个不同的进程号：确实是两个进程在训练。每一步两边采出的回答完全相同
# （表的最后一列），奖励相同，损失与梯度范数只差浮点求和顺序带来的舍入误差（上面打印的 `ddp_loss_max_diff` 与
# `grad_norm_max_rel_diff`，虚线与实线重合）。注意 GRPO 记录的 loss 是个弱证据：在策略上（`num_iterations=1`）比值为 1、
# 一组优势之和为 0，loss 只剩 $\beta\cdot$KL，第一步恰为 0；所以这里同时比较了梯度范数和回答本身。
#
# **耗时要如实读。** 上面两个 wall 时间大半是每个进程导入 torch / transformers / TRL 的启动开销；两个运行同时启动、
# 抢同几个 CPU 核，而模型只有几十万参数。所以这两个数**不是** DDP 的加速比，不能据此说 DDP 快或慢。
# DDP 在 GPU 上换来的是：每张卡只算 $1/N$ 的回答（生成与训练都按卡数并行），通信只有每步一次梯度 all-reduce；
# 再配合 ZeRO 把优化器状态、梯度、参数切到各卡上，单卡放不下的模型也能训练。
# 这些只有在真正的多卡机器上才能测出来，本实验只能验证"同一配方、同一结果"这一半。

# %% [markdown]
# ## 第四步：KTO 与 ORPO，和 DPO 放在一起
#
# 讲义里 TRL 的另外两个偏好训练器，都从 SFT 模型出发，预算与实验 03 的 DPO 相同（同样的步数、学习率、每步 16 对偏好）：
# - **KTO** 不需要成对数据：每条样本只是"（提示，回答，好 / 不好）"。它把隐式奖励 $r=\log\frac{\pi_\theta}{\pi_{\text{ref}}}$
#   与一个参考点 $z_0$（批内 KL 的估计）比较，好回答的损失 $1-\sigma\big(\beta(r-z_0)\big)$，坏回答的损失 $1-\sigma\big(\beta(z_0-r)\big)$。
#   这里把每一对拆成一条好样本、一条坏样本。
# - **ORPO** 不需要参考模型：在选中回答上的 SFT 损失之外，加一项比较两个回答"几率"（odds）的项，
#   $\mathcal{L}=\mathcal{L}_{\text{SFT}} - \lambda\log\sigma\Big(\log\frac{\text{odds}(y_w)}{\text{odds}(y_l)}\Big)$，
#   $\text{odds}(y)=\frac{p(y)}{1-p(y)}$，$p$ 是回答逐 token 概率的几何平均。它在 TRL 1.16 里位于 `trl.experimental`。
#
# **同一把尺子。** 三种方法都用实验 03 的留出偏好准确率：与 SFT 模型（关掉 LoRA 适配器）相比，策略给选中回答增加的对数概率
# 是否严格大于给被拒回答增加的（`vs_ref`，平局算错）。再附一个不看参考模型的量：策略自己给选中回答的对数概率是否更高（`policy_sum`）。
# 最后一列是留出题目上的贪心准确率：偏好学到了，任务能力还在不在。

# %%
estimate = preflight(profile, detect(), lab="dpo")   # as DPO: 2 x batch_size sequences per step; refuses on a GPU
print(f"estimated peak memory per method: {estimate.total_bytes / 2**30:.2f} GiB")
rows = compare_methods(profile, seed=SEED, output_root=out / "preferences")
methods = pd.DataFrame(rows).set_index("method")
methods

# %%
plot_bars({m: methods.loc[m, "vs_ref"] for m in ("dpo", "kto", "orpo")},
          title="留出偏好准确率（相对 SFT 模型的隐式奖励，同一预算）/ held-out preference accuracy vs the SFT model",
          ylabel="准确率 accuracy (0-1)");

# %% [markdown]
# **读结果**（以上面的表为准）：
# - DPO 与 KTO 的 `vs_ref` 都很高：KTO 没见过成对的数据，只知道每条回答"好"或"不好"，学到的偏好方向与 DPO 一致。
# - ORPO 的 `vs_ref` 低，但 `policy_sum` 仍接近 1：ORPO 的 SFT 项把两个回答的对数概率都往上推，而被拒回答在 SFT 模型下
#   本来就很不可能，上升空间更大，涨得比选中回答多——所以"相对参考模型"的尺子对 ORPO 不公平，它从不看参考模型。
#   这提醒我们：**比较不同方法时，先问清楚尺子量的是什么**。
# - 贪心准确率一列说明了另一件事：同样的学习率下，三种方法对任务能力的伤害并不一样（实验 03 已经看到，这个学习率对 DPO 偏大）。
#   微型模型上的数字只说明机制；换一个学习率，排序可能不同（见思考题）。

# %% [markdown]
# ## 第五步（GPU）：用 vLLM 生成
#
# GRPO 的大部分时间花在生成上。GPU 配置下，如果装了 TRL 支持的 vLLM，`GRPOConfig(use_vllm=True, vllm_mode="colocate")`
# 就让训练进程里的 vLLM 代替 `model.generate`。下面这格在 GPU 上比较两者每秒生成的 token 数；CPU 上没有受支持的 vLLM，
# 它只说明原因。

# %%
import importlib.util

if profile.device != "cuda":
    print("cpu profile: vLLM has no supported CPU build for this stack (its wheels are CUDA builds pinning other "
          "torch / transformers versions), so there is nothing to measure here.")
elif importlib.util.find_spec("vllm") is None:
    print("vLLM is not installed in this environment. To try it: pip install a vLLM release TRL 1.16 supports "
          "(see labkit.grpo), then GRPOConfig(**engines.vllm_settings(recipe, 'colocate').grpo_kwargs).")
else:
    from labkit.stages import get_stage, model_path
    from labkit.vllm_speed import vllm_vs_generate

    speed = vllm_vs_generate(profile, model_path(get_stage("sft", profile)))
    print(speed)

# %% [markdown]
# ## 练习
#
# **练习 1**：把一个 TRL 配置翻译成 veRL 的 Hydra 覆盖项。一位同学在 2 张卡上用 TRL 训练 Dr. GRPO：
#
# ```python
# GRPOConfig(num_generations=16, per_device_train_batch_size=8, gradient_accumulation_steps=4,   # 2 GPUs
#            learning_rate=1e-6, epsilon=0.2, epsilon_high=0.28, beta=0.0,
#            loss_type="dr_grpo", scale_rewards="none", max_completion_length=1024)
# ```
#
# 填出 veRL 里对应的键和值：每步多少道题（`data.train_batch_size`）、组大小、学习率、裁剪上下界、是否用 KL 损失、
# 损失聚合方式与它的归一化常数、以及 GRPO 优势是否除以标准差。（提示：先算每步一共多少个回答。）

# %% tags=["solution"]
# 你的代码：写出 my_verl = {veRL 的键: 值, ...}（9 个键，见下面检查格里的 ASKED）
my_verl = {
    "data.train_batch_size": 8 * 4 * 2 // 16,          # completions per step / G = prompts per step
    "actor_rollout_ref.rollout.n": 16,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.clip_ratio_low": 0.2,
    "actor_rollout_ref.actor.clip_ratio_high": 0.28,
    "actor_rollout_ref.actor.use_kl_loss": False,       # beta = 0: no KL term, no reference model
    "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum-norm",
    "actor_rollout_ref.actor.loss_scale_factor": 1024,  # Dr. GRPO's constant: the generation budget
    "algorithm.norm_adv_by_std_in_grpo": False,         # scale_rewards="none"
}

# %% tags=["check"]
from labkit import exercises


ASKED = ("data.train_batch_size", "actor_rollout_ref.rollout.n", "actor_rollout_ref.actor.optim.lr",
         "actor_rollout_ref.actor.clip_ratio_low", "actor_rollout_ref.actor.clip_ratio_high",
         "actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.actor.loss_agg_mode",
         "actor_rollout_ref.actor.loss_scale_factor", "algorithm.norm_adv_by_std_in_grpo")


def check_verl_mapping(answer: dict):
    exercise_recipe = engines.GRPORecipe(
        model=recipe.model, dataset=recipe.dataset, num_generations=16, rollout_batch_size=4,
        micro_batch_size=8, grad_accum=4, gpus=2, learning_rate=1e-6, epsilon_low=0.2, epsilon_high=0.28,
        beta=0.0, loss_agg="dr_grpo", scale_rewards="none", max_completion_length=1024)
    expected = dict(engines.engine_settings(exercise_recipe, "verl"))   # what labkit.engines emits
    exercises.check_true("a dict", isinstance(answer, dict), hint="写成 {'veRL 的键': 值}")
    exercises.check_equal("the keys asked for", sorted(answer), sorted(ASKED),
                          hint="键名对照第一步表里 veRL 一列（前缀 actor_rollout_ref.actor. 等要写全）")
    for key in ASKED:
        exercises.check_equal(key, answer[key], expected[key],
                              hint="每步的回答数 = 每卡批 × 累积步数 × 卡数；veRL 写的是题数" if key == ASKED[0] else "")


check_verl_mapping(my_verl)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_verl_mapping({**my_verl, "data.train_batch_size": 64}))

# %% [markdown]
# **练习 2**：ZeRO 省下多少显存。讲义里的混合精度 AdamW 全参数训练：每个参数 2 字节 bf16 权重、2 字节 bf16 梯度、
# 12 字节优化器状态（fp32 主权重 + 两个 fp32 动量），共 16 字节（不算激活）。$N$ 张卡上：DDP 每卡放全部三样；
# ZeRO-2 把梯度和优化器状态切成 $N$ 份；ZeRO-3 连权重也切。写一个函数，给出 `stage`（0 = DDP、2、3）时每卡需要的 GiB。
# 检查通过后，下一格用你的函数回答：Qwen3-1.7B（$\Psi = 1.72\times10^9$）在 4 张 24 GB 卡上，哪些方式放得下
# （只算这三样，留 4 GiB 给激活与碎片）？

# %% tags=["solution"]
def per_gpu_gib(params: float, gpus: int, stage: int) -> float:
    # TODO: 按上面的字节数，算出 stage 0 / 2 / 3 时每张卡上的权重 + 梯度 + 优化器状态（GiB）
    weights, grads, optimizer = 2 * params, 2 * params, 12 * params
    if stage >= 2:
        grads, optimizer = grads / gpus, optimizer / gpus
    if stage >= 3:
        weights = weights / gpus
    return (weights + grads + optimizer) / 2**30


# %% tags=["check"]
def check_zero(fn):
    exercises.check_close("DDP, 1e9 params, 8 GPUs", fn(1e9, 8, 0), 16e9 / 2**30, tol=1e-3,
                          hint="DDP 不切分：每卡 16 字节 / 参数")
    exercises.check_close("ZeRO-2, 1e9 params, 8 GPUs", fn(1e9, 8, 2), (2e9 + 14e9 / 8) / 2**30, tol=1e-3,
                          hint="ZeRO-2 切梯度和优化器状态，权重每卡一份")
    exercises.check_close("ZeRO-3, 1e9 params, 8 GPUs", fn(1e9, 8, 3), 16e9 / 8 / 2**30, tol=1e-3,
                          hint="ZeRO-3 三样都切")


check_zero(per_gpu_gib)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_zero(lambda params, gpus, stage: 16 * params / gpus / 2**30))

# %%
for stage, name in ((0, "DDP"), (2, "ZeRO-2"), (3, "ZeRO-3")):
    need = per_gpu_gib(1.72e9, 4, stage)
    print(f"Qwen3-1.7B, 4 GPUs, {name:6s}: {need:5.1f} GiB per GPU -> {'fits' if need <= 24 - 4 else 'does not fit'} in 24 GB")

# %% [markdown]
# ## 扩展（约 15 分钟）
#
# 1. **学习率与偏好方法**（约 6 分钟）：把 `LEARNING_RATE` 改为 `5e-4`，只重新运行第四步（KTO / ORPO / DPO）。
#    看表中三种方法的 `greedy_acc` 与 `vs_ref`：任务准确率是否都回到接近 SFT 的水平、偏好准确率降了多少？
#    对照实验 03 的"温和设置"：学习率决定了这些方法对任务能力的伤害有多大，排序也可能随之改变。
# 2. **翻译失败比悄悄换设置好**（约 4 分钟）：用第一步的 `engines.openrlhf_command`，把配方的 `loss_agg` 改成 `"dr_grpo"`
#    （`dataclasses.replace(recipe, loss_agg="dr_grpo")`）再翻译一次。读报错：它说 OpenRLHF 缺的是什么？如果翻译器悄悄换成
#    "最接近"的设置，两边的训练结果还可比吗？
# 3. **用练习 2 的函数做规划**（约 5 分钟）：同样 4 张 24 GB 卡，Qwen3-4B（$\Psi\approx4.0\times10^9$）全参数训练时
#    哪个 ZeRO stage 放得下？如果改用 LoRA（只训练约 1% 的参数，冻结的 bf16 权重仍是每参数 2 字节），结论怎么变？
#    用 `labkit.memory.estimate_memory` 对 LoRA 的情况核对一次。

# %%
ok = {name: int(bool(engine_results[name].ok)) if name in engine_results else -1
      for name in ("verl_overrides_ok", "openrlhf_args_ok", "deepspeed_configs_ok")}
metrics.record(ddp_world_size=multi.world_size, ddp_loss_max_diff=float(f"{match['ddp_loss_max_diff']:.3g}"),
               ddp_same_completions=round(match["same_completions"] / match["steps"], 4),
               ddp_seconds=round(multi.seconds, 1), single_seconds=round(single.seconds, 1), **ok,
               dpo_heldout_pref_acc=round(methods.loc["dpo", "vs_ref"], 4),
               kto_heldout_pref_acc=round(methods.loc["kto", "vs_ref"], 4),
               orpo_heldout_pref_acc=round(methods.loc["orpo", "vs_ref"], 4),
               orpo_policy_pref_acc=round(methods.loc["orpo", "policy_sum"], 4),
               heldout_acc_sft=round(methods.loc["sft", "greedy_acc"], 4),
               heldout_acc_dpo=round(methods.loc["dpo", "greedy_acc"], 4),
               heldout_acc_kto=round(methods.loc["kto", "greedy_acc"], 4),
               heldout_acc_orpo=round(methods.loc["orpo", "greedy_acc"], 4))
metrics.show()
