# The C extension (chordlab._simd) is declared here: setuptools' cffi_modules has no pyproject.toml form.
from setuptools import setup

setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"])
