"""Builds the optional Cython extension ``fastws._speedups`` from ``src_c/``.

``FASTWS_EXTENSION=0`` skips it; ``=1`` makes a failed build an error; unset
tries it and falls back to pure Python when there is no compiler.
"""

import os

from setuptools import Extension, setup

mode = os.environ.get("FASTWS_EXTENSION", "").strip()
ext_modules = []
if mode != "0":
    try:
        from Cython.Build import cythonize
    except ImportError:
        if mode == "1":
            raise
    else:
        ext_modules = cythonize(
            [
                Extension(
                    "fastws._speedups",
                    ["src_c/_speedups.pyx", "src_c/fastws_kernels.c"],
                    include_dirs=["src_c"],
                    extra_compile_args=["-O3"],
                )
            ],
            compiler_directives={
                "language_level": "3",
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
            },
        )
        # cythonize() drops optional=True from the Extension it is given.
        for ext in ext_modules:
            ext.optional = mode != "1"

setup(ext_modules=ext_modules)
