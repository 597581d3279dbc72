"""Benchmarks and reproductions of mtkd; not part of the installed package.

Benchmarks: `bench_*.py` (each one measurement, its tables printed as
markdown), `run_benchmarks.py` (all of them, one process each), their
shared quickstart student and synthetic data in `bench_common.py` and the
PyTorch reference student in `torch_reference.py`. Reproductions:
`repro_*.py`, one driver per study (`repro_all.py` runs every one), which
launch `python -m mtkd.main` runs through `repro_common.py` and rebuild
their tables and plots with `report.py`. Every script is a module run from
the repository root, `python -m experiments.<script> --help`, and imports
mtkd from the installed package; measured numbers and the commands that
produced them are in experiments/README.md.
"""
