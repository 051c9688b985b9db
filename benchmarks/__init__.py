"""Benchmarks of npgrad and the Transformer (not timed tests): ``python -m benchmarks COMMAND``.

Each command is a module of this package with a ``main(argv)``; see ``benchmarks/__main__.py``
for the list and benchmarks/RESULTS.md for the latest figures.
"""
