"""Benchmarks of Flywheel (``make bench``): the model alone and the whole pipeline.

They print their figures and merge them into ``bench/results/latest.json``; they are not
tests (no ``test_`` names, not collected by pytest). See ``bench/README.md``.
"""
