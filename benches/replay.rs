//! Replay throughput (decode + detect) on a 10,000-agent fleet from the simulator, on one core.
//!
//! The engine is first warmed with a simulated day so every agent exists and has state; the timed
//! part then processes the next busy hour of the fleet's events, serialized as the Agent-SPM JSON
//! lines the daemon would read. Engine restore (the setup of each iteration) is not timed.
//!
//! The OTLP cases time the same hour's calls as OpenTelemetry spans: requests of 32 traces, each
//! an `invoke_agent` span naming the agent and its `execute_tool` span (64 spans), in protobuf
//! (`otlp_proto`) and in OTLP/JSON (`otlp_json`), decoded, attributed and processed as the daemon
//! does. Throughput counts tool calls, as for the Agent-SPM case.
//!
//! `detect only, no duplicate memory` is `detect only` remembering no event identity: the
//! difference is the cost of dropping re-deliveries (at-least-once delivery).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_guardian::blueprint::BlueprintSet;
use agent_guardian::engine::Engine;
use agent_guardian::event::{AuditEvent, Decoder, DecoderOptions, OtlpOptions};
use agent_guardian::simulate::{SimConfig, Simulation};
use agent_guardian::state::Snapshot;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Fleet size of the benchmark (the target is for 10,000); `REPLAY_AGENTS` overrides it to see
/// how throughput depends on the state's size against the CPU caches.
fn agents() -> usize {
    std::env::var("REPLAY_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Lines decoded and processed together (as `guardian replay` reads them).
const BATCH: usize = 256;

struct Fixture {
    set: Arc<BlueprintSet>,
    decoder: Decoder,
    warm: Snapshot,
    lines: Vec<u8>,
    offsets: Vec<(usize, usize)>,
    /// The timed hour as OTLP requests: protobuf, JSON.
    otlp_proto: Vec<Vec<u8>>,
    otlp_json: Vec<Vec<u8>>,
}

impl Fixture {
    /// The timed hour's events, decoded beforehand (for the cases that time detection alone).
    fn decoded(&self) -> Vec<AuditEvent<'_>> {
        self.offsets
            .iter()
            .filter_map(|&(s, e)| self.decoder.decode(&self.lines[s..e]).ok())
            .collect()
    }
}

/// Span attribute carrying the data volume in the OTLP cases.
const VOLUME_ATTRIBUTE: &str = "app.tool.bytes";

/// Calls per OTLP request (two spans each).
const TRACES_PER_REQUEST: usize = 32;

/// The events as OTLP requests, in protobuf and in JSON.
fn otlp_requests(events: &[AuditEvent<'_>]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    let kv = |k: &str, v: any_value::Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let s = |v: &str| any_value::Value::StringValue(v.into());
    let (mut proto, mut json) = (Vec::new(), Vec::new());
    for (r, chunk) in events.chunks(TRACES_PER_REQUEST).enumerate() {
        let mut spans = Vec::new();
        for (i, e) in chunk.iter().enumerate() {
            let trace = ((r * TRACES_PER_REQUEST + i) as u128)
                .to_be_bytes()
                .to_vec();
            let start = e.ts_ms as u64 * 1_000_000;
            let mut tool = vec![
                kv("gen_ai.operation.name", s("execute_tool")),
                kv("gen_ai.tool.name", s(&e.tool_name)),
            ];
            if let Some(b) = e.bytes {
                tool.push(kv(VOLUME_ATTRIBUTE, any_value::Value::IntValue(b as i64)));
            }
            spans.push(Span {
                trace_id: trace.clone(),
                span_id: vec![1, 0, 0, 0, 0, 0, 0, i as u8],
                parent_span_id: vec![2, 0, 0, 0, 0, 0, 0, i as u8],
                name: format!("execute_tool {}", e.tool_name),
                start_time_unix_nano: start,
                end_time_unix_nano: start + 1_000_000,
                attributes: tool,
                ..Default::default()
            });
            spans.push(Span {
                trace_id: trace,
                span_id: vec![2, 0, 0, 0, 0, 0, 0, i as u8],
                name: "invoke_agent".into(),
                start_time_unix_nano: start,
                end_time_unix_nano: start + 2_000_000,
                attributes: vec![
                    kv("gen_ai.operation.name", s("invoke_agent")),
                    kv("gen_ai.agent.id", s(&e.agent_id)),
                ],
                ..Default::default()
            });
        }
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s("agents-platform")),
                        kv("deployment.environment.name", s("prod")),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        proto.push(req.encode_to_vec());
        json.push(otlp_json(&req).into_bytes());
    }
    (proto, json)
}

/// A request in OTLP/JSON (ids in hex, 64-bit integers as strings).
fn otlp_json(
    req: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> String {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
    use serde_json::{json, Value as J};
    let attrs = |kvs: &[KeyValue]| -> Vec<J> {
        kvs.iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => json!({"stringValue": s}),
                    Some(Value::IntValue(i)) => json!({"intValue": i.to_string()}),
                    _ => json!({}),
                };
                json!({"key": kv.key, "value": v})
            })
            .collect()
    };
    let rs: Vec<J> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let spans: Vec<J> = rs
                .scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(|sp| {
                    json!({"traceId": hex::encode(&sp.trace_id), "spanId": hex::encode(&sp.span_id),
                       "parentSpanId": hex::encode(&sp.parent_span_id), "name": sp.name, "kind": 1,
                       "startTimeUnixNano": sp.start_time_unix_nano.to_string(),
                       "endTimeUnixNano": sp.end_time_unix_nano.to_string(),
                       "attributes": attrs(&sp.attributes), "status": {}})
                })
                .collect();
            let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
            json!({"resource": {"attributes": attrs(resource)},
                   "scopeSpans": [{"scope": {"name": "agent-sdk"}, "spans": spans}]})
        })
        .collect();
    json!({ "resourceSpans": rs }).to_string()
}

