"""Build hook for the optional C hot paths (system/_speedups.c); all metadata lives in pyproject.toml."""

from setuptools import Extension, setup

# optional: without a C compiler the install goes on and the gateway uses its pure-Python paths
setup(ext_modules=[Extension("system._speedups", ["system/_speedups.c"], optional=True)])
