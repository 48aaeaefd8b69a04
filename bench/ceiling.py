"""The host and its matrix-multiply ceilings: what a training step could reach at best on this machine.

A training step is, to first order, matrix products: each linear layer's forward (X @ W), the gradient
for its input (dY @ W^T) and for its weight (X^T @ dY). The ceiling for a model is the rate this host
reaches on exactly those shapes, FLOP-weighted by how often each occurs in one transformer layer, at a
typical number of tokens per batch: best of several repeats per product, so the number is the
machine's, not a stall's. Per precision: fp32, bf16 (the kernel bf16 autocast dispatches to), and int8
through torch._int_mm where the CPU has int8 dot products (a reference only: no training side runs int8).

The host's speed drifts by up to 2x over minutes, so train_bench.py measures the ceilings again
between sides and compares each side with the ceilings measured around it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def host() -> dict[str, Any]:
    """CPU model, the vector flags that decide matmul speed, cores, torch threads, and the load now."""
    import torch

    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "load_avg": [round(x, 2) for x in os.getloadavg()]}
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = text.splitlines()
        info["cpu"] = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
        # Cloud hosts often name the CPU only "AMD EPYC"; family/model tell Zen 3 (25/1), Zen 4 (25/17) and Zen 5 (26/2) apart
        ids = {k: next((x.split(":", 1)[1].strip() for x in lines if x.split(":", 1)[0].strip() == k), "?")
               for k in ("cpu family", "model")}
        info["cpu_family_model"] = f"{ids['cpu family']}/{ids['model']}"
        flags = set(next((x.split(":", 1)[1].split() for x in lines if x.startswith("flags")), []))
        info["flags"] = [f for f in FLAGS if f in flags]
    except OSError:
        info["cpu"], info["flags"] = platform.processor() or "?", []
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_label(info: dict[str, Any]) -> str:
    """The CPU as the benchmarks print it: its name and, where known, family/model (the name alone is often just "AMD EPYC")."""
    family_model = info.get("cpu_family_model")
    return f"{info.get('cpu', '?')} (family/model {family_model})" if family_model else str(info.get("cpu", "?"))


def native_bf16(info: dict[str, Any], device: str) -> bool:
    """bf16 pays only where the hardware computes it natively (else it is emulated, slower than fp32)."""
    if device == "cuda":
        import torch

        # without including_emulation=False a T4 or V100 says True (as tunesmith.models.hardware.native_bf16 knows)
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool({"avx512_bf16", "amx_bf16"} & set(info.get("flags", [])))


def native_int8(info: dict[str, Any], device: str) -> bool:
    """Whether torch._int_mm measures the hardware: with VNNI or AMX (or on a GPU) it runs int8 dot products;
    without them PyTorch falls back to a plain loop (2.6 GFLOP/s on an AVX2 EPYC whose onnxruntime int8 kernels
    reach 259), a number about PyTorch, not about the machine."""
    return device == "cuda" or bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(info.get("flags", [])))


def layer_linears(model_dir: Path) -> list[tuple[int, int, int]]:
    """(in, out, count) of the linear layers in one transformer block, from the model's config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    h, inner = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg.get("num_attention_heads", 1)
    kv = cfg.get("num_key_value_heads", heads) * (cfg.get("head_dim") or h // heads)
    if cfg.get("model_type") in ("llama", "mistral", "qwen2"):  # gated MLP: gate and up, then down
        return [(h, h, 2), (h, kv, 2), (h, inner, 2), (inner, h, 1)]
    return [(h, h, 2), (h, kv, 2), (h, inner, 1), (inner, h, 1)]  # BERT-style: q, k, v, o; up; down


def training_products(tokens: int, linears: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every product of one layer's training step: forward, input and weight gradients."""
    out = []
    for d_in, d_out, count in linears:
        out += [(tokens, d_in, d_out, count),  # X @ W
                (tokens, d_out, d_in, count),  # dY @ W^T
                (d_in, tokens, d_out, count)]  # X^T @ dY
    return out


def _timed(step: Any, sync: Any, repeats: int) -> float:
    step()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def measure(products: list[tuple[int, int, int, int]], precision: str, device: str = "cpu", repeats: int = 5) -> float | None:
    """GFLOP/s over `products` (FLOP-weighted best times) in `precision`; None where this build cannot run it."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    flops = seconds = 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        for m, k, n, count in products:
            if precision == "int8":
                a = torch.randint(-127, 127, (m, k), dtype=torch.int8, device=device)
                b = torch.randint(-127, 127, (k, n), dtype=torch.int8, device=device)
                try:
                    best = _timed(lambda a=a, b=b: torch._int_mm(a, b), sync, repeats)
                except (RuntimeError, AttributeError):  # shapes or device this build's int8 kernel refuses
                    return None
            else:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                a = torch.randn(m, k, device=device, dtype=dtype)
                b = torch.randn(k, n, device=device, dtype=dtype)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    best = _timed(lambda a=a, b=b: a @ b, sync, repeats)
            flops += 2.0 * m * k * n * count
            seconds += best * count
    return flops / seconds / 1e9


def ceilings(model_dirs: dict[str, Path], precisions: list[str], tokens: int, device: str = "cpu",
             repeats: int = 5) -> dict[str, dict[str, float | None]]:
    """{model: {precision: GFLOP/s}} on each model's own training products."""
    return {name: {p: measure(training_products(tokens, layer_linears(d)), p, device, repeats) for p in precisions}
            for name, d in model_dirs.items()}
