"""The switches of the fast paths: read once from the environment, changed in one place, restored."""

from __future__ import annotations

import pytest

from dinov3kit import backend
from dinov3kit.backend.config import Switches, overridden, switches


def test_switches_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("DINOV3KIT_FUSED_KERNELS", "0")
    monkeypatch.setenv("DINOV3KIT_PACKED_WEIGHTS_MB", "64")
    monkeypatch.setenv("DINOV3KIT_ACTIVATION_POOL_MB", "0")
    assert Switches.from_environment() == Switches(fused_kernels=False, packed_weights_bytes=64 << 20,
                                                   activation_pool_bytes=0)  # fmt: skip
    for name in ("DINOV3KIT_FUSED_KERNELS", "DINOV3KIT_PACKED_WEIGHTS_MB", "DINOV3KIT_ACTIVATION_POOL_MB"):
        monkeypatch.delenv(name)
    assert Switches.from_environment() == Switches()


@pytest.mark.parametrize("value", ["lots", "-1", "1.5"])
def test_a_bad_budget_in_the_environment_is_explained(monkeypatch, value):
    monkeypatch.setenv("DINOV3KIT_PACKED_WEIGHTS_MB", value)
    with pytest.raises(ValueError, match="DINOV3KIT_PACKED_WEIGHTS_MB"):
        Switches.from_environment()


def test_overridden_switches_are_restored_and_unknown_names_refused():
    before = Switches(**vars(switches))
    with overridden(fused_kernels=not before.fused_kernels, packed_weights_bytes=0) as changed:
        assert changed is switches and switches.packed_weights_bytes == 0
        assert switches.fused_kernels is not before.fused_kernels
    assert switches == before
    with pytest.raises(TypeError, match="unknown switches"):
        with overridden(fused_kernel=False):
            pass
    assert backend.switches is switches
