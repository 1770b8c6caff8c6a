"""sqlstream over HTTP: the Durable Streams protocol (optional extra ``http``).

>>> from sqlstream.http import create_app           # doctest: +SKIP
>>> app = create_app("app.db")                       # an ASGI app: uvicorn, Starlette, FastAPI

Modules: :mod:`~sqlstream.http.protocol` (the protocol's rules, pure functions),
:mod:`~sqlstream.http.app` (the ASGI app on :mod:`sqlstream.aio`),
:mod:`~sqlstream.http.server` (uvicorn with limits, safe defaults and a draining
shutdown), :mod:`~sqlstream.http.metrics` (Prometheus).
"""

from __future__ import annotations

from .app import DurableStreamsApp, HttpConfig, create_app

__all__ = ["DurableStreamsApp", "HttpConfig", "create_app"]
