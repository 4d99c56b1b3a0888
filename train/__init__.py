"""Entry points that train: ``python -m train.<track> --config configs/<x>.py [key=value ...]``.

Each parses a config and hands a task to the one shared loop (``hqf_jax.trainer.loop``). Imported by nothing.
"""
