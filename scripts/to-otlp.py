#!/usr/bin/env python3
"""Rewrites Agent-SPM JSON lines (stdin) as OTLP/JSON trace requests (stdout, one
ExportTraceServiceRequest per line), as the OpenTelemetry Collector's Kafka exporter writes them
with `encoding: otlp_json` after its groupbytrace processor. Each agent's calls of one UTC hour
are one trace: `execute_tool` spans that do not name the agent, then the `invoke_agent` span that
does (it ends last, so it is exported last). Each hour's traces are flushed as requests of whole
traces, up to MAX_SPANS spans. The data volume goes in the span attribute `app.tool.bytes`
(replay with `--otlp-volume-attribute app.tool.bytes`). For measuring detection on fleets written
as Agent-SPM, e.g. the labelled fleet:

    zstd -dc --long=27 ../shared/eval/fleet-dev.jsonl.zst | scripts/to-otlp.py > otlp.jsonl

    scripts/to-otlp.py [MAX_SPANS (default 256)]
"""
import hashlib
import json
import sys
from datetime import datetime

HOUR_MS = 3_600_000


def kv(key, value):
    if isinstance(value, bool):
        v = {"boolValue": value}
    elif isinstance(value, int):
        v = {"intValue": str(value)}
    elif isinstance(value, float):
        v = {"doubleValue": value}
    else:
        v = {"stringValue": str(value)}
    return {"key": key, "value": v}


def ident(text, size):
    return hashlib.sha256(text.encode()).hexdigest()[: 2 * size]


def main() -> None:
    max_spans = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    out = sys.stdout
    hour = None
    traces = {}  # (agent, environment) -> [spans], in order of first call

    def flush():
        request, count = [], 0
        for (agent, env), spans in traces.items():
            first = spans[0]["startTimeUnixNano"]
            trace = spans[0]["traceId"]
            spans.append({"traceId": trace, "spanId": ident("agent/" + trace, 8),
                          "name": "invoke_agent " + agent, "kind": 1,
                          "startTimeUnixNano": first, "endTimeUnixNano": spans[-1]["endTimeUnixNano"],
                          "attributes": [kv("gen_ai.operation.name", "invoke_agent"),
                                         kv("gen_ai.agent.id", agent)]})
            if request and count + len(spans) > max_spans:
                write(request)
                request, count = [], 0
            request.append({"resource": {"attributes": [kv("service.name", "agents-platform"),
                                                        kv("deployment.environment.name", env)]},
                            "scopeSpans": [{"scope": {"name": "agent-sdk"}, "spans": spans}]})
            count += len(spans)
        if request:
            write(request)
        traces.clear()

    def write(request):
        out.write(json.dumps({"resourceSpans": request}, separators=(",", ":")) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        ev = json.loads(line)
        agent = ev["agent_id"]
        ts = int(datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp() * 1000)
        h = ts // HOUR_MS
        if hour is not None and h > hour:
            flush()
        hour = h if hour is None else max(hour, h)
        payload = ev.get("safe_payload") or {}
        env = payload.get("environment", "prod")
        spans = traces.setdefault((agent, env), [])
        trace = spans[0]["traceId"] if spans else ident("%s/%s/%d" % (agent, env, h), 16)
        attrs = [kv("gen_ai.operation.name", "execute_tool"), kv("gen_ai.tool.name", ev.get("tool_name", ""))]
        if payload.get("bytes") is not None:
            attrs.append(kv("app.tool.bytes", payload["bytes"]))
        error = ev.get("outcome") not in (None, "ALLOW")
        spans.append({"traceId": trace, "spanId": ident(ev.get("event_id", "") + "/" + trace, 8),
                      "name": "execute_tool " + ev.get("tool_name", ""), "kind": 1,
                      "startTimeUnixNano": str(ts * 1_000_000),
                      "endTimeUnixNano": str(ts * 1_000_000 + 1_000_000),
                      "attributes": attrs,
                      "status": {"code": 2} if error else {}})
    flush()


if __name__ == "__main__":
    main()
