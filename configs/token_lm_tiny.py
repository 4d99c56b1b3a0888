"""A ~1M-parameter token model on 60 stdlib files: the checkpoint of configs/retnphi_tiny.py and of
studies/bootstrap.py on CPU (a few minutes on 2 cores)."""

from configs import token_lm


def get_config():
    c = token_lm.get_config()
    c.workdir = "runs/token_lm_tiny"
    c.tokenizer.vocab_size = 1024
    c.model.update(dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512))
    c.data.update(dict(max_files=60, seq_len=128, batch_size=8))
    c.train.update(dict(steps=300, lr=3e-3, warmup_steps=30, eval_every=100, eval_max_tokens=8192,
                        ckpt_every=100, sample_every=300, sample_len=32))
    return c
