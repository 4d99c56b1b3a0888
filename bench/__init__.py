"""Speed benchmarks for the GPU: ``python -m bench.<name>`` (``--small`` runs tiny shapes on a CPU).

Each times work on the device (many iterations inside one jitted loop) beside a baseline measured in the
same run, and prints its table last. ``bench/run_gpu.sh`` runs groups of them under time limits. Not
installed with the package; run from the repository root. Imported by nothing but tests.
"""
