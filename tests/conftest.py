import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# byte stores built by tests (hqf_jax.data.store) go to one temporary folder, not the user's ~/.cache
os.environ.setdefault("HQF_DATA_STORE", os.path.join(tempfile.gettempdir(), "hqf_jax_test_stores"))


def _xla_cache_dir() -> tuple[str, bool]:
    """One JAX persistent compilation cache per test session, in a fresh temporary folder: the tests and the
    many `python -m ...` processes they start JIT the same tiny models again and again, each from scratch
    without it. xdist workers inherit the folder from the controller through HQF_TEST_XLA_CACHE. Returns the
    folder and whether this process made it (and so removes it at the end)."""
    inherited = os.environ.get("HQF_TEST_XLA_CACHE", "")
    tmp = os.path.realpath(tempfile.gettempdir())
    if inherited and os.path.isdir(inherited) and os.path.realpath(inherited).startswith(tmp + os.sep):
        return inherited, False
    return tempfile.mkdtemp(prefix="hqf_jax_test_xla_cache_"), True


XLA_CACHE, _OWN_XLA_CACHE = _xla_cache_dir()
# environment variables, so that subprocesses (which copy os.environ) use the same cache; never a user's own cache
os.environ.update({"HQF_TEST_XLA_CACHE": XLA_CACHE, "JAX_COMPILATION_CACHE_DIR": XLA_CACHE,
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
                   # a size limit turns on jax's file lock around reads and writes: processes share the folder
                   "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30)})
if "jax" in sys.modules:  # too late for the environment variables to be read
    _jax = sys.modules["jax"]
    _jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
    _jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _jax.config.update("jax_compilation_cache_max_size", 4 << 30)


def pytest_unconfigure(config):
    if _OWN_XLA_CACHE:
        shutil.rmtree(XLA_CACHE, ignore_errors=True)


# The longest modules first (measured on 2 cores), so that `pytest -n 2 --dist loadfile` does not end with one
# worker running a long module alone; the order of tests inside a module is kept.
LONG_MODULES = ["test_notebooks.py", "test_sharding.py", "test_train_lm.py", "test_faults.py", "test_retention.py",
                "test_multiprocess.py", "test_train_retnphi_study.py", "test_grpo_train.py", "test_retnet_model.py"]


def pytest_configure(config):
    """pytest-xdist >= 3.7 reorders the files of --dist loadfile by their number of tests (most first) unless told
    not to: that ran test_multiprocess.py (one test, about a minute) among the very last, alone on one worker.
    Keep the order below instead (same as --no-loadscope-reorder; a no-op without xdist)."""
    if getattr(config.option, "loadscopereorder", None) is not None:
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Long modules first; tests marked gpu need a GPU backend: `JAX_PLATFORMS=cuda python -m pytest -m gpu`."""
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_MODULES)))  # stable: keeps the order within
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import jax
    import pytest

    if jax.default_backend() != "gpu":
        skip = pytest.mark.skip(reason="needs a GPU: JAX_PLATFORMS=cuda python -m pytest -m gpu")
        for item in gpu_items:
            item.add_marker(skip)
