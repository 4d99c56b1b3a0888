"""The experiments behind the README's verdicts: ``python -m studies.<name> [--out DIR]``.

Each tests one claim of the research notes against a baseline on the same data, and writes its table
(markdown and JSON) and plots into one output folder. Not installed with the package; run from the
repository root. Imported by nothing but tests.
"""
