"""keep_freed_memory: a freed large tensor is reused instead of being page-faulted back in."""

import subprocess
import sys

import pytest

# Twelve rounds of a training-step-like pattern (two 256 MB tensors and a 64 MB one, touched,
# then freed); print the minor page faults of rounds 3 to 12. Without heap reuse glibc maps fresh
# pages every round, one fault per 4 kB (147456 a round); with it the heap settles after a round
# or two, with a stray 256 MB refault now and then.
SCRIPT = """
import resource, sys, torch
from sepcli.allocator import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(64 * 2**20)
    y, z = x * 2, torch.ones(16 * 2**20)
    del x, y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, *faults[2:])
"""


def faults_after_warm_up(mode: str) -> tuple[str, list[int]]:
    """Minor page faults of rounds 3 to 12."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    took, *faults = result.stdout.split()
    return took, [int(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_activations_are_reused_instead_of_faulted_back_in():
    _, plain = faults_after_warm_up("plain")
    took, kept = faults_after_warm_up("keep")
    assert min(plain) > 140000  # every 4 kB page faulted in again, every round
    # Reused: most rounds fault (next to) nothing. Counted per round, not summed, because a busy
    # host makes glibc give back and refault a 256 MB block now and then (65536 faults each).
    assert took == "True" and sum(f < 20000 for f in kept) >= 5, kept
