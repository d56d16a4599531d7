"""One trace per command, across Service Bus: W3C trace context on every message.

The Functions Python worker sets OpenTelemetry up itself (azure-monitor-opentelemetry, when
the app setting PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY is true) and makes the host's
trace context current in each invocation. What it cannot do is carry that context through
Service Bus for us, so:

- `current_headers` gives the current ``traceparent``/``tracestate``, which the bus stamps on
  every message it publishes (an HTTP call's context on its command, a step's on its
  AppendEntries and replies);
- `batch_span` runs a server's step for one batch inside a span that continues the trace of
  the first message carrying one (linking the others), so the command's trace goes on through
  the leader, every follower it replicates to, and back.

Only the OpenTelemetry API is used, and only if it is installed: without it every function
here does nothing, and the app runs (and indexes) with no Application Insights at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # telemetry is optional: requirements.txt installs it, the tests may not
    trace = None  # type: ignore[assignment]

TRACER_NAME = "raft"
W3C_HEADERS = ("traceparent", "tracestate")

_propagator = TraceContextTextMapPropagator() if trace is not None else None


def enabled() -> bool:
    """Whether the OpenTelemetry API is installed (the worker may still not have set it up)."""
    return trace is not None


def current_headers() -> dict[str, str]:
    """The current span's W3C trace context, or nothing if there is none."""
    if _propagator is None:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return {name: carrier[name] for name in W3C_HEADERS if name in carrier}


@contextmanager
def batch_span(
    name: str, carriers: Sequence[Mapping[str, str]], attributes: Mapping[str, str | int]
) -> Iterator[None]:
    """A consumer span around one batch's step: a child of the first carrier's trace context
    (the current context if none has one), with links to the others' contexts."""
    if trace is None or _propagator is None:
        yield
        return
    contexts = []
    for carrier in carriers:
        span_context = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
        if span_context.is_valid and span_context not in contexts:
            contexts.append(span_context)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts else None
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        links=[trace.Link(c) for c in contexts[1:]],
        attributes=dict(attributes),
    ):
        yield
