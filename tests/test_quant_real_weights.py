"""studies.quant_real_weights end to end at toy size on CPU: a token model and a byte LM pretrained in the same
process, every codec's bits and quality, equal-bits pairing with int-k, the phi^-k clustering test, report."""

import json
import math
import shutil

import numpy as np
import pytest

from hqf_jax.data.sources import stdlib_root

METHODS = "phi5,phi5:sort=true,phi5u4,int4,int:bits=5,int8,int:bits=9,nf4"
TINY = ["model.d_model=64", "model.num_layers=2", "model.num_heads=2", "model.qk_dim=64", "model.v_dim=128",
        "model.ffn_dim=128", "data.seq_len=32", "data.batch_size=4", "train.eval_max_bytes=512", "train.warmup_steps=1",
        "token.tokenizer.vocab_size=320", "token.tokenizer.sample_bytes=20000", "token.model.hidden_size=64",
        "token.model.intermediate_size=128", "token.model.num_hidden_layers=2", "token.model.num_attention_heads=2",
        "token.model.num_key_value_heads=1", "token.data.seq_len=32", "token.data.batch_size=4",
        "token.train.warmup_steps=1", "token.train.eval_max_tokens=256"]


@pytest.mark.study
def test_quant_real_weights_tables_both_models(tmp_path, monkeypatch):
    from studies import quant_real_weights
    from tests.helpers import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HQF_DATA_STORE", str(tmp_path / "store"))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("textwrap.py", "bisect.py", "heapq.py", "keyword.py", "colorsys.py", "glob.py"):
        shutil.copy(f"{stdlib_root()}/{name}", data / name)
    out = tmp_path / "study"
    report = quant_real_weights.main([
        "--token-config", "configs/token_lm_tiny.py", "--byte-config", "configs/lm_tiny.py", "--out", str(out),
        "--pretrain-mb", "0.1", "--valid-mb", "0.05", "--token-steps", "4", "--byte-steps", "4", "--methods", METHODS,
        "--cluster-weights", "20000", "--n-null", "3", "--no-progress", "data.source=files", f"data.paths={data}",
        "data.valid_fraction=0.3", "data.max_files=0", *TINY])

    assert set(report["models"]) == {"token model", "byte LM"}
    for name, m in report["models"].items():
        rows = {r["spec"]: r for r in m["rows"][1:]}
        assert list(rows) == METHODS.split(",") and not any(r.get("skipped") for r in rows.values()), name
        assert all(math.isfinite(r["loss"]) for r in m["rows"]), name
        # honest bits: codes + a bf16 scale per 64 weights; sorting adds the permutation (log2 of the row length)
        assert rows["int8"]["quantized_bits_per_weight"] == pytest.approx(8.25, abs=0.01)
        assert rows["phi5"]["quantized_bits_per_weight"] == pytest.approx(5.25, abs=0.01)
        assert rows["phi5:sort=true"]["quantized_bits_per_weight"] >= rows["phi5"]["quantized_bits_per_weight"] + 6
        assert rows["phi5"]["int_equal_bits"]["method"].startswith("int5")
        assert rows["phi5u4"]["int_equal_bits"]["method"].startswith("int9")
        assert rows["int8"]["sqnr_db"] > rows["int4"]["sqnr_db"] + 15  # ~6 dB a bit
        bands = m["clustering"]["bands"]
        assert sum(bands["count_share"]) == pytest.approx(1.0)
        assert 0 < m["clustering"]["sampled_weights"] <= 40000
    token = report["models"]["token model"]
    ref = token["rows"][0]
    assert ref["token_loss_nats"] == pytest.approx(ref["loss"] * math.log(2) * token["bytes_per_token"])
    assert report["models"]["byte LM"]["info"]["steps"] == 4 and token["info"]["steps"] == 4

    table = (out / "table.md").read_text()
    assert "x vs fp32" in table and "phi^-k clustering" in table
    assert json.loads((out / "results.json").read_text())["methods"] == METHODS.split(",")
    assert (out / "quality_vs_bits.png").stat().st_size > 10_000
    assert np.isfinite(report["seconds"])
