"""The training chamber on the music path: configs/music.py plus a ``chamber`` section. With
``interventions="none"`` it is a plain run that logs where validation bpb plateaus; the other
arms carry on past that point (see hqf_jax/trainer/interventions.py and studies/chamber.py).

    python -m train.lm --config configs/music_chamber.py chamber.interventions=shrink_perturb
    python -m studies.chamber --out runs/chamber
"""

from configs import music
from hqf_jax.trainer import interventions


def get_config():
    c = music.get_config()
    c.workdir = "runs/music_chamber"
    c.train.update(dict(steps=400, eval_every=25, ckpt_every=25, keep=100))
    c.chamber = interventions.default_config()
    c.chamber.update(dict(interventions="none", trigger="plateau", patience=2, cooldown=3, max_triggers=3,
                          shrink=0.5, perturb=0.1, noise_std=0.05, rewarm_peak=1.0, rewarm_warmup=10,
                          rewarm_decay=60, ema_decay=0.98, ema_kind="ema"))
    return c
