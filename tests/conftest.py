import os
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# byte stores built by tests (hqf_jax.data.store) go to one temporary folder, not the user's ~/.cache
os.environ.setdefault("HQF_DATA_STORE", os.path.join(tempfile.gettempdir(), "hqf_jax_test_stores"))
# On the CPU the suite's time is mostly XLA compiles of tiny programs: LLVM at -O0 compiles them faster (tests' own
# subprocesses inherit it). Measured on this 2-core machine, same code: 19.1 min with it, 22.8 without (2026-11-30).
# A GPU run of the gpu-marked tests keeps the default.
if os.environ["JAX_PLATFORMS"] == "cpu" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
# XLA's CPU fusion emitters (MLIR, the default) take most of the compile time of these tiny programs; the older
# elemental emitters compile them faster: tests/test_infer_recurrent.py 36.6 -> 22.1 s of CPU in one process
# (jaxlib 0.10.2, this 2-core machine, 2026-12-01: `/usr/bin/time python -m pytest -p no:cacheprovider
# tests/test_infer_recurrent.py`, with HQF_TEST_EMITTERS_ASKED=1 to leave the flag out). One test of
# bit-identity holds only under the default emitters and is marked xla_default_emitters (below). XLA aborts on
# a flag it does not know, so the first process of a session asks a child jax whether this one's XLA takes it
# (~1.5 s; the xdist workers and the tests' own processes inherit the answer). A GPU run of the gpu-marked
# tests keeps the default.
EMITTERS_FLAG = "--xla_cpu_use_fusion_emitters=false"


def _xla_takes(flags: str) -> bool:
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": flags}
    code = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):  # no answer: keep XLA's default
        return False


if (os.environ["JAX_PLATFORMS"] == "cpu" and "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]
        and "HQF_TEST_EMITTERS_ASKED" not in os.environ):
    os.environ["HQF_TEST_EMITTERS_ASKED"] = "1"  # the workers inherit the answer, also when it was no
    with_emitters = (os.environ["XLA_FLAGS"] + " " + EMITTERS_FLAG).strip()
    if _xla_takes(with_emitters):
        os.environ["XLA_FLAGS"] = with_emitters
# One XLA compilation cache for the whole test session: both xdist workers (they inherit this environment from the
# controller, which imports this file first) and every process a test starts (train.lm runs, multi-process workers)
# load a program compiled before instead of compiling it again. The processes tests start cache every program (their
# small ones, init/eval/save, repeat from process to process); the pytest processes only those that took >= 0.5 s
# (_cache_only_long_compiles: writing every small one cost more than its rare reuse saved). The key covers the HLO,
# the compile options and XLA_FLAGS, so only the same program is shared; the tests that count traces count Python
# traces, which the cache does not change. A new folder for each session (removed by the process that made it), so
# a run never reads programs from an older one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil

    _cache = tempfile.mkdtemp(prefix="hqf_jax_test_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
OPTIMIZED = {"xla_backend_optimization_level": 2}  # XLA's default, for tests marked xla_optimized
# (_compile_options_by_mark)
OPTIMIZED_FLAG = "--xla_backend_optimization_level=2"


# The longest modules first (measured on 2 cores), so that `pytest -n 2 --dist loadfile` does not end with one
# worker running a long module alone; the order of tests inside a module is kept.
LONG_MODULES = ["test_notebooks.py", "test_train_lm.py", "test_quant_kernels.py", "test_sharding.py", "test_faults.py",
                "test_kolmogorov_warm.py", "test_multiprocess.py", "test_grpo_train.py", "test_train_retnphi.py",
                "test_train_retnphi_study.py", "test_retnet_model.py", "test_zip_eval.py", "test_infer_fused_gemv.py",
                "test_quant_tc.py",
                "test_retnphi_spec.py"]


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="K/N",
                     help="run only slice K of N (0 <= K < N) of the selected tests, every N-th one from the K-th: "
                          "the gpu-marked tests split over device calls or GPUs (bench/run_gpu.sh gpu_tests, SHARD=K/N)")


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N), or a usage error that says what is wrong."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard {text!r}: expected K/N, two integers, e.g. 0/3") from None
    if n < 1 or not 0 <= k < n:
        raise pytest.UsageError(f"--shard {text}: needs N >= 1 and 0 <= K < N")
    return k, n


