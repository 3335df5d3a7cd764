"""XLA:CPU options for faster training, applied on request before JAX starts its backends.

`--xla_cpu_experimental_ynn_fusion_type=dot` runs dots and convolutions through YNNPACK
instead of Eigen: on a 2-core AVX-512 host the teacher's 128->64 conv forward takes 179 ms
instead of 307 ms (experiments/PROFILE.md vs PROFILE-eigen.md), with the PyTorch parity tests
unchanged.
The option only touches CPU compilation; GPU runs ignore it.

The experiment commands and benchmarks call `use_fast_cpu_kernels()` first thing; importing
kdjax changes nothing. XLA aborts the process on a flag it does not know, so the option is added only for the
jaxlib releases it was checked against. Set `KDJAX_XLA_CPU_DEFAULTS=0` to leave `XLA_FLAGS`
alone; a value you give the same flag in `XLA_FLAGS` yourself always wins.
"""

from __future__ import annotations

import os
import warnings

OPT_OUT_ENV = "KDJAX_XLA_CPU_DEFAULTS"
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
KNOWN_JAXLIB = ((0, 10), (0, 11))  # [first, end) releases whose XLA knows CPU_FLAGS


def _jaxlib_version() -> tuple[int, ...]:
    from jaxlib import version

    return tuple(int(part) for part in version.__version__.split(".")[:2])


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    return bool(getattr(xla_bridge, "_backends", None))


def flags_to_add(xla_flags: str, jaxlib_version: tuple[int, ...], opt_out: str | None) -> list[str]:
    """The entries of `CPU_FLAGS` to append to an `XLA_FLAGS` value, given the jaxlib release."""
    if opt_out is not None and opt_out.strip().lower() in ("0", "false", "no", "off"):
        return []
    first, end = KNOWN_JAXLIB
    if not first <= tuple(jaxlib_version[:2]) < end:
        return []
    present = {entry.split("=")[0] for entry in xla_flags.split()}
    return [flag for flag in CPU_FLAGS if flag.split("=")[0] not in present]


def use_fast_cpu_kernels() -> list[str]:
    """Append kdjax's XLA:CPU flags to `os.environ["XLA_FLAGS"]`; returns the flags added.

    Has an effect only before the first JAX computation; afterwards it warns and adds nothing.
    """
    current = os.environ.get("XLA_FLAGS", "")
    missing = flags_to_add(current, _jaxlib_version(), os.environ.get(OPT_OUT_ENV))
    if not missing:
        return []
    if _backends_started():
        import jax

        if jax.default_backend() != "cpu":
            return []
        warnings.warn(f"JAX's backends started before kdjax was imported, so {' '.join(missing)} "
                      f"cannot apply: call kdjax.cpu.use_fast_cpu_kernels() before JAX runs anything "
                      f"(or set {OPT_OUT_ENV}=0 to silence this)", stacklevel=3)
        return []
    os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    return missing
