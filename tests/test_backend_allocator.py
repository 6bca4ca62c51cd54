"""The `dinov3kit` command's glibc settings: freed activations are reused instead of faulted in again.
Each check runs in its own interpreter, as the settings are the whole process's."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

FAULTS_OF_A_REUSED_BLOCK = """
import resource, torch
from dinov3kit.backend.allocator import keep_freed_memory
tuned = {tune} and keep_freed_memory()
def step():  # three 12 MB activations alive at once, then freed: kept (reused) or handed back (fresh pages)
    blocks = [torch.ones(3 << 20) for _ in range(3)]
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(tune: bool, **env: str) -> tuple[str, int]:
    code = FAULTS_OF_A_REUSED_BLOCK.format(tune=tune)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    tuned, count = out.stdout.split()
    return tuned, int(count)


def test_kept_memory_is_reused_without_page_faults():
    handed_back = faults(False, MALLOC_TRIM_THRESHOLD_="0")[1]  # what glibc's default does on a bad run
    assert handed_back > 5 * 3000  # the blocks come back as fresh pages (3072 per block)
    tuned, count = faults(True)
    assert tuned == "True" and count < 500


def test_a_users_own_allocator_settings_are_left_alone():
    tuned, count = faults(True, MALLOC_TRIM_THRESHOLD_="0")
    assert tuned == "False" and count > 5 * 3000


def test_the_command_applies_them_and_main_does_not(monkeypatch):
    from dinov3kit import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(cli, "main", lambda: 0)
    with pytest.raises(SystemExit):
        cli.run()
    assert calls == [1]
