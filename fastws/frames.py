"""Wire constants of RFC 6455: opcodes, close codes, and the close frame payload."""

from __future__ import annotations

import enum

from .exceptions import ProtocolError

__all__ = [
    "Opcode",
    "CloseCode",
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_NO_STATUS",
    "CLOSE_ABNORMAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_TOO_BIG",
    "CLOSE_INTERNAL_ERROR",
    "is_valid_close_code",
    "check_close_code_to_send",
    "build_close_payload",
    "MAX_CONTROL_PAYLOAD",
]

MAX_CONTROL_PAYLOAD = 125

# Plain ints for the cores (comparisons with an IntEnum member cost more); the
# compiled core has the same values as C constants and checks them at import.
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # never on the wire: a close frame without a code
CLOSE_ABNORMAL = 1006  # never on the wire: no close frame at all
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire
    ABNORMAL_CLOSURE = 1006  # never on the wire
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 7.4 and the IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def check_close_code_to_send(code: int, reason: str) -> bytes:
    """Validate what the application wants to close with; return the encoded reason."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"close code must be an int, not {type(code).__name__}")
    if not isinstance(reason, str):
        raise TypeError(f"close reason must be str, not {type(reason).__name__}")
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}: use 1000-1003, 1007-1014 or 3000-4999")
    encoded = reason.encode()
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        raise ValueError("close reason is longer than 123 bytes once encoded")
    return encoded


def truncate_reason(reason: str) -> bytes:
    """``reason`` encoded, cut to the 123 bytes a close frame allows without splitting a character."""
    return reason.encode()[:MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode()


def build_close_payload(code: int | None, reason: bytes = b"") -> bytes:
    """The payload of a close frame; ``None`` sends an empty one (no status)."""
    if code is None:
        return b""
    return code.to_bytes(2, "big") + reason


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Code and reason from a received close payload; 1005 when it is empty.

    Raises ProtocolError with 1002 for a bad length or code and 1007 for a
    reason that is not UTF-8.
    """
    if not payload:
        return CloseCode.NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = bytes(payload[2:]).decode()
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not valid UTF-8", CloseCode.INVALID_DATA) from None
    return code, reason
