"""keep_freed_memory: a freed large tensor is reused instead of being page-faulted back in."""

import subprocess
import sys

import pytest

# Allocate and touch a 256 MB tensor, free it, do it again, and print the minor page faults of
# the second round: without heap reuse glibc maps fresh pages, one fault per 4 kB (65536 here).
SCRIPT = """
import resource, sys, torch
from sepcli.allocator import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.ones(64 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(64 * 2**20).sum()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_second_allocation(mode: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    took, faults = result.stdout.split()
    return took, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_activations_are_reused_instead_of_faulted_back_in():
    _, plain = faults_of_second_allocation("plain")
    took, kept = faults_of_second_allocation("keep")
    assert plain > 60000  # every 4 kB page of the 256 MB block faulted in again
    assert took == "True" and kept < 1000
