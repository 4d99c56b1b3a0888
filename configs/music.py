"""Music from under 100 songs: a small byte LM on 64 ABC tunes of O'Neill's 1850 (music21 corpus),
the rest of the collection held out (200 of them scored). Sized for a CPU: it overfits within a
few minutes, which is what the training chamber (configs/music_chamber.py) is for.

    python -m train.lm --config configs/music.py
    python -m eval.music_eval --run runs/music --best
"""

import ml_collections

from configs import lm


def get_config():
    c = lm.get_config()
    c.workdir = "runs/music"
    c.model.update(dict(d_model=96, num_layers=2, num_heads=2, qk_dim=96, v_dim=192, ffn_dim=256, chunk_size=64))
    c.data = ml_collections.ConfigDict(dict(
        source="music", collection="oneills1850", num_tunes=64, select_seed=0, max_valid_tunes=200,
        valid_fraction=0.0, seq_len=128, batch_size=16,
    ))
    c.train.update(dict(steps=500, lr=3e-3, warmup_steps=30, weight_decay=0.1, eval_every=25, eval_max_bytes=32768,
                        ckpt_every=25, keep=100, log_every=25, sample_every=500, sample_len=300,
                        sample_prompt="X:1\nT:"))
    return c
