"""Entry points that score a run: ``python -m eval.<name> --run RUN``.

bpb (held-out bits per byte beside gzip/xz), generate, quant_eval, holo_eval, holo_generate,
kolmogorov_eval, music_eval, digits_eval, zip_eval. Each is thin: the scoring lives in ``hqf_jax``
(mostly ``hqf_jax.scoring``). Imported by nothing but tests and notebooks. Speed benchmarks are in
``bench/``, research studies in ``studies/``.
"""
