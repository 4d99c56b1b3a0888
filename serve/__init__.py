"""`python -m serve --run RUN`: the HTTP server over the inference engine (all logic in hqf_jax/infer).
An entry point: imports hqf_jax, imported by nothing."""
