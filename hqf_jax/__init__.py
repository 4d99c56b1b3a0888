"""hqf-jax: byte-level retention LMs, learned compression, phi-grid quantization, holographic memory."""
