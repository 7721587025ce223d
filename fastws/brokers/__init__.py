"""Brokers: what carries publishes between the pub/sub hubs of several processes.

One module per broker; ``make_broker`` picks one by the URL's scheme. The
modules import their client library only when a broker is made, so a broker
whose library is missing costs nothing until it is asked for.

- ``redis://``, ``rediss://``, ``unix://``: ``redis.RedisBroker`` (``pip install 'fastws[redis]'``)
- ``redis-cluster://``: ``redis_cluster.RedisClusterBroker`` (``pip install 'fastws[redis]'``)
- ``nats://``: ``nats.NatsBroker`` (``pip install 'fastws[nats]'``)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .base import Broker, QueuedBroker

__all__ = ["Broker", "QueuedBroker", "make_broker", "register_scheme"]

# scheme -> "module:class" (imported when first used) or a factory taking the URL.
_SCHEMES: dict[str, str | Callable[[str], Broker]] = {
    "redis": "fastws.brokers.redis:RedisBroker",
    "rediss": "fastws.brokers.redis:RedisBroker",
    "unix": "fastws.brokers.redis:RedisBroker",
    "redis-cluster": "fastws.brokers.redis_cluster:RedisClusterBroker",
    "nats": "fastws.brokers.nats:NatsBroker",
}


def register_scheme(scheme: str, factory: str | Callable[[str], Broker]) -> None:
    """Make ``broker="SCHEME://..."`` (and ``--broker``) build ``factory(url)``.

    ``factory`` is a callable or ``"module:Class"``, imported on first use.
    """
    _SCHEMES[scheme.lower()] = factory


def make_broker(broker: str | Broker | None) -> Broker | None:
    """``broker=`` of ``serve`` / ``create_server``: None (in-process), a URL, or a Broker."""
    if broker is None or isinstance(broker, Broker):
        return broker
    if isinstance(broker, str):
        scheme = broker.split("://", 1)[0].lower() if "://" in broker else ""
        factory = _SCHEMES.get(scheme)
        if factory is None:
            known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
            raise ValueError(f"unsupported broker URL {broker!r} (expected one of {known})")
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
            assert callable(factory)
        return factory(broker)
    raise TypeError(f"broker must be a URL or a fastws.brokers.Broker, not {type(broker).__name__}")