fn fixture() -> Fixture {
    let set = agent_guardian::demo::demo_blueprints().expect("blueprints");
    let decoder = Decoder::new(&DecoderOptions {
        otlp: OtlpOptions {
            volume_attribute: Some(VOLUME_ATTRIBUTE.into()),
            ..OtlpOptions::default()
        },
        ..set.decoder_options()
    })
    .expect("decoder");
    let sim = Simulation::new(SimConfig {
        agents: agents(),
        days: 2,
        seed: 42,
        inject: false,
        ..SimConfig::default()
    });
    let mut engine = Engine::new(set.clone());
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut n = 0;
    // Warm: all of day 0 and day 1 up to 15:00 UTC.
    let day1 = sim.day(1);
    let cut = 1_772_409_600_000 + 86_400_000 + 15 * 3_600_000;
    for e in sim.day(0).iter().chain(day1.iter().filter(|e| e.ts < cut)) {
        buf.clear();
        n += 1;
        sim.write_event(&mut buf, e, n).expect("write");
        engine.process(&decoder.decode(&buf).expect("decodes"), &mut out);
    }
    let warm = engine.snapshot();
    // Timed: the next hour (15:00-16:00 UTC, working hours in New York and London).
    let mut lines = Vec::new();
    let mut offsets = Vec::new();
    for e in day1
        .iter()
        .filter(|e| e.ts >= cut && e.ts < cut + 3_600_000)
    {
        n += 1;
        let start = lines.len();
        sim.write_event(&mut lines, e, n).expect("write");
        offsets.push((start, lines.len()));
    }
    let events: Vec<_> = offsets
        .iter()
        .filter_map(|&(s, e)| decoder.decode(&lines[s..e]).ok())
        .collect();
    let (otlp_proto, otlp_json) = otlp_requests(&events);
    drop(events);
    Fixture {
        set,
        decoder,
        warm,
        lines,
        offsets,
        otlp_proto,
        otlp_json,
    }
}