class _Shard:
    """Keeps every N-th selected test from the K-th, after the -m / -k deselection (trylast), so the N slices of one
    selection are disjoint, cover it, and each takes a share of every file (files differ a lot in time)."""

    def __init__(self, k: int, n: int):
        self.k, self.n = k, n

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        kept, dropped = items[self.k::self.n], [item for i, item in enumerate(items) if i % self.n != self.k]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_configure(config):
    """pytest-xdist >= 3.7 reorders the files of --dist loadfile by their number of tests (most first) unless told
    not to: that ran test_multiprocess.py (one test, about a minute) among the very last, alone on one worker.
    Keep the order below instead (same as --no-loadscope-reorder; a no-op without xdist). --shard K/N: see _Shard."""
    if getattr(config.option, "loadscopereorder", None) is not None:
        config.option.loadscopereorder = False
    if config.getoption("--shard", None):
        config.pluginmanager.register(_Shard(*parse_shard(config.getoption("--shard"))), "hqf_shard")


@pytest.fixture(autouse=True, scope="session")
def _cache_only_long_compiles():
    """In the pytest process (a worker), only compiles of >= 0.5 s go to the session's compilation cache (above)."""
    import jax

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield


MAPS_BEFORE_CLEAR = 30000  # of the kernel's default vm.max_map_count, 65530


@pytest.fixture(autouse=True, scope="module")
def _bound_memory_maps():
    """After a test module, if this process holds more than MAPS_BEFORE_CLEAR memory maps, drop jax's in-memory
    caches of compiled programs. Each live compiled CPU program holds ~6 maps and a worker keeps them for the whole
    session: a single process running most of the suite climbed ~3.7k maps a minute and aborted inside XLA at the
    kernel's limit (2026-11-30). Below the bound nothing is dropped, so a normal run recompiles nothing."""
    yield
    try:
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
    except OSError:  # not Linux
        return
    if maps > MAPS_BEFORE_CLEAR:
        import jax

        jax.clear_caches()


@pytest.fixture(autouse=True)
def _compile_options_by_mark(request, monkeypatch):
    """Tests marked ``xla_optimized`` spend their time running many training steps, not compiling: their compiles
    get XLA's default LLVM level back instead of the suite's -O0. Tests marked ``xla_default_emitters`` assert
    bit-identity between two programs that only XLA's default CPU fusion emitters keep (the older ones the suite
    uses fuse a rematerialised forward differently, ~1e-7 apart): their compiles get the default emitters back.
    In this process per compile (the trainer's jits included), through the env-option overrides that
    ``jax.jit(..., compiler_options=...)`` also uses (XLA_FLAGS are read once per process); the processes the test
    starts (notebook kernels, train.lm) get it in XLA_FLAGS. jax's in-memory caches of compiled programs do not
    key on these options, so they are cleared before and after: a function compiled by an earlier test is
    compiled again here, and what is compiled here serves no later test. A jax without the hook runs the
    in-process compiles with the suite's flags: slower, nothing else changes."""
    overrides, flags = {}, os.environ.get("XLA_FLAGS", "")
    if os.environ["JAX_PLATFORMS"] == "cpu":
        if request.node.get_closest_marker("xla_optimized") is not None:
            overrides.update(OPTIMIZED)
            flags = flags.replace("--xla_backend_optimization_level=0", OPTIMIZED_FLAG)
        if request.node.get_closest_marker("xla_default_emitters") is not None and EMITTERS_FLAG in flags:
            overrides["xla_cpu_use_fusion_emitters"] = True
            flags = flags.replace(EMITTERS_FLAG, "").strip()
    if not overrides:
        yield
        return
    monkeypatch.setenv("XLA_FLAGS", flags)
    import jax
    from jax._src import compiler

    jax.clear_caches()

    original = getattr(compiler, "get_compile_options", None)
    if original is None:
        yield
        return

    def optimized(*args, env_options_overrides=None, **kwargs):
        return original(*args, env_options_overrides={**overrides, **(env_options_overrides or {})}, **kwargs)

    monkeypatch.setattr(compiler, "get_compile_options", optimized)
    yield
    jax.clear_caches()  # and the programs compiled here serve no later test


def pytest_collection_modifyitems(config, items):
    """Long modules first; tests marked gpu need a GPU backend: `JAX_PLATFORMS=cuda python -m pytest -m gpu`."""
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_MODULES)))  # stable: keeps the order within
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import jax

    if jax.default_backend() != "gpu":
        skip = pytest.mark.skip(reason="needs a GPU: JAX_PLATFORMS=cuda python -m pytest -m gpu")
        for item in gpu_items:
            item.add_marker(skip)
