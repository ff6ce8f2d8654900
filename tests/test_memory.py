"""keep_freed_memory: a freed large tensor's pages serve the next one instead of being faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                                reason="mallopt is glibc's")

SCRIPT = """
import resource, torch
from distillir.utils.memory import keep_freed_memory
applied = keep_freed_memory()
def step():
    t = torch.ones(40 * 2**20 // 4)  # 40 MB: above glibc's largest mmap threshold (32 MB)
    del t
for _ in range(20):  # glibc settles on which freed chunks serve torch's aligned requests
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(setting: str) -> tuple[str, int]:
    env = {**os.environ, "DISTILLIR_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


def test_kept_memory_is_not_faulted_in_again():
    applied, count = faults("keep")
    assert applied == "True"
    assert count < 1000  # 3 x 40 MB in 4 KB pages would be 30,720


def test_default_malloc_faults_each_large_tensor_in():
    applied, count = faults("default")
    assert applied == "False"
    assert count > 3 * 10240 * 0.9
