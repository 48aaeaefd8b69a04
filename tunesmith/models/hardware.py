"""What this machine computes natively: the CPU's vector flags, which decide whether bf16 pays; and whether a process
of this host still runs (a lock or claim left by one that died).

Training (bf16 autocast) and serving (a classifier in bf16) both ask; neither imports the other.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


# Batches in bf16 are padded to a multiple of this many tokens. On a CPU bf16 products run on oneDNN kernels
# compiled for each new shape (about 1.5 ms each), and padding to each batch's longest text makes nearly every batch
# a new shape; with multiples of 8 they stay few and cached (GPUs' tensor cores want multiples of 8 as well).
# Measured on an AMX host: the demo trained 1.20x faster for 3.5% more tokens, same test accuracy; bf16 serving
# 1.1x the texts/s
BF16_PAD_MULTIPLE = 8


def bf16_pad_multiple(max_length: int, context: int | None, multiple: int = BF16_PAD_MULTIPLE) -> int | None:
    """`multiple`, unless rounding a text cut at `max_length` up to it would pass the model's `context`
    (a context that is no multiple of 8 has no positions there; an unknown one counts as `max_length`)."""
    rounded = -(-max_length // multiple) * multiple
    return multiple if rounded <= (context or max_length) else None


# Where the cgroup CPU quota is read (a container's limit); constants so tests can point them at fake files.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@cache
def cpu_cores() -> int:
    """The cores this process may run on (its affinity, where the OS says; a container's share, not the host's)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(CGROUP_ROOT, PROC_CGROUP)
    # A quota (`docker --cpus 2`) leaves every host core in the affinity but only 2 cores' time to share.
    return max(1, min(cores, quota)) if quota else max(1, cores)


def cgroup_cpu_quota(root: Path, proc_cgroup: Path) -> int | None:
    """The cores a cgroup CPU quota allows, rounded up (None: no quota, or no cgroup files). v2: `cpu.max` holds
    "QUOTA PERIOD" or "max PERIOD", in this process's cgroup (`proc_cgroup`'s "0::/PATH"; "/" in a container);
    v1: cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us."""
    try:
        own = [line[3:].strip().lstrip("/") for line in proc_cgroup.read_text().splitlines() if line.startswith("0::")]
    except OSError:
        own = []
    for folder in dict.fromkeys(([root / own[0]] if own else []) + [root]):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else max(1, -(-int(quota) // int(period)))
        except (OSError, ValueError):
            continue
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return max(1, -(-quota_us // period_us)) if quota_us > 0 and period_us > 0 else None
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """The flags of /proc/cpuinfo's first processor (empty where there is none: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """True where bf16 is faster, not just possible: recent GPUs, CPUs with AMX or AVX512-BF16 (elsewhere it is emulated)."""
    import torch  # here: the catalog and retraining's trigger import this module for process_running alone

    if torch.cuda.is_available():
        # Without including_emulation=False a T4 or V100 says True: bf16 emulated there, slower than fp16/fp32.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def process_running(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's counts: it runs). Not a pid: no."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