fn replay(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(f.offsets.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function(
        format!(
            "decode+detect {} agents, {} events",
            agents(),
            f.offsets.len()
        ),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut out = Vec::with_capacity(64);
                let mut batch = Vec::with_capacity(BATCH);
                for _ in 0..iters {
                    let mut engine = Engine::restore(f.set.clone(), f.warm.clone());
                    let t = Instant::now();
                    // As `guardian replay` does: decode a batch of lines, then process it.
                    for chunk in f.offsets.chunks(BATCH) {
                        batch.clear();
                        batch.extend(
                            chunk
                                .iter()
                                .filter_map(|&(s, e)| f.decoder.decode(&f.lines[s..e]).ok()),
                        );
                        engine.process_batch(&batch, &mut out);
                        out.clear();
                    }
                    total += t.elapsed();
                }
                total
            });
        },
    );
    for (name, requests) in [("otlp_proto", &f.otlp_proto), ("otlp_json", &f.otlp_json)] {
        group.bench_function(format!("decode+detect {name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut out = Vec::with_capacity(64);
                let mut batch = Vec::with_capacity(2 * TRACES_PER_REQUEST);
                for _ in 0..iters {
                    let mut engine = Engine::restore(f.set.clone(), f.warm.clone());
                    let t = Instant::now();
                    // As the daemon does: decode a request, attribute its spans, process the
                    // tool calls.
                    for r in requests {
                        batch.clear();
                        f.decoder.decode_into(r, &mut batch).expect("decodes");
                        batch.retain_mut(|e| engine.resolve(e).is_tool_call());
                        engine.process_batch(&batch, &mut out);
                        out.clear();
                    }
                    total += t.elapsed();
                }
                total
            });
        });
    }
    group.bench_function("detect only", |b| {
        let events = f.decoded();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut out = Vec::with_capacity(64);
            for _ in 0..iters {
                let mut engine = Engine::restore(f.set.clone(), f.warm.clone());
                let t = Instant::now();
                for chunk in events.chunks(BATCH) {
                    engine.process_batch(chunk, &mut out);
                    out.clear();
                }
                total += t.elapsed();
            }
            total
        });
    });
    group.bench_function("detect only, no duplicate memory", |b| {
        let events = f.decoded();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut out = Vec::with_capacity(64);
            for _ in 0..iters {
                let mut engine = Engine::restore(f.set.clone(), f.warm.clone());
                // The cost of at-least-once delivery: the same, remembering no identity.
                engine.set_duplicates(agent_guardian::state::SeenSettings {
                    horizon_ms: 0,
                    max_entries: 0,
                });
                let t = Instant::now();
                for chunk in events.chunks(BATCH) {
                    engine.process_batch(chunk, &mut out);
                    out.clear();
                }
                total += t.elapsed();
            }
            total
        });
    });
    group.bench_function("duplicate memory only", |b| {
        let events = f.decoded();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut seen = agent_guardian::state::Seen::restore(
                    agent_guardian::state::SeenSettings::default(),
                    f.warm.duplicates.clone(),
                );
                let t = Instant::now();
                for ev in &events {
                    std::hint::black_box(seen.deliver(ev));
                }
                total += t.elapsed();
            }
            total
        });
    });
    group.bench_function("decode only", |b| {
        b.iter(|| {
            let mut ok = 0u64;
            for &(s, e) in &f.offsets {
                ok += u64::from(f.decoder.decode(&f.lines[s..e]).is_ok());
            }
            ok
        });
    });
    for (name, requests) in [("otlp_proto", &f.otlp_proto), ("otlp_json", &f.otlp_json)] {
        group.bench_function(format!("decode only {name}"), |b| {
            let mut batch = Vec::with_capacity(2 * TRACES_PER_REQUEST);
            b.iter(|| {
                let mut n = 0;
                for r in requests {
                    batch.clear();
                    f.decoder.decode_into(r, &mut batch).expect("decodes");
                    n += batch.len();
                }
                n
            });
        });
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
