# Everything is declared in pyproject.toml except the cffi C extension:
# pyproject has no key for it, so `cffi_modules=[...]` goes in this call.
from setuptools import setup

setup(cffi_modules=["qcnn/_build_kernels.py:ffibuilder"])
