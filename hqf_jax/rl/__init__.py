"""The Kolmogorov compressor: GRPO loss and advantages, rollouts, the C/D/V roles, fidelity scores, the
varentropy gate, and the GRPO task on the shared loop.

Imports ``trainer``, ``data`` and ``ops``; imported by entry points only.
"""
