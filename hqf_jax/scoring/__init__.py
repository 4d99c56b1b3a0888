"""What scores a byte model, shared by the evaluations (eval/) and the studies (studies/).

Compressor baselines, bits per byte of streams and documents, batched samples and continuations,
the best checkpoint of a run, and the music evaluation. Imports ops, nn, data and trainer; imported
by entry points only.
"""
