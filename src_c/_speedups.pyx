# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled hot path of fastws: the twin of ``fastws/_pure.py``.

Same names and behaviour as the pure-Python module; ``fastws._accel`` picks
one. The parser streams: bytes are consumed as they arrive, unmasked straight
into the bytes object that will carry the message to the application, and
validated as UTF-8 on the way, so an invalid text message is refused before
its end arrives and nothing is copied twice.

One extension module built from parts, laid out like uvloop's ``loop.pyx``:

* ``core.pyx`` (declared in ``core.pxd``): the sans-I/O protocol core,
  ``ProtocolCore``, frame encoding, mask keys, ``apply_mask``, ``Utf8Validator``,
  ``broadcast``. Its cold rules (options, control frames, closing, argument
  checks) are not written here: they are ``fastws._rules.CoreRules``, the same
  functions the pure-Python twin runs.
* ``transport.pyx`` (declared in ``transport.pxd``): the asyncio layer,
  ``SocketTransport`` and the per-thread read buffer. It holds the core as a
  ``ProtocolCore`` and calls ``_data_in`` in C on each recv(); one module keeps
  that call direct and ``fastws._speedups`` the one thing to import.
* this file: the kernel family (``FASTWS_KERNEL_ISA``) and the two includes.
  ``fastws/_speedups.pxd`` (here, under the package name, where Cython looks
  for a module's own declarations) includes both ``.pxd`` files in that order.
"""

import os

from kernels cimport (
    fastws_kernels_isa, fastws_kernels_isa_name, fastws_kernels_isa_available, fastws_kernels_select,
)

IMPLEMENTATION = "cython"


# -- kernel family: the best one this CPU runs, or FASTWS_KERNEL_ISA -------------------------

cdef tuple _kernel_isas(bint available_only):
    cdef int level = 0
    names = []
    while fastws_kernels_isa_name(level) != NULL:
        if not available_only or fastws_kernels_isa_available(level):
            names.append(fastws_kernels_isa_name(level).decode())
        level += 1
    return tuple(names)


# Every family the kernels know, and those this build and CPU can run; weakest first.
KERNEL_ISAS = _kernel_isas(False)
KERNEL_ISAS_AVAILABLE = _kernel_isas(True)


def _check_kernel_isa(str requested, tuple available):
    """Validate a FASTWS_KERNEL_ISA value (already stripped; "" means automatic) against
    the families ``available``: ValueError naming the valid values and what this CPU runs."""
    if requested and requested not in available:
        reason = "unknown value" if requested not in KERNEL_ISAS else "this CPU cannot run it"
        raise ValueError(
            f"FASTWS_KERNEL_ISA={requested!r}: {reason}; valid values: {', '.join(KERNEL_ISAS)} "
            f"or empty for automatic; this CPU runs: {', '.join(available)}"
        )


# Read once, here: the kernels call through function pointers set now.
_requested_isa = os.environ.get("FASTWS_KERNEL_ISA", "").strip()
_check_kernel_isa(_requested_isa, KERNEL_ISAS_AVAILABLE)
if fastws_kernels_select(_requested_isa.encode()) != 0:
    raise RuntimeError(f"the kernels refused FASTWS_KERNEL_ISA={_requested_isa!r}")  # checked just above
# The family in use, and whether FASTWS_KERNEL_ISA chose it.
KERNEL_ISA = fastws_kernels_isa().decode()
KERNEL_ISA_FORCED = bool(_requested_isa)


include "core.pyx"

include "transport.pyx"

include "tls.pyx"
