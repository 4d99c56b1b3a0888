"""Zip eval end to end on tiny runs (zlib and lz77), and its pieces on known streams."""

import pytest

from eval import zip_eval
from hqf_jax import cli
from hqf_jax.data import zipspace as z
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train
from tests.helpers import ROOT

TINY = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.qk_dim=32", "model.v_dim=64",
        "model.ffn_dim=64", "model.chunk_size=32", "data.seq_len=64", "data.batch_size=8", "data.max_files=8",
        "data.valid_fraction=0.2", "train.steps=10", "train.eval_every=10", "train.ckpt_every=10",
        "train.log_every=10", "train.sample_every=1000", "train.eval_max_bytes=1024"]

TEXT = b"import os\nimport sys\n\ndef main(argv):\n    return os.path.join(sys.prefix, argv[0])\n" * 12


def test_half_prefixes_decode_to_the_first_half():
    for fmt in ("zlib", "lz77", "raw"):
        prefix, held = zip_eval.half_prefix(fmt, TEXT, 128)
        d = z.decode(fmt, prefix)
        assert d.ok and d.data == TEXT[:held] and len(TEXT) // 4 <= held <= len(TEXT) // 2 + 255
    assert zip_eval.cut_generated("lz77", b"LZ77abcdLZ77efgh") == b"LZ77abcd"
    assert zip_eval.common_prefix(b"abcx", b"abcy") == 3 and zip_eval.printable(b"ab\x00\x01") == 0.5


@pytest.mark.slow
def test_zip_eval_end_to_end(tmp_path):
    for fmt in ("zlib", "lz77"):
        cfg = cli.apply_overrides(cli.load_config_file(str(ROOT / "configs/zip.py")), TINY + [f"data.format={fmt}"])
        task, _ = lm_task.build_task(cfg)
        train(task, cfg.train, cfg.mesh, tmp_path / fmt, cli.config_to_json(cfg), progress=False)
        r = zip_eval.measure(str(tmp_path / fmt), samples=4, length=64, continuations=2, cont_length=32,
                             max_bytes=4096)
        assert r["format"] == fmt and (fmt == "lz77" or r["text_bytes"] > 1.2 * r["stream_bytes"])
        assert abs(r["model_bits_per_text_byte"] * r["text_bytes"]
                   - r["model_bits_per_stream_byte"] * r["stream_bytes"]) < 1e-3 * r["text_bytes"]
        for block in (r["generated"], r["random_bytes"], r["continuation"]):
            assert 0.0 <= block["decodes"] <= 1.0
        assert r["continuation"]["docs"] == 2
