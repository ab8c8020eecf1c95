"""Detect what the notebook runs on: a CPU, or a CUDA GPU with its memory and bf16 support."""

from __future__ import annotations

import os
from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class Hardware:
    device: str                 # "cpu" or "cuda"
    name: str                   # e.g. "Tesla T4" or "cpu (2 cores)"
    vram_total_gb: float = 0.0
    vram_free_gb: float = 0.0
    capability: tuple[int, int] | None = None  # CUDA compute capability, (7, 5) on a T4
    bf16: bool = False          # bf16 matmuls are native from compute capability 8.0 (Ampere)
    cpu_cores: int = 1
    unusable_gpu: str | None = None  # nvidia-smi sees a GPU that torch cannot use: why, and the fix

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the profile table."""
        cap = f"{self.capability[0]}.{self.capability[1]}" if self.capability else "-"
        return [("device", self.device), ("name", self.name),
                ("VRAM total / free", f"{self.vram_total_gb:.1f} / {self.vram_free_gb:.1f} GiB"
                 if self.device == "cuda" else "-"),
                ("compute capability", cap), ("bf16", "yes" if self.bf16 else "no"),
                ("CPU cores", str(self.cpu_cores))]


def detect() -> Hardware:
    """Inspect the first CUDA device if there is one, else describe the CPU.

    A stand-in run (LABKIT_STANDIN_GPU, see labkit.standin) reports the GPU it pretends to be.
    """
    import dataclasses

    import torch

    from labkit.standin import gpu

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    stand_in = gpu()
    if stand_in is not None:
        return dataclasses.replace(stand_in, cpu_cores=cores)
    if not torch.cuda.is_available():
        return Hardware(device="cpu", name=f"cpu ({cores} cores)", cpu_cores=cores,
                        unusable_gpu=unusable_gpu())
    free, total = torch.cuda.mem_get_info(0)
    capability = torch.cuda.get_device_capability(0)
    return Hardware(
        device="cuda", name=torch.cuda.get_device_name(0),
        vram_total_gb=total / GiB, vram_free_gb=free / GiB, capability=capability,
        bf16=capability >= (8, 0), cpu_cores=cores,
    )


def unusable_gpu(smi: str = "nvidia-smi") -> str | None:
    """When `nvidia-smi` lists a GPU that torch cannot use: why, and what to do; else None.

    The usual cause is a torch wheel built for a newer CUDA than the driver supports (the PyPI
    torch 2.13.0 is a CUDA 13 build: NVIDIA driver >= 580), or a CPU-only torch.
    """
    import shutil
    import subprocess

    import torch

    if torch.cuda.is_available() or shutil.which(smi) is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, _, driver = (part.strip() for part in out.stdout.splitlines()[0].partition(","))
    built = torch.version.cuda
    why = (f"this torch {torch.__version__} is a CPU-only build" if built is None else
           f"this torch {torch.__version__} is built for CUDA {built}, too new for driver {driver}")
    return (f"nvidia-smi sees a {name} (driver {driver}), but torch cannot use it: {why}. Fix one of:\n"
            f"  - a torch built for an older CUDA (keep the version): pip install torch=={torch.__version__.split('+')[0]} "
            "--index-url https://download.pytorch.org/whl/cu126  (CUDA 12.6 builds run on drivers >= 525);\n"
            "  - upgrade the NVIDIA driver (CUDA 13 builds need >= 580);\n"
            "  - or run on the CPU on purpose: PROFILE = 'cpu' (lab.py course --profile cpu).")


def compute_device() -> str:
    """Where tensors actually go: "cuda" when torch sees a GPU, else "cpu" (also in a stand-in run)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
