"""What scores a byte model, shared by the evaluations (eval/) and the studies (studies/).

Compressor baselines, bits per byte of streams and documents, batched samples and continuations,
and the music evaluation (the best checkpoint of a run is the trainer's: ``lm_task.load_run(run, "best")``). Imports ops, nn, data and trainer; imported
by entry points only.
"""
