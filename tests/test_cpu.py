"""kdjax.cpu: which XLA:CPU flags it adds and when; CPU-only speed-ups stay off other backends; imports stay clean."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kdjax.cpu import CPU_FLAGS, KNOWN_JAXLIB, OPT_OUT_ENV, flags_to_add

SUPPORTED = KNOWN_JAXLIB[0]


def test_adds_the_flags_for_a_known_jaxlib():
    assert flags_to_add("", SUPPORTED, None) == list(CPU_FLAGS)
    assert flags_to_add("--xla_force_host_platform_device_count=4", SUPPORTED, None) == list(CPU_FLAGS)


@pytest.mark.parametrize("opt_out", ["0", "false", "OFF", " no "])
def test_opt_out(opt_out):
    assert flags_to_add("", SUPPORTED, opt_out) == []


def test_a_value_the_user_set_wins():
    name = CPU_FLAGS[0].split("=")[0]
    assert flags_to_add(f"{name}=eltwise", SUPPORTED, None) == []


@pytest.mark.parametrize("version", [(0, 9), KNOWN_JAXLIB[1], (1, 0)])
def test_unknown_jaxlib_releases_get_nothing(version):
    assert flags_to_add("", version, None) == []


def _in_fresh_process(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_importing_kdjax_or_its_losses_changes_nothing_and_loads_no_training_stack():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT_ENV)}
    code = ("import os, sys, kdjax, kdjax.losses; print(os.environ.get('XLA_FLAGS', ''), "
            "sorted(m for m in ('orbax', 'tqdm', 'matplotlib', 'kdjax.engine', 'kdjax.train') if m in sys.modules))")
    assert _in_fresh_process(code, env) == "[]"


def test_use_fast_cpu_kernels_sets_xla_flags_in_a_fresh_process():
    from jaxlib import version

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT_ENV)}
    installed = tuple(int(p) for p in version.__version__.split(".")[:2])
    expected = " ".join(CPU_FLAGS) if KNOWN_JAXLIB[0] <= installed < KNOWN_JAXLIB[1] else ""
    code = "import os; from kdjax.cpu import use_fast_cpu_kernels; use_fast_cpu_kernels(); print(os.environ.get('XLA_FLAGS', ''))"
    assert _in_fresh_process(code, env) == expected
    assert _in_fresh_process(code, env | {OPT_OUT_ENV: "0"}) == ""
