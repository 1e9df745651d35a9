# The one compiled part: the CPU's dense scan (harness/engine/_scan.c). optional=True: without a
# C compiler the install still succeeds and the same figures come from PyTorch ops, slower
# where outliers are dense (harness/engine/kernels.py). Everything else is in pyproject.toml.
from setuptools import Extension, setup

setup(ext_modules=[Extension("harness.engine._scan", ["harness/engine/_scan.c"], optional=True)])
