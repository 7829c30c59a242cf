"""An independent OpenTelemetry peer: the calls of Agent-SPM event lines traced with the
OpenTelemetry Python SDK, encoded by its OTLP exporter's encoder (opentelemetry-proto's
ExportTraceServiceRequest) as otlp_proto or otlp_json, and produced with confluent-kafka, as the
Collector's Kafka exporter would after its groupbytrace processor (whole traces per message).

Each call is one trace: an invoke_agent span naming the agent, ended after its execute_tool child
(so exported after it). Messages carry whole traces, up to 64 spans, in the order of the input.

usage: otel_peer.py EVENTS.jsonl BROKERS TOPIC proto|json
       otel_peer.py EVENTS.jsonl - OUT.jsonl json   (OTLP/JSON requests, one per line, to a file
                                                     for `guardian produce`, instead of producing)
prints: "<messages> messages, <spans> spans"
"""

import json
import sys

from confluent_kafka import Producer
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

def ns(rfc3339):
    from datetime import datetime

    t = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return int(t.timestamp() * 1_000_000) * 1_000


def hex_ids(node):
    """OTLP/JSON writes trace and span ids as hex, where proto3 JSON writes base64."""
    import base64

    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                node[k] = base64.b64decode(v).hex()
            else:
                hex_ids(v)
    elif isinstance(node, list):
        for v in node:
            hex_ids(v)


def main():
    events_path, brokers, topic, encoding = sys.argv[1:5]
    exporter = InMemorySpanExporter()
    providers = {}

    def tracer(env):
        if env not in providers:
            p = TracerProvider(
                resource=Resource.create(
                    {"service.name": "agents-platform", "deployment.environment.name": env}
                )
            )
            p.add_span_processor(SimpleSpanProcessor(exporter))
            providers[env] = p
        return providers[env].get_tracer("agent-sdk")

    to_file = brokers == "-"
    if to_file:
        out = open(topic, "wb")
    else:
        producer = Producer({"bootstrap.servers": brokers, "message.max.bytes": 4_000_000})
    messages = spans = 0

    def send():
        nonlocal messages, spans
        finished = exporter.get_finished_spans()
        exporter.clear()
        if not finished:
            return
        request = encode_spans(finished)
        if encoding == "proto":
            payload = request.SerializeToString()
        else:
            doc = MessageToDict(request, use_integers_for_enums=True)
            hex_ids(doc)
            payload = json.dumps(doc).encode()
        if to_file:
            out.write(payload + b"\n")
        else:
            producer.produce(topic, payload, key=b"fleet")
            producer.poll(0)
        messages += 1
        spans += len(finished)

    with open(events_path) as f:
        for line in f:
            if not line.strip():
                continue
            ev = json.loads(line)
            t = ns(ev["timestamp"])
            env = ev.get("safe_payload", {}).get("environment", "prod")
            agent = ev["agent_id"]
            tr = tracer(env)
            root = tr.start_span(
                "invoke_agent " + agent,
                start_time=t,
                attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": agent},
            )
            attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": ev["tool_name"]}
            size = ev.get("safe_payload", {}).get("bytes")
            if size is not None:
                attrs["app.tool.bytes"] = size
            child = tr.start_span(
                "execute_tool " + ev["tool_name"],
                context=trace.set_span_in_context(root),
                start_time=t,
                attributes=attrs,
            )
            child.end(end_time=t + 1_000_000)
            root.end(end_time=t + 2_000_000)
            # Whole traces per message, up to 64 spans.
            if len(exporter.get_finished_spans()) >= 64:
                send()
    send()
    if to_file:
        out.close()
    else:
        left = producer.flush(60)
        if left:
            sys.exit(f"{left} messages not delivered")
    print(f"{messages} messages, {spans} spans")


if __name__ == "__main__":
    main()
