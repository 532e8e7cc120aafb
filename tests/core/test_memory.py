"""samkit.memory: freed temporaries stay in the heap, so decoder calls stop page-faulting.

Untuned, glibc hands large freed blocks back to the kernel (mmap threshold and trim threshold
128 KB) and each decoder call faults its temporaries in again. glibc also raises both
thresholds by itself after some frees, depending on the order of allocations, so whether a
given untuned process faults varies from run to run. Both runs here therefore start from
glibc's documented defaults, set in the environment (MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ fix them, which stops that adaptation): the control faults on every
call, and keep_freed_memory() must override them. Each run is a fresh interpreter, since the
setting is process-wide and made once.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from samkit.fast.mask_decoder import FastMaskDecoder
from samkit.modeling.mask_decoder import MaskDecoder
from samkit.utils.memory import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory() and keep_freed_memory()
torch.manual_seed(0)
decoders = [FastMaskDecoder(MaskDecoder().eval()), FastMaskDecoder(MaskDecoder().eval())]
g = torch.Generator().manual_seed(0)
image, pe = torch.randn(1, 256, 64, 64, generator=g), torch.randn(1, 256, 64, 64, generator=g)
sparse = torch.randn(1, 2, 256, generator=g)
dense = torch.randn(1, 256, 1, 1, generator=g).expand(1, -1, 64, 64)
faults = []
with torch.inference_mode():
    for i in range(20):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        decoders[i % 2](image, pe, sparse, dense, multimask_output=True)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
# the median of the calls after warm-up: a thread's arena may grow once, later
print(sorted(faults[4:])[8])
"""


def faults_per_call(mode: str) -> float:
    env = dict(os.environ, SAMKIT_MALLOC_TUNING="1", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_malloc_stops_page_faults_between_decoder_calls():
    untuned = faults_per_call("plain")
    tuned = faults_per_call("tuned")
    # without the tuning each call faults its temporaries back in (~16,000 4 KB pages here)
    assert untuned > 1000, f"control run did not page-fault ({untuned}/call): the test no longer shows anything"
    assert tuned < 50


def test_opt_out_leaves_malloc_alone():
    script = "from samkit.utils.memory import keep_freed_memory; print(keep_freed_memory())"
    env = dict(os.environ, SAMKIT_MALLOC_TUNING="0")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


RELEASE_SCRIPT = """
import numpy as np
from samkit.utils.memory import keep_freed_memory, release_freed_memory
assert keep_freed_memory()
def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
blocks = [np.ones(1 << 20, np.uint8) for _ in range(200)]  # 1 MB each: heap blocks under the tuning
del blocks
kept = rss_mb()  # the tuning keeps the freed 200 MB for reuse
release_freed_memory()
print(kept - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_release_gives_freed_heap_back():
    """What fine-tuning calls after each step: the heap the tuning keeps goes back to the kernel."""
    env = dict(os.environ, SAMKIT_MALLOC_TUNING="1")
    out = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) > 150
