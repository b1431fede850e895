"""Traces of many trace IDs sent the way an instrumented service sends them: the
OpenTelemetry Python SDK's BatchSpanProcessor (batches of 16) and its OTLP exporter (gRPC
or HTTP). Each trace is a root span with four children; the children of all traces are
made round by round, so every export batch holds spans of many traces and a trace's spans
are spread over several exports.

usage: otel_traces.py ENDPOINT PROTOCOL(grpc|http) TRACES SERVICE

Prints each trace ID (hex) it made, one per line, and exits 0 once everything was exported
(non-zero if an export failed).
"""

import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult


def exporter(endpoint, protocol):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"http://{endpoint}/v1/traces")


class Counting:
    """The exporter, with failed exports counted."""

    def __init__(self, inner):
        self.inner = inner
        self.failed = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result != SpanExportResult.SUCCESS:
            self.failed += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def main():
    endpoint, protocol, traces, service = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    counting = Counting(exporter(endpoint, protocol))
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    # The queue holds every span made (the default 2048 would drop some of a large run).
    provider.add_span_processor(
        BatchSpanProcessor(
            counting,
            max_queue_size=traces * 5 + 16,
            max_export_batch_size=16,
            schedule_delay_millis=200,
        )
    )
    tracer = provider.get_tracer("skylift.e2e")
    roots = [tracer.start_span(f"order-{i}") for i in range(traces)]
    for step in range(4):
        for i, root in enumerate(roots):
            context = trace.set_span_in_context(root)
            tracer.start_span(f"order-{i}-step-{step}", context=context).end()
    for root in roots:
        root.end()
        print(format(root.get_span_context().trace_id, "032x"))
    provider.force_flush()
    provider.shutdown()
    if counting.failed:
        print(f"{counting.failed} exports failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
