"""GRPO for the Kolmogorov compressor (issue 6): the byte LM plays C and D, V scores fidelity on bytes.

    python -m train.grpo --config configs/grpo.py rl.init_from=runs/lm

Sections: model/train/mesh as configs/lm.py (the shared loop), data (for rl.source=corpus),
grpo (the loss; None = the variant's default), rl (roles, reward, augmentation, gate, patterns).
"""

import ml_collections

from configs import lm


def get_config():
    c = lm.get_config()
    c.mode = "grpo"  # grpo | warmstart (the supervised warm start of configs/kolmogorov_warm.py)
    c.workdir = "runs/grpo"
    # the ~9M policy (configs/lm.py's default before it was resized for a CPU run)
    c.model.update(dict(d_model=256, num_layers=6, num_heads=4, qk_dim=256, v_dim=512, ffn_dim=1280))
    c.data.batch_size = 16
    c.train.update(dict(steps=2000, lr=1e-5, warmup_steps=20, min_lr_ratio=1.0, weight_decay=0.0, grad_clip=1.0,
                        log_every=10, eval_every=200, ckpt_every=200, sample_every=50))
    c.grpo = ml_collections.ConfigDict(dict(
        variant="dr_grpo",  # grpo | dr_grpo | dapo
        eps_low=None, eps_high=None, beta=None, std_normalize=None, std_ddof=None, adv_eps=None,
        aggregation=None, max_len=None, dynamic_sampling=None,
    ))
    c.rl = ml_collections.ConfigDict(dict(
        init_from="",  # an LM run folder (python -m train.lm) to start the policy from; "" = from scratch
        pattern="cdv",  # cdv | ccv | cdv_cc | cqav
        source="corpus", source_len=64, alphabet="ab", unit_len=2,  # corpus windows, or rl.source=repeat | words
        words="the cat sat on mat and dog ran far",  # rl.source=words: random sequences of these words
        sources_per_step=8, group_size=8, updates_per_rollout=1,
        lam=0.5, fidelity="chrf",  # reward = gate * fidelity - lam * len(c)/len(s) - penalty
        code_budget=48, recon_budget=80, prompt_width=144,
        c_temperature=1.0, c_top_p=1.0, d_temperature=1.0, d_greedy=True, train_d=True,
        n_inject=0, n_ban=0, ban_len=1, inject_vocab="az",  # az (letters) | bytes (all 256)
        constraint_weight=0.5, relax_patience=100, relax_min_delta=0.01,
        gate_signal="varentropy", gate_kind="exp", gate_tau=1.0, gate_threshold=0.5, gate_positions="first",
        history_capacity=4096, history_min_fidelity=0.5, ccv_fraction=0.5,
        rollout_impl="loop",  # loop (hqf_jax/rl/rollout.py) | engine (the generation engine's forward, RetNetLM)
        cc_in_gradient=False,  # cdv_cc: the memory rewrite is sampled G times and trained by GRPO (memory.py)
        memory_budget=16, n_questions=2, question_len=3, answer_len=4,
        samples_to_log=4,
    ))
    return c
