"""Two of BentoML's per-request middlewares taken out of the worker's ASGI stack, where they cost
more than they give (measured with wrk and py-spy, README, Performance):

- its timeout middleware: it starts a timer for every request and never cancels it, so each
  request's future and context (tracing span included, some 20 objects) lived on for the whole
  timeout; the garbage collector's full passes over them paused the worker for 100 to 500 ms
  under load. The guard (guard.py) answers 504 itself and cancels what it starts.
- the OpenTelemetry middleware, while tracing is not configured (no exporter, or sample rate 0,
  BentoML's default): it records nothing then, but building each request's span and attributes
  took about half of a no-op request's time. Configured tracing keeps it.

`trim()` runs in every process that imports the service, before BentoML builds its app.
"""

from __future__ import annotations


def tracing_configured() -> bool:
    from bentoml._internal.configuration.containers import BentoMLContainer

    tracing = BentoMLContainer.tracing
    return bool(tracing.exporter_type.get()) and (tracing.sample_rate.get() or 0) > 0


def dropped_middlewares() -> tuple[type, ...]:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return (TimeoutMiddleware,) if tracing_configured() else (TimeoutMiddleware, OpenTelemetryMiddleware)


_TRIMMED = False


def trim() -> None:
    """Make BentoML's app factory leave those middlewares out (idempotent)."""
    global _TRIMMED
    if _TRIMMED:
        return
    from _bentoml_impl.server.app import ServiceAppFactory

    bentoml_middlewares = ServiceAppFactory.middlewares

    def middlewares(self):
        dropped = dropped_middlewares()
        return [m for m in bentoml_middlewares.fget(self) if m.cls not in dropped]

    ServiceAppFactory.middlewares = property(middlewares)
    _TRIMMED = True
