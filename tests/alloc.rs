//! The steady no-incident path (decode + detect of an event of a known agent) allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use agent_guardian::engine::Engine;
use agent_guardian::event::Decoder;
use agent_guardian::simulate::{SimConfig, Simulation};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_path_allocates_nothing_per_event() {
    let set = agent_guardian::demo::demo_blueprints().unwrap();
    let decoder = Decoder::new(&set.decoder_options()).unwrap();
    let sim = Simulation::new(SimConfig {
        agents: 60,
        days: 3,
        seed: 3,
        inject: false,
        ..SimConfig::default()
    });
    let mut out = Vec::with_capacity(64);
    let mut n = 0;
    // Two days of history, folded event by event (as a running engine has them: restored state
    // grows its buffers once on the first events after a restart).
    let warm = |n: &mut u64, out: &mut Vec<_>| {
        let mut engine = Engine::new(set.clone());
        let mut buf = Vec::new();
        *n = 0;
        for d in 0..2 {
            for e in sim.day(d) {
                buf.clear();
                *n += 1;
                sim.write_event(&mut buf, &e, *n).unwrap();
                engine.process(&decoder.decode(&buf).unwrap(), out);
                out.clear();
            }
        }
        engine
    };
    let mut engine = warm(&mut n, &mut out);
    // Day 3, serialized up front; count allocations around each event.
    let day = sim.day(2);
    let mut lines = Vec::new();
    for e in &day {
        let mut b = Vec::new();
        n += 1;
        sim.write_event(&mut b, e, n).unwrap();
        lines.push(b);
    }
    let (mut quiet, mut allocating) = (0u64, Vec::new());
    for (i, l) in lines.iter().enumerate() {
        let before = ALLOCS.load(Ordering::Relaxed);
        let ev = decoder.decode(l).unwrap();
        engine.process(&ev, &mut out);
        drop(ev);
        let after = ALLOCS.load(Ordering::Relaxed);
        if out.is_empty() {
            quiet += 1;
            if after != before {
                allocating.push((i, after - before));
            }
        }
        out.clear();
    }
    assert!(quiet > 10_000, "enough steady events measured: {quiet}");
    assert!(
        allocating.is_empty(),
        "{} of {quiet} no-incident events allocated, e.g. {:?}",
        allocating.len(),
        &allocating[..allocating.len().min(5)]
    );

    // The same day through `process_batch` (as `guardian replay` feeds it), 64 events a batch.
    let mut engine = warm(&mut n, &mut out);
    let (mut quiet, mut allocating) = (0u64, Vec::new());
    let mut batch = Vec::with_capacity(64);
    for (k, chunk) in lines.chunks(64).enumerate() {
        batch.clear();
        batch.extend(chunk.iter().map(|l| decoder.decode(l).unwrap()));
        let before = ALLOCS.load(Ordering::Relaxed);
        engine.process_batch(&batch, &mut out);
        let after = ALLOCS.load(Ordering::Relaxed);
        if out.is_empty() {
            quiet += chunk.len() as u64;
            if after != before {
                allocating.push((k, after - before));
            }
        }
        out.clear();
    }
    assert!(
        quiet > 5_000,
        "enough steady batches measured: {quiet} events"
    );
    assert!(
        allocating.is_empty(),
        "{} no-incident batches allocated, e.g. {:?}",
        allocating.len(),
        &allocating[..allocating.len().min(5)]
    );
}
