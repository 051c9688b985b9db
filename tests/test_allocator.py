"""npgrad.retain_freed_memory: freed large blocks are reused instead of being faulted in afresh."""

import subprocess
import sys

import pytest

import npgrad as ng
from npgrad import allocator

CYCLES = """
import resource
import numpy as np
import npgrad as ng

def faults(cycles=6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        block = np.ones(24 << 20, dtype=np.float32)   # 96 MiB written in full, above glibc's 32 MiB mmap cap
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
default = faults()
assert ng.retain_freed_memory() is True
faults()                                               # the first block after the call is still new memory
retained = faults()
print(default, retained)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_blocks_are_reused_without_page_faults():
    result = subprocess.run([sys.executable, "-c", CYCLES], capture_output=True, text=True, timeout=120)
    if result.returncode != 0 and "assert ng.retain_freed_memory() is True" in result.stderr:
        pytest.skip("this C library has no working mallopt")
    assert result.returncode == 0, result.stderr
    default, retained = map(int, result.stdout.split())
    assert default > 0
    assert retained * 10 < default, (default, retained)


def test_not_applied_off_linux(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert ng.retain_freed_memory() is False
