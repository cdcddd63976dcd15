"""Benchmarks for asyncwsgi: ``python -m bench [--quick] [--out DIR]``.

Every scenario runs asyncwsgi and its baselines side by side in one run,
alternating rounds, and reports medians and ratios.
"""
