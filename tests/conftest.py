import os
import pathlib
import shutil
import sys
import tempfile

import pytest

from kdjax.cpu import OPT_OUT_ENV

REFERENCE_DIR = pathlib.Path(__file__).parent / "reference"
sys.path.insert(0, str(REFERENCE_DIR))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: more than about 5 s; `-m \"not slow\"` is the quick tier")
    # Many tests compile the same programs at the same tiny shapes, in this process and in the experiment
    # commands they start: one persistent compilation cache for the session serves them all.
    # Parallel workers (pytest -n) inherit the first process's cache through the environment.
    owner = "KDJAX_TEST_XLA_CACHE" not in os.environ
    if owner:
        os.environ["KDJAX_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="kdjax-test-xla-cache-")
    cache = pathlib.Path(os.environ["KDJAX_TEST_XLA_CACHE"])
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    # XLA's own CPU defaults, here and in the commands the tests start: kdjax's CPU flag (kdjax.cpu, tested in fresh
    # processes by test_cpu.py) speeds float32 training but slows the float64 parity programs several-fold.
    os.environ.setdefault(OPT_OUT_ENV, "0")
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if owner:
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


@pytest.fixture(scope="session")
def full_size_copy(tmp_path_factory) -> pathlib.Path:
    """A canonical-size (10,000 records per file) CIFAR-10 binary copy of random pixels."""
    from cifar_fakes import binary_bytes

    import numpy as np

    root = tmp_path_factory.mktemp("cifar10")
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        planes = rng.integers(0, 256, (10_000, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 10_000).astype(np.uint8)
        (folder / name).write_bytes(binary_bytes(planes, labels))
    return root


SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def cifar10_copy(tmp_path_factory) -> pathlib.Path:
    """The real CIFAR-10 (a JPEG re-encoding) in its canonical binary layout, where the workspace holds a copy."""
    import subprocess

    script = SHARED_DATA / "make_cifar10.py"
    if not script.is_file():
        pytest.skip(f"no local CIFAR-10 copy at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("cifar10-real")
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    return root


def computed_once(tmp_path_factory: pytest.TempPathFactory, name: str, compute):
    """`compute()`'s JSON-able result, computed once per test run: under pytest-xdist the first worker to ask
    computes it while the others wait for it, instead of each worker computing its own copy."""
    import fcntl
    import json

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return compute()
    root = tmp_path_factory.getbasetemp().parent  # this run's folder, shared by its workers
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = root / f"{name}.json"
        if not path.is_file():
            path.write_text(json.dumps(compute()))
        return json.loads(path.read_text())


def four_device_worker(tmp_path_factory: pytest.TempPathFactory, worker: str) -> dict:
    """The JSON object `tests/<worker>` prints last, run once per test run in a fresh process with 4 simulated CPU
    devices (a process's device count is fixed when JAX starts)."""
    import json
    import subprocess

    def run() -> dict:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
        env["JAX_PLATFORMS"] = "cpu"
        tests = pathlib.Path(__file__).parent
        done = subprocess.run([sys.executable, str(tests / worker), str(tmp_path_factory.mktemp(worker[:-3]))],
                              check=False, env=env, capture_output=True, text=True, cwd=tests.parent, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return computed_once(tmp_path_factory, worker[:-3], run)
