//! Replay throughput (decode + detect) on a 10,000-agent fleet from the simulator, on one core.
//!
//! The engine is first warmed with a simulated day so every agent exists and has state; the timed
//! part then processes the next busy hour of the fleet's events, serialized as the Agent-SPM JSON
//! lines the daemon would read. Engine restore (the setup of each iteration) is not timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_guardian::blueprint::BlueprintSet;
use agent_guardian::engine::Engine;
use agent_guardian::event::Decoder;
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
}

fn fixture() -> Fixture {
    let set = agent_guardian::demo::demo_blueprints().expect("blueprints");
    let decoder = Decoder::new(&set.decoder_options()).expect("decoder");
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
    Fixture {
        set,
        decoder,
        warm,
        lines,
        offsets,
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
    group.bench_function("detect only", |b| {
        let events: Vec<_> = f
            .offsets
            .iter()
            .filter_map(|&(s, e)| f.decoder.decode(&f.lines[s..e]).ok())
            .collect();
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
    group.bench_function("decode only", |b| {
        b.iter(|| {
            let mut ok = 0u64;
            for &(s, e) in &f.offsets {
                ok += u64::from(f.decoder.decode(&f.lines[s..e]).is_ok());
            }
            ok
        });
    });
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
