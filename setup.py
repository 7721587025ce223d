"""Builds the optional Cython extension ``fastws._speedups`` from ``src_c/``.

One module from parts: ``_speedups.pyx`` includes ``core.pyx`` (the protocol
core) and ``transport.pyx`` (the asyncio transport); their declarations are
``core.pxd`` and ``transport.pxd``, included by ``src_c/fastws/_speedups.pxd`` (where Cython looks for the module's own .pxd).

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
                    depends=["src_c/core.pyx", "src_c/core.pxd", "src_c/transport.pyx", "src_c/transport.pxd",
                             "src_c/kernels.pxd", "src_c/fastws_kernels.h", "src_c/fastws/_speedups.pxd"],
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
