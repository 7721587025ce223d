"""The one place that decides between the compiled hot path and its pure-Python twin.

``FASTWS_EXTENSION=0`` forces pure Python, ``=1`` makes a missing extension an
ImportError, unset uses the extension when it was built.

``FASTWS_KERNEL_ISA`` (read by the extension when it is imported) forces a kernel
family; a value the CPU cannot run, or an unknown one, is a ValueError at import,
never a silent fallback. Set to a family while ``FASTWS_EXTENSION`` is unset, it also
makes a missing extension an ImportError (kernels were asked for, and there are none).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

__all__ = [
    "USING_EXTENSION",
    "IMPLEMENTATION",
    "KERNEL_ISA",
    "KERNEL_ISA_FORCED",
    "apply_mask",
    "Utf8Validator",
    "ProtocolCore",
    "encode_frame",
    "frame_header",
    "broadcast",
    "sum_counters",
    "SocketTransport",
    "TLSTransport",
    "tls_attachable",
    "TLS_AVAILABLE",
    "OPEN",
    "CLOSING",
    "CLOSED",
]

if TYPE_CHECKING:
    # Both twins have the same API; type checkers see it through the extension's
    # stub (_speedups.pyi), whichever twin runs.
    from ._speedups import (
        CLOSED,
        CLOSING,
        OPEN,
        ProtocolCore,
        SocketTransport as _SocketTransport,
        TLSTransport as _TLSTransport,
        Utf8Validator,
        apply_mask,
        broadcast,
        encode_frame,
        frame_header,
        sum_counters,
    )

    USING_EXTENSION: bool
    IMPLEMENTATION: str
    KERNEL_ISA: str
    KERNEL_ISA_FORCED: bool
    SocketTransport: type[_SocketTransport] | None
    TLSTransport: type[_TLSTransport] | None
    tls_attachable: Callable[[ssl.SSLObject], bool] | None
    TLS_AVAILABLE: bool
else:
    _MODE = os.environ.get("FASTWS_EXTENSION", "").strip()
    if _MODE not in ("", "0", "1"):
        raise ImportError(f"FASTWS_EXTENSION must be 0, 1 or unset, not {_MODE!r}")

    _ISA = os.environ.get("FASTWS_KERNEL_ISA", "").strip()

    if _MODE == "0":
        _impl = None
    else:
        try:
            # A bad FASTWS_KERNEL_ISA raises ValueError here, which passes through.
            from . import _speedups as _impl
        except ImportError as exc:
            if _MODE == "1" or _ISA:
                why = "FASTWS_EXTENSION=1" if _MODE == "1" else f"FASTWS_KERNEL_ISA={_ISA}"
                raise ImportError(
                    f"{why} but the compiled extension fastws._speedups is missing: "
                    "reinstall with a C compiler available (pip install .)"
                ) from exc
            _impl = None

    if _impl is None:
        from . import _pure as _impl

    USING_EXTENSION = _impl.IMPLEMENTATION != "python"
    IMPLEMENTATION = _impl.IMPLEMENTATION
    KERNEL_ISA = getattr(_impl, "KERNEL_ISA", "python")
    KERNEL_ISA_FORCED = getattr(_impl, "KERNEL_ISA_FORCED", False)
    apply_mask = _impl.apply_mask
    Utf8Validator = _impl.Utf8Validator
    ProtocolCore = _impl.ProtocolCore
    encode_frame = _impl.encode_frame
    frame_header = _impl.frame_header
    broadcast = _impl.broadcast
    sum_counters = _impl.sum_counters
    # The compiled path's own transport for open connections (None in pure Python:
    # the event loop's transports serve).
    SocketTransport = getattr(_impl, "SocketTransport", None)
    # Its TLS twin, and whether it can run a given SSLObject (None in pure Python).
    TLSTransport = getattr(_impl, "TLSTransport", None)
    tls_attachable = getattr(_impl, "tls_attachable", None)
    TLS_AVAILABLE = getattr(_impl, "TLS_AVAILABLE", False)
    OPEN, CLOSING, CLOSED = _impl.OPEN, _impl.CLOSING, _impl.CLOSED
