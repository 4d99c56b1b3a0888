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
OPTIMIZED = {"xla_backend_optimization_level": 2}  # XLA's default, for tests marked xla_optimized (_xla_optimized)
OPTIMIZED_FLAG = "--xla_backend_optimization_level=2"


# The longest modules first (measured on 2 cores), so that `pytest -n 2 --dist loadfile` does not end with one
# worker running a long module alone; the order of tests inside a module is kept.
LONG_MODULES = ["test_notebooks.py", "test_train_lm.py", "test_quant_kernels.py", "test_sharding.py", "test_faults.py",
                "test_kolmogorov_warm.py", "test_multiprocess.py", "test_grpo_train.py", "test_train_retnphi.py",
                "test_train_retnphi_study.py", "test_retnet_model.py", "test_zip_eval.py", "test_infer_fused_gemv.py",
                "test_quant_tc.py",
                "test_retnphi_spec.py"]


def pytest_configure(config):
    """pytest-xdist >= 3.7 reorders the files of --dist loadfile by their number of tests (most first) unless told
    not to: that ran test_multiprocess.py (one test, about a minute) among the very last, alone on one worker.
    Keep the order below instead (same as --no-loadscope-reorder; a no-op without xdist)."""
    if getattr(config.option, "loadscopereorder", None) is not None:
        config.option.loadscopereorder = False


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
def _xla_optimized(request, monkeypatch):
    """Tests marked ``xla_optimized`` spend their time running many training steps, not compiling: their compiles
    get XLA's default LLVM level back instead of the suite's -O0. In this process per compile (the trainer's jits
    included), through the env-option overrides that ``jax.jit(..., compiler_options=...)`` also uses (XLA_FLAGS
    are read once per process); the processes the test starts (notebook kernels, train.lm) get it in XLA_FLAGS.
    A jax without the hook runs the in-process compiles at -O0: slower, nothing else changes."""
    if request.node.get_closest_marker("xla_optimized") is None or os.environ["JAX_PLATFORMS"] != "cpu":
        yield
        return
    flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", flags.replace("--xla_backend_optimization_level=0", OPTIMIZED_FLAG))
    from jax._src import compiler

    original = getattr(compiler, "get_compile_options", None)
    if original is None:
        yield
        return

    def optimized(*args, env_options_overrides=None, **kwargs):
        return original(*args, env_options_overrides={**OPTIMIZED, **(env_options_overrides or {})}, **kwargs)

    monkeypatch.setattr(compiler, "get_compile_options", optimized)
    yield


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
