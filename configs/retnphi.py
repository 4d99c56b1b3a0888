"""RetNPhi on the default token model (configs/token_lm.py, ~4M parameters, GPU or a patient CPU):

    python -m train.token_lm --config configs/token_lm.py          # writes runs/token_lm/hf
    python -m train.retnphi --config configs/retnphi.py [model.train_mode=full]
    python -m studies.bootstrap --config configs/retnphi.py --token-config configs/token_lm.py --out runs/bootstrap_study_gpu

Data/train parts are configs/lm.py's, so valid bpb sits beside the RetNet byte LM of train.lm.
"""

from configs import lm, retnphi_tiny


def get_config():
    c = lm.get_config()
    c.task = "retnphi"
    c.workdir = "runs/retnphi"
    c.data.batch_size = 16
    c.train.update(dict(steps=400, lr=2e-3))
    c.model = retnphi_tiny.get_config().model
    c.model.checkpoint = "runs/token_lm/hf"
    c.model.retnphi.chunk_size = 64
    c.model.lora.rank = 16
    c.model.lora.alpha = 32.0
    return c
