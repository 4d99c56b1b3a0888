"""SO(4)/Cl(3,1) holographic memory.

memory      config, state, jitted store / retrieve / predict / log_probs / dream
tower       basin keys (Clifford coefficients quantised at phi^-8) and 16^L satellite routing
episodic    exact context -> target cache: an on-device open-addressing hash table
prototypes  per-bucket heavy-hitter targets (dreaming)
checkpoint  orbax save / restore
baselines   bucketed HRR and FHRR; ngram: interpolated Kneser-Ney; language: byte-stream helpers
The algebra lives in hqf_jax/ops (clifford, grace, so4); kernels in pallas_kernels/geometric_product.py.
"""
