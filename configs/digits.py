"""Images with a held-out class: scikit-learn's 8x8 digits as "digit k\\n" + binary PGM, class 7 never
seen in training. Sized for a CPU (a few minutes).

    python -m train.lm --config configs/digits.py
    python -m eval.digits_eval --run runs/digits
"""

import ml_collections

from configs import lm


def get_config():
    c = lm.get_config()
    c.workdir = "runs/digits"
    c.model.update(dict(d_model=96, num_layers=2, num_heads=2, qk_dim=96, v_dim=192, ffn_dim=256, chunk_size=64))
    c.data = ml_collections.ConfigDict(dict(
        source="digits", holdout_class=7, valid_fraction=0.1, seq_len=164, batch_size=16,
    ))
    c.train.update(dict(steps=800, lr=3e-3, warmup_steps=40, weight_decay=0.1, eval_every=100, eval_max_bytes=16400,
                        ckpt_every=100, keep=20, log_every=25, sample_every=800, sample_len=64,
                        sample_prompt="digit 3\nP5\n8 8\n16\n"))
    return c
