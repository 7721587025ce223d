"""WebSocket extensions (RFC 6455 section 9): permessage-deflate (RFC 7692)."""

from .permessage_deflate import Deflate, PerMessageDeflate, client_extension, server_extension_factory

__all__ = ["Deflate", "PerMessageDeflate", "client_extension", "server_extension_factory"]
