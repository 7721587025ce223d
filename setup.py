"""Builds the optional compiled modules of fastws.

``fastws._speedups`` is one module from parts: ``src_c/_speedups.pyx`` includes
``core.pyx`` (the protocol core) and ``transport.pyx`` (the asyncio transport);
their declarations are ``core.pxd`` and ``transport.pxd``, included by
``src_c/fastws/_speedups.pxd`` (where Cython looks for the module's own .pxd).
``fastws._rules_c`` is ``fastws/_rules.py`` compiled: the core's cold rules, which
``_speedups`` imports.

``FASTWS_EXTENSION=0`` skips both; ``=1`` makes a failed build an error; unset
tries them and falls back to pure Python when there is no compiler.

TLS on fastws's own transport (``src_c/fastws_tls.c``) needs the OpenSSL headers
and libraries: they are used when a test program compiles and links against
them (``FASTWS_OPENSSL=0`` skips that); without them the extension still builds
and TLS connections stay on the event loop's SSL transport.
"""

import os
import shutil
import subprocess
import sysconfig
import tempfile

from setuptools import Extension, setup

mode = os.environ.get("FASTWS_EXTENSION", "").strip()


def _have_openssl() -> bool:
    """Whether a C program using libssl compiles and links here."""
    if os.environ.get("FASTWS_OPENSSL", "").strip() == "0":
        return False
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    if not shutil.which(compiler[0]):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write("#include <openssl/ssl.h>\nint main(void) { return SSL_CTX_new(TLS_method()) == 0; }\n")
        command = [*compiler, source, "-o", os.path.join(tmp, "probe"), "-lssl", "-lcrypto"]
        return subprocess.run(command, capture_output=True).returncode == 0


ext_modules = []
if mode != "0":
    try:
        from Cython.Build import cythonize
    except ImportError:
        if mode == "1":
            raise
    else:
        openssl = _have_openssl()
        directives = {
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        }
        ext_modules = cythonize(
            [
                Extension(
                    "fastws._speedups",
                    ["src_c/_speedups.pyx", "src_c/fastws_kernels.c", "src_c/fastws_tls.c"],
                    include_dirs=["src_c"],
                    depends=["src_c/core.pyx", "src_c/core.pxd", "src_c/transport.pyx", "src_c/transport.pxd",
                             "src_c/tls.pyx", "src_c/tls.pxd", "src_c/fastws_tls.h",
                             "src_c/kernels.pxd", "src_c/fastws_kernels.h", "src_c/fastws/_speedups.pxd"],
                    extra_compile_args=["-O3"],
                    define_macros=[("FASTWS_OPENSSL", "1")] if openssl else [],
                    libraries=["ssl", "crypto"] if openssl else [],
                )
            ],
            compiler_directives=directives,
        )
        # The cold rules, compiled from the very source the pure-Python twin imports
        # (fastws/_rules.py) under another name, so that FASTWS_EXTENSION=0 still runs
        # them interpreted. Annotations stay annotations: the rules check their own
        # arguments, with their own messages. The C file goes to build/, not fastws/.
        ext_modules += cythonize(
            [Extension("fastws._rules_c", ["fastws/_rules.py"], extra_compile_args=["-O2"])],
            build_dir="build/cython",
            compiler_directives=dict(directives, annotation_typing=False, binding=True),
        )
        # cythonize() drops optional=True from the Extension it is given.
        for ext in ext_modules:
            ext.optional = mode != "1"

setup(ext_modules=ext_modules)
