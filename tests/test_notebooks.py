"""The tour notebooks: committed without outputs, equal to their generator, and each one runs top to bottom
in small mode on a CPU (nbclient, working directory the repository root); a cell that raises fails the test.
The runs here set HQF_NB_TINY=1 as well: small mode with fewer layers, steps and bytes (the notebooks' own
choice, in their cells); every cell runs and prints the same checks."""

from __future__ import annotations

import importlib.util
import re
import resource
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra (pip install -e '.[test]') brings nbformat and nbclient")
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NAMES = ["01_quickstart", "02_retnphi_bootstrap", "03_quantize", "04_holographic_memory", "05_kolmogorov_grpo",
         "06_restore"]
# what each notebook must print (regex -> minimum count): the properties its cells check, not just "it ran"
EXPECT = {
    "01_quickstart": {r"byte LM +\d\.\d{3} bits/byte": 1, r"gzip -9 +\d\.\d{3} bits/byte": 1, r"xz -9e +\d\.\d{3}": 1,
                      r"\['10', '20'\] <- orbax checkpoint steps": 1},
    "02_retnphi_bootstrap": {r"layer 0 q_proj reused: True": 1, r"fresh base \+ adapter file == trained checkpoint: True": 1,
                             r"adapter: [\d,]+ params in \d+ tensors": 1, r"merged 7 adapters": 1,
                             r"held-out bits/byte \([\d,]+ bytes\): RetNPhi \d\.\d{3}": 1,
                             r"delta \d+ KiB vs base checkpoint": 1},
    "03_quantize": {r"within the codec's bound: True": 6, r"data section ([\d,]+) bytes = accounted \1 bytes": 1,
                    r"phi5\+u8/g64 +13\.500": 1},
    "04_holographic_memory": {r"e_i\^2 = \[1\.0, 1\.0, 1\.0, -1\.0\]": 1, r"recalled token 42 \(stored 42\)": 3,
                              r"Kneser-Ney order 5: top-1": 1},
    "05_kolmogorov_grpo": {r"mean reward: first \d+ steps": 1, r"zlib -9 raw, per source": 1},
    "06_restore": {r"max \|parameter difference\| to the model in memory: 0\.0\n": 1, r"between the uninterrupted run and the resumed copy: 0\.0\n": 1,
                   r"resumed from step 10 ": 1, r"resumed from step 20 ": 1,
                   r"continued to step 30 on mesh": 1, r"P\('fsdp', None\)": 1},
}


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NB_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_six_notebooks_committed_without_outputs():
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == NAMES
    for name in NAMES:
        nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        code = _code_cells(nb)
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"
        install, setup = code[0].source, code[1].source
        # the install cell pip-installs the repository only when hqf_jax is not importable
        assert 'find_spec("hqf_jax") is None' in install and "REPO_URL" in install and "pip" in install
        # the set-up cell detects the accelerator and defaults to small mode without one
        assert "jax.default_backend()" in setup and 'SMALL = os.environ.get("HQF_NB_SMALL", "0" if ACCEL else "1")' in setup


def test_notebooks_equal_their_generator():
    gen = _generator()
    assert list(gen.NOTEBOOKS) == NAMES
    for name in NAMES:
        assert (NB_DIR / f"{name}.ipynb").read_text() == gen.render(name), (
            f"{name}.ipynb differs from notebooks/make_notebooks.py; run python notebooks/make_notebooks.py")


def _kernel_name(tmp_path_factory) -> str:
    """The python3 kernelspec (it runs this interpreter); registered into a temporary folder when absent."""
    try:
        KernelSpecManager().get_kernel_spec("python3")
        return "python3"
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        prefix = tmp_path_factory.mktemp("kernel")
        install(kernel_name="python3", prefix=str(prefix))
        import os

        os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
        return "python3"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One folder for every notebook's runs (and the shared compilation cache) of this test session."""
    return tmp_path_factory.mktemp("notebook_runs")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_small_mode(name, runs_dir, tmp_path_factory, monkeypatch):
    for key, value in dict(JAX_PLATFORMS="cpu", HQF_NB_SMALL="1", HQF_NB_TINY="1", HQF_NB_RUNS=str(runs_dir), HF_HUB_OFFLINE="1",
                           HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false").items():
        monkeypatch.setenv(key, value)  # the kernel inherits this environment
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name=_kernel_name(tmp_path_factory),
                            resources={"metadata": {"path": str(ROOT)}})
    start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{name} failed in small mode:\n{str(e)[-3000:]}", pytrace=False)
    elapsed, cpu1 = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime  # the kernel's CPU seconds
    code = _code_cells(nb)
    assert all(c.execution_count is not None for c in code)
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "SMALL=True (TINY)" in text and "backend cpu" in text
    for pattern, count in EXPECT[name].items():
        assert len(re.findall(pattern, text)) >= count, f"{name}: expected {count}x {pattern!r} in its output"
    figures = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert figures >= (0 if name in ("02_retnphi_bootstrap", "06_restore") else 1), f"{name}: its plot is missing"
    print(f"{name}: {elapsed:.1f} s wall, {cpu:.1f} s kernel CPU, {len(code)} code cells, {figures} figure(s)")
