"""The CPU line every benchmark prints with its figures (the brief: record the CPU with every run).

Machines here differ under one model name ("AMD EPYC" with AVX-512 BF16 and a 32 MB L3 covers
more than one CPU generation, whose click times differ by ~1.5x), so the line also carries the
CPU family and model numbers from /proc/cpuinfo.
"""

from __future__ import annotations

import os
import platform
import subprocess

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu() -> str:
    """'<model name> (family F, model M), N cores, flags avx2, ..., L3 <size>' from lscpu (the
    family and model left out, the L3 'unknown', where lscpu does not tell them)."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        info = ""
    fields = {key.strip(): value.strip() for key, value in
              (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    name = fields.get("Model name") or platform.processor() or platform.machine()
    family = ""
    if "CPU family" in fields and "Model" in fields:
        family = f" (family {fields['CPU family']}, model {fields['Model']})"
    have = set(fields.get("Flags", "").split())
    flags = ", ".join(f for f in FLAGS if f in have) or "no avx2/avx512"
    return f"{name}{family}, {os.cpu_count()} cores, flags {flags}, L3 {fields.get('L3 cache', 'unknown')}"
