"""Load tests and benchmarks: ``make bench-store`` runs ``python -m loadtests.bench_store``."""
