"""ligeiro's benchmarks: each server started here, measured beside the others in one run.

``python -m benchmarks`` runs the iris benchmark (``bench_iris``) with its defaults and
keeps the results under ``benchmarks/results/``; see ``benchmarks/README.md``. These are
not tests: tests check behaviour, benchmarks check speed.
"""
