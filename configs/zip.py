"""Zip-space: the byte LM trained on zlib streams of Python stdlib text (1 KiB chunks, sync-flushed
every 256 input bytes so a document's compressed first half is a clean prefix). Compare with
configs/zip_lz77.py (byte-aligned LZ77 triples) and configs/zip_raw.py (the same text, raw).

    python -m train.lm --config configs/zip.py
    python -m eval.zip_eval --run runs/zip --raw-run runs/zip_raw
"""

import ml_collections

from configs import lm


def get_config():
    c = lm.get_config()
    c.workdir = "runs/zip"
    c.model.update(dict(d_model=96, num_layers=2, num_heads=2, qk_dim=96, v_dim=192, ffn_dim=256, chunk_size=64))
    c.data = ml_collections.ConfigDict(dict(
        source="zip", format="zlib", text_source="stdlib", paths="", max_files=60, valid_fraction=0.05,
        doc_bytes=1024, flush_every=256, seq_len=256, batch_size=16,
    ))
    c.train.update(dict(steps=600, lr=3e-3, warmup_steps=40, eval_every=100, eval_max_bytes=32768,
                        ckpt_every=100, keep=3, log_every=25, sample_every=600, sample_len=64, sample_prompt="x"))
    return c
