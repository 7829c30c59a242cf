//! `guardian replay`: events from a file or stdin through the engine, incidents to a writer as
//! JSON lines, a summary at the end. Malformed lines are counted and reported, never fatal.
//!
//! Layer: uses `engine`, `store`, `state`, `source` (the lines), `sink`, `posture`, `response`, `event`.

use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::engine::Engine;
use crate::event::{AuditEvent, DecodeError, Decoder};
use crate::response::{Incident, IncidentType};
use crate::state::{AgentState, Resolution};

const DAY_MS: i64 = 86_400_000;

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Lines read (blank lines excluded).
    pub lines: u64,
    /// Events decoded and processed.
    pub events: u64,
    /// Lines that could not be decoded.
    pub malformed: u64,
    /// Events later than the allowed lateness.
    pub late_events: u64,
    /// Events delivered again (same identity and content within the horizon): dropped.
    pub duplicates: u64,
    /// Events whose identity was seen before with other content: folded, and counted.
    pub id_conflicts: u64,
    /// Lines dated too far ahead of the stream's own time that the stream never caught up with:
    /// dead-lettered (also counted in `malformed`).
    pub future: u64,
    /// Agents seen.
    pub agents: usize,
    /// Incidents by type, in [`IncidentType::ALL`] order.
    pub incidents: [u64; IncidentType::ALL.len()],
    /// Wall time spent.
    pub elapsed: Duration,
    /// Entries by how their agent was found, in [`Resolution::ALL`] order.
    pub entries: [u64; 5],
}

impl ReplaySummary {
    /// Events per second of wall time.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Human-readable summary, several lines.
    pub fn render(&self) -> String {
        let by_type: Vec<String> = IncidentType::ALL
            .iter()
            .zip(self.incidents)
            .map(|(t, n)| format!("{} {n}", t.as_str()))
            .collect();
        format!(
            "replayed {} events from {} agents in {:.2} s ({:.0} events/s); {} malformed line(s) ({} dated too far ahead of the stream); {} late event(s); {} duplicate(s) dropped; {} identity conflict(s)\n\
             incidents: {} in all: {}",
            self.events,
            self.agents,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.malformed,
            self.future,
            self.late_events,
            self.duplicates,
            self.id_conflicts,
            self.incidents.iter().sum::<u64>(),
            by_type.join(", ")
        ) + &self.identity_line()
    }

    /// A line on session attribution, when the input had entries without an agent (empty
    /// otherwise).
    fn identity_line(&self) -> String {
        let [_, resolved, unresolved, bound, skipped] = self.entries;
        if resolved + unresolved + bound + skipped == 0 {
            return String::new();
        }
        format!(
            "\nsessions: {resolved} call(s) attributed to their session's agent, {unresolved} without a known session agent (the user or session id stands in), {bound} session binding(s), {skipped} other entr(ies) that are not tool calls skipped"
        )
    }
}

/// Where each incident goes.
pub trait IncidentSink {
    /// Receives one incident.
    fn incident(&mut self, i: &Incident) -> io::Result<()>;

    /// Receives a malformed line (1-based number) and its error; ignored by default.
    fn dead_letter(&mut self, _line: u64, _e: &DecodeError, _bytes: usize) -> io::Result<()> {
        Ok(())
    }

    /// Called when the stream's event time first reaches a new UTC day (`day_start`, epoch ms),
    /// before that day's first event; ignored by default.
    fn new_day(&mut self, _engine: &Engine, _day_start: i64) -> io::Result<()> {
        Ok(())
    }

    /// Before a batch goes to the engine: brings back the states of its agents that are out of
    /// memory (see [`StateRecorder::bounded`]); nothing by default.
    fn load(&mut self, _engine: &mut Engine, _batch: &[AuditEvent<'_>]) -> io::Result<()> {
        Ok(())
    }

    /// After a batch: lets agents' states leave memory; nothing by default.
    fn unload(&mut self, _engine: &mut Engine) -> io::Result<()> {
        Ok(())
    }
}

/// Writes incidents as JSON lines.
pub struct JsonLines<W: Write>(pub W);

impl<W: Write> IncidentSink for JsonLines<W> {
    fn incident(&mut self, i: &Incident) -> io::Result<()> {
        serde_json::to_writer(&mut self.0, i)?;
        self.0.write_all(b"\n")
    }
}

/// The SIEM records of a replay (`guardian replay --output cef|json`).
impl<W: Write> IncidentSink for crate::sink::RecordLines<W> {
    fn incident(&mut self, i: &Incident) -> io::Result<()> {
        self.write_incident(i)
    }

    fn dead_letter(&mut self, line: u64, e: &DecodeError, bytes: usize) -> io::Result<()> {
        self.write_dead_letter(line, e, bytes)
    }
}

/// Collects incidents in memory.
impl IncidentSink for Vec<Incident> {
    fn incident(&mut self, i: &Incident) -> io::Result<()> {
        self.push(i.clone());
        Ok(())
    }
}

/// What a replay does beyond decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOptions {
    /// How far ahead of the stream's own time (its latest event folded) a line's events may be
    /// dated (ms). A line further ahead waits: it is folded once the stream catches up with it,
    /// or once [`CONFIRMING_LINES`] more lines come ahead of the stream's time with none of the
    /// stream's own time between (the stream moved on: after an outage, or a sparse stream);
    /// it is dead-lettered as `future_timestamp` once [`CONTRADICTING_LINES`] lines of the
    /// stream's own time come after it (the stream stayed where it was: a forged or broken
    /// time, which would otherwise make every later call of its agent "late").
    pub max_future_ms: i64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            max_future_ms: 300_000,
        }
    }
}

/// Lines ahead of the stream, with none of the stream's own time between, that confirm it moved
/// on (see [`ReplayOptions`]).
pub const CONFIRMING_LINES: usize = 2;

/// Lines of the stream's own time after a line held ahead of it that refuse it.
pub const CONTRADICTING_LINES: u32 = 20;

/// Lines held ahead of the stream at most; beyond, the oldest is dead-lettered.
pub const MAX_HELD_LINES: usize = 1_000;

/// A line dated too far ahead of the stream, waiting for the stream to catch up or move on.
struct Held {
    /// Line number (1-based).
    no: u64,
    /// Its length.
    bytes: usize,
    /// Latest event time of its events.
    ts: i64,
    /// The stream's time when it came.
    then: i64,
    /// Its events.
    events: Vec<AuditEvent<'static>>,
    /// Lines of the stream's own time folded since.
    contradicted: u32,
}

/// The stream's own time: the latest event time folded, and the lines held ahead of it.
struct StreamClock {
    max_future: i64,
    latest: i64,
    held: Vec<Held>,
    /// The first line, until the second tells whether it is ahead of the stream.
    first: Option<Held>,
}

impl StreamClock {
    /// A stream without a time yet, holding lines more than `max_future` ms ahead of it.
    fn new(max_future: i64) -> StreamClock {
        StreamClock {
            max_future,
            latest: i64::MIN,
            held: Vec::new(),
            first: None,
        }
    }

    /// Whether a line whose latest event is at `ts` is too far ahead of the stream.
    fn ahead(&self, ts: i64) -> bool {
        self.latest != i64::MIN && ts > self.latest.saturating_add(self.max_future)
    }

    /// Holds a line; returns the held lines it confirms (itself included, in line order) when
    /// enough of them came with none of the stream's own time between, and the oldest held
    /// line if too many wait.
    fn hold(&mut self, h: Held) -> (Vec<Held>, Option<Held>) {
        self.held.push(h);
        if self.held.iter().filter(|x| x.contradicted == 0).count() > CONFIRMING_LINES {
            let (now, rest): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|x| x.contradicted == 0);
            self.held = rest;
            for h in &now {
                self.latest = self.latest.max(h.ts);
            }
            return (now, None);
        }
        let dropped = (self.held.len() > MAX_HELD_LINES).then(|| self.held.remove(0));
        (Vec::new(), dropped)
    }

    /// Counts a line folded at the stream's time (`ts`); returns the held lines the stream has
    /// caught up with, and those it contradicted too often.
    fn fold(&mut self, ts: i64) -> (Vec<Held>, Vec<Held>) {
        self.latest = self.latest.max(ts);
        if self.held.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let limit = self.latest.saturating_add(self.max_future);
        let mut caught = Vec::new();
        let mut refused = Vec::new();
        for mut h in std::mem::take(&mut self.held) {
            if h.ts <= limit {
                caught.push(h);
                continue;
            }
            h.contradicted += 1;
            if h.contradicted >= CONTRADICTING_LINES {
                refused.push(h);
            } else {
                self.held.push(h);
            }
        }
        (caught, refused)
    }

    /// Why a held line is refused.
    fn refusal(&self, h: &Held) -> DecodeError {
        DecodeError::FutureTimestamp {
            at: crate::event::format_rfc3339_ms(h.ts),
            now: format!(
                "{}, the stream's latest event then",
                crate::event::format_rfc3339_ms(h.then)
            ),
            allowed: humantime::format_duration(Duration::from_millis(
                self.max_future.max(0) as u64
            ))
            .to_string(),
        }
    }
}

/// Replays every line of `input` with the default [`ReplayOptions`]. `on_error` receives each
/// malformed line's number (1-based) and error.
pub fn run(
    engine: &mut Engine,
    decoder: &Decoder,
    input: impl BufRead,
    sink: &mut impl IncidentSink,
    on_error: impl FnMut(u64, &DecodeError),
    progress: Option<&ProgressBar>,
) -> io::Result<ReplaySummary> {
    run_with(
        engine,
        decoder,
        input,
        sink,
        on_error,
        progress,
        ReplayOptions::default(),
    )
}

/// Replays every line of `input`. `on_error` receives each malformed line's number (1-based) and error.
pub fn run_with(
    engine: &mut Engine,
    decoder: &Decoder,
    mut input: impl BufRead,
    sink: &mut impl IncidentSink,
    mut on_error: impl FnMut(u64, &DecodeError),
    progress: Option<&ProgressBar>,
    options: ReplayOptions,
) -> io::Result<ReplaySummary> {
    let started = Instant::now();
    let mut r = Replay::new(engine, options.max_future_ms);
    let mut text = Vec::with_capacity(BATCH * 512);
    let mut lines = Vec::with_capacity(BATCH);
    let mut reader = LineReader {
        no: 0,
        bytes: 0,
        max: decoder.max_event_bytes(),
    };
    loop {
        // Read a batch of lines, decode them, and hand runs of good events to the engine in one
        // call (it prefetches agents ahead); day changes and bad lines keep their place.
        reader.batch(&mut input, &mut text, &mut lines)?;
        if lines.is_empty() {
            break;
        }
        let mut batch = Vec::with_capacity(lines.len());
        // The events of one line: one, or the spans of an OTLP request.
        let mut events = Vec::with_capacity(1);
        for &(start, end, no, cut) in &lines {
            let line = text[start..end].trim_ascii();
            if line.is_empty() && cut.is_none() {
                continue;
            }
            r.sum.lines += 1;
            // One event per line, or a batch of spans (an OTLP/JSON request).
            let decoded = match cut {
                // Longer than any event may be: only its first bytes were kept.
                Some(size) => Err(DecodeError::Oversized {
                    size,
                    max: reader.max,
                }),
                None => decoder.decode_into(line, &mut events),
            };
            let at = (no, line.len());
            r.line(decoded, at, &mut batch, &mut events, sink, &mut on_error)?;
        }
        r.folding(&mut batch).flush(sink)?;
        if let Some(p) = progress {
            p.set_position(reader.bytes);
            p.set_message(format!("{} events", r.sum.events));
        }
    }
    let mut sum = r.finish(sink)?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    sum.elapsed = started.elapsed();
    Ok(sum)
}

/// A replay under way: the engine, the stream's time, the counts, the incidents waiting to go
/// out and the day of event time.
struct Replay<'e> {
    /// The engine events go through.
    engine: &'e mut Engine,
    /// The stream's own time and the lines held ahead of it.
    clock: StreamClock,
    /// What the replay counted.
    sum: ReplaySummary,
    /// Incidents decided, not yet passed to the sink.
    out: Vec<Incident>,
    /// The current UTC day of event time.
    day: i64,
}

impl<'e> Replay<'e> {
    /// A replay through `engine`, holding lines more than `max_future` ms ahead of the stream.
    fn new(engine: &'e mut Engine, max_future: i64) -> Replay<'e> {
        Replay {
            engine,
            clock: StreamClock::new(max_future),
            sum: ReplaySummary::default(),
            out: Vec::with_capacity(16),
            day: i64::MIN,
        }
    }

    /// The end of the input (see [`Folding::end_of_input`]), and the summary with the engine's
    /// own counts.
    fn finish(mut self, sink: &mut impl IncidentSink) -> io::Result<ReplaySummary> {
        let mut clock = std::mem::replace(&mut self.clock, StreamClock::new(0));
        self.folding(&mut Vec::new())
            .end_of_input(&mut clock, sink)?;
        self.sum.add_engine_figures(self.engine);
        Ok(self.sum)
    }

    /// Where events go now: `batch`, then the engine.
    fn folding<'s, 'a>(&'s mut self, batch: &'s mut Vec<AuditEvent<'a>>) -> Folding<'s, 's, 'a> {
        Folding {
            engine: &mut *self.engine,
            batch,
            day: &mut self.day,
            out: &mut self.out,
            sum: &mut self.sum,
        }
    }

    /// One line's outcome, `at` its number and length: its events placed on the stream's time,
    /// or its error dead-lettered after the events before it.
    fn line<'a>(
        &mut self,
        decoded: Result<u64, DecodeError>,
        at: (u64, usize),
        batch: &mut Vec<AuditEvent<'a>>,
        events: &mut Vec<AuditEvent<'a>>,
        sink: &mut impl IncidentSink,
        on_error: &mut impl FnMut(u64, &DecodeError),
    ) -> io::Result<()> {
        let (no, bytes) = at;
        match decoded {
            Ok(skipped) => {
                // Spans that are neither tool calls nor agent bindings.
                self.sum.entries[Resolution::Skipped.index()] += skipped;
                let Some(ts) = events.iter().map(|e| e.ts_ms).max() else {
                    return Ok(());
                };
                let Replay {
                    engine,
                    clock,
                    sum,
                    out,
                    day,
                } = self;
                let mut f = Folding {
                    engine,
                    batch,
                    day,
                    out,
                    sum,
                };
                place(
                    clock,
                    &mut f,
                    &LineAt { no, bytes, ts },
                    events,
                    sink,
                    on_error,
                )
            }
            Err(e) => {
                let mut f = self.folding(batch);
                f.flush(sink)?;
                f.sum.malformed += 1;
                f.engine.count_bad_event();
                sink.dead_letter(no, &e, bytes)?;
                on_error(no, &e);
                Ok(())
            }
        }
    }
}

/// Where the reading of the input is.
struct LineReader {
    /// Lines read (the last one's number, 1-based).
    no: u64,
    /// Bytes read.
    bytes: u64,
    /// The longest line kept whole.
    max: usize,
}

impl LineReader {
    /// Reads up to [`BATCH`] lines onto `text` (cleared first), noting each line's span in it,
    /// its number and, when it was cut, its full length; `lines` stays empty at the end.
    fn batch(
        &mut self,
        input: &mut impl BufRead,
        text: &mut Vec<u8>,
        lines: &mut Vec<(usize, usize, u64, Option<usize>)>,
    ) -> io::Result<()> {
        text.clear();
        lines.clear();
        while lines.len() < BATCH {
            let start = text.len();
            let (n, cut) = crate::source::lines::read_line_bounded(input, text, self.max)?;
            if n == 0 {
                break;
            }
            self.no += 1;
            self.bytes += n as u64;
            lines.push((start, text.len(), self.no, cut));
        }
        Ok(())
    }
}

/// A decoded line: its number, its length and the latest event time of its events.
struct LineAt {
    /// Line number (1-based).
    no: u64,
    /// Its length.
    bytes: usize,
    /// Latest event time of its events.
    ts: i64,
}

impl LineAt {
    /// The line, held with its events (taken from `events`), at the stream's time `then`.
    fn held(&self, then: i64, events: &mut Vec<AuditEvent<'_>>) -> Held {
        Held {
            no: self.no,
            bytes: self.bytes,
            ts: self.ts,
            then,
            events: events.drain(..).map(AuditEvent::into_owned).collect(),
            contradicted: 0,
        }
    }
}

/// Places a decoded line's events on the stream's time: the first line waits for the second; a
/// line too far ahead is held; the others are folded, followed by the held lines they confirm,
/// and the held lines they contradicted too often are dead-lettered.
fn place<'a>(
    clock: &mut StreamClock,
    f: &mut Folding<'_, '_, 'a>,
    at: &LineAt,
    events: &mut Vec<AuditEvent<'a>>,
    sink: &mut impl IncidentSink,
    on_error: &mut impl FnMut(u64, &DecodeError),
) -> io::Result<()> {
    if clock.latest == i64::MIN && !first_lines(clock, f, at, events, sink)? {
        return Ok(());
    }
    let (fold, refuse) = if clock.ahead(at.ts) {
        let (confirmed, dropped) = clock.hold(at.held(clock.latest, events));
        (confirmed, dropped.into_iter().collect())
    } else {
        for ev in events.drain(..) {
            f.event(ev, sink)?;
        }
        clock.fold(at.ts)
    };
    for h in fold {
        f.events(h.events, sink)?;
    }
    for h in refuse {
        let e = clock.refusal(&h);
        f.refuse(&h, &e, sink)?;
        on_error(h.no, &e);
    }
    Ok(())
}

/// Before the stream has a time: the first line sets it only if the second is not far behind it
/// (a forged time on the first line would set it for good). Holds the first line (`false`: the
/// line is placed), or, at the second, folds the first or holds it ahead of the stream.
fn first_lines<'a>(
    clock: &mut StreamClock,
    f: &mut Folding<'_, '_, 'a>,
    at: &LineAt,
    events: &mut Vec<AuditEvent<'a>>,
    sink: &mut impl IncidentSink,
) -> io::Result<bool> {
    match clock.first.take() {
        None => {
            clock.first = Some(at.held(at.ts, events));
            return Ok(false);
        }
        Some(mut first) if first.ts > at.ts.saturating_add(clock.max_future) => {
            clock.latest = at.ts;
            first.then = at.ts;
            clock.held.push(first);
        }
        Some(first) => {
            f.events(first.events, sink)?;
            clock.fold(first.ts);
        }
    }
    Ok(true)
}

impl ReplaySummary {
    /// The engine's own counts at the end: late events, duplicates, identity conflicts,
    /// incidents by type, agents.
    fn add_engine_figures(&mut self, engine: &Engine) {
        let stats = engine.stats();
        self.late_events = stats.late_events;
        self.duplicates = stats.duplicates;
        self.id_conflicts = stats.id_conflicts;
        self.incidents[..stats.incidents.len()].copy_from_slice(&stats.incidents);
        self.agents = engine.agent_count();
    }
}

/// Agents or incidents written to the state in one batch by `--state`.
const WRITE_CHUNK: usize = 2_000;

/// Lines read, decoded and processed together.
const BATCH: usize = 256;

/// Where a replay's events go: the batch of the day, handed to the engine when the day changes
/// or the batch ends.
struct Folding<'e, 'b, 'a> {
    engine: &'e mut Engine,
    batch: &'b mut Vec<AuditEvent<'a>>,
    day: &'b mut i64,
    out: &'b mut Vec<Incident>,
    sum: &'b mut ReplaySummary,
}

impl<'a> Folding<'_, '_, 'a> {
    /// Resolves the event's agent and, for a tool call, adds it to the batch (a new UTC day of
    /// event time first passes the batch on and tells the sink).
    fn event(&mut self, mut ev: AuditEvent<'a>, sink: &mut impl IncidentSink) -> io::Result<()> {
        let how = self.engine.resolve(&mut ev);
        self.sum.entries[how.index()] += 1;
        let before = self.out.len();
        self.engine.take_identity_incidents(self.out);
        for i in &self.out[before..] {
            self.sum.incidents[crate::engine::type_index(i.kind)] += 1;
        }
        if !how.is_tool_call() {
            return Ok(());
        }
        let d = ev.ts_ms.div_euclid(DAY_MS);
        if d > *self.day {
            if *self.day != i64::MIN {
                flush(self.engine, self.batch, self.out, sink, self.sum)?;
                sink.new_day(self.engine, d * DAY_MS)?;
            }
            *self.day = d;
        }
        self.batch.push(ev);
        Ok(())
    }

    /// Processes the batch and passes its incidents on.
    fn flush(&mut self, sink: &mut impl IncidentSink) -> io::Result<()> {
        flush(self.engine, self.batch, self.out, sink, self.sum)
    }

    /// Folds the events of a held line, in order.
    fn events(
        &mut self,
        events: Vec<AuditEvent<'static>>,
        sink: &mut impl IncidentSink,
    ) -> io::Result<()> {
        for ev in events {
            self.event(ev, sink)?;
        }
        Ok(())
    }

    /// The end of the input: a first line alone, and the lines still held ahead of the stream
    /// (nothing after them contradicts them enough) are folded, in line order; then what waited
    /// for calls that could still arrive is final.
    fn end_of_input(
        &mut self,
        clock: &mut StreamClock,
        sink: &mut impl IncidentSink,
    ) -> io::Result<()> {
        let rest = clock
            .first
            .take()
            .into_iter()
            .chain(std::mem::take(&mut clock.held));
        for h in rest {
            self.events(h.events, sink)?;
        }
        self.flush(sink)?;
        self.engine.finish(self.out);
        for i in self.out.drain(..) {
            sink.incident(&i)?;
        }
        Ok(())
    }

    /// Dead-letters a line held ahead of the stream (after the events before it).
    fn refuse(
        &mut self,
        h: &Held,
        e: &DecodeError,
        sink: &mut impl IncidentSink,
    ) -> io::Result<()> {
        flush(self.engine, self.batch, self.out, sink, self.sum)?;
        self.sum.malformed += 1;
        self.sum.future += 1;
        self.engine.count_bad_event();
        sink.dead_letter(h.no, e, h.bytes)
    }
}

/// Processes a run of decoded events and passes their incidents on.
fn flush(
    engine: &mut Engine,
    batch: &mut Vec<AuditEvent<'_>>,
    out: &mut Vec<Incident>,
    sink: &mut impl IncidentSink,
    sum: &mut ReplaySummary,
) -> io::Result<()> {
    sink.load(engine, batch)?;
    engine.process_batch(batch, out);
    sink.unload(engine)?;
    sum.events += batch.len() as u64;
    batch.clear();
    for i in out.drain(..) {
        sink.incident(&i)?;
    }
    Ok(())
}

/// Keeps what `guardian replay --state DIR` stores besides the agents: every incident, and the
/// fleet score at the start of each day of event time (for the posture's trend).
pub struct StateRecorder<S> {
    /// The sink the incidents also go to.
    pub inner: S,
    /// Every incident.
    pub incidents: Vec<Incident>,
    /// One fleet score per day.
    pub history: Vec<crate::posture::HistoryPoint>,
    settings: crate::posture::PostureSettings,
    /// The state being written, if open already: incidents go there in batches as they come
    /// instead of staying in memory.
    store: Option<crate::store::Store>,
    /// At most this many agents' states in memory, the others in `store`.
    keep: Option<usize>,
    /// The topic the agents are written under (see [`state_topic`]).
    topic: String,
    /// Times an agent's state left memory.
    pub unloaded: u64,
    /// Times an agent's state was read back from the store.
    pub loaded: u64,
}

/// The topic a replay's agents are written under in its state.
fn state_topic(source: &str) -> String {
    format!("replay:{source}")
}

/// An error of the state store, as an I/O error of the replay.
fn store_io(e: crate::store::StoreError) -> io::Error {
    io::Error::other(e)
}

impl<S: IncidentSink> StateRecorder<S> {
    /// A recorder in front of `inner`.
    pub fn new(inner: S, settings: crate::posture::PostureSettings) -> StateRecorder<S> {
        StateRecorder {
            inner,
            incidents: Vec::new(),
            history: Vec::new(),
            settings,
            store: None,
            keep: None,
            topic: String::new(),
            unloaded: 0,
            loaded: 0,
        }
    }

    /// Keeps at most `keep` agents' states in memory (at least one), the others in the store
    /// given to [`StateRecorder::spilling_to`], read back on their agent's next event; `source`
    /// names the replay's input, as for [`write_state`]. The least recently used leave memory
    /// once `keep` is passed, an eighth of `keep` at a time.
    pub fn bounded(mut self, keep: usize, source: &str) -> StateRecorder<S> {
        self.keep = Some(keep.max(1));
        self.topic = state_topic(source);
        self
    }

    /// The point of history as of the day's start: over every agent, those out of memory read
    /// from the store a part at a time.
    fn point(&self, engine: &Engine) -> io::Result<crate::posture::HistoryPoint> {
        use crate::posture::report;
        let resident: Vec<&AgentState> = engine.agents().collect();
        let store = match &self.store {
            Some(s) if engine.resident_count() < engine.agent_count() => s,
            _ => {
                return Ok(
                    crate::posture::posture(&resident, &self.settings, &self.history).point(),
                )
            }
        };
        let idle: Vec<(&str, i64)> = engine.idle_agents().collect();
        let now = resident
            .iter()
            .map(|s| s.last_seen)
            .chain(idle.iter().map(|i| i.1))
            .max()
            .unwrap_or(0);
        let mut rows = report::rows(&resident, &self.settings, now, 1);
        let ids: Vec<&str> = idle.iter().map(|i| i.0).collect();
        for chunk in ids.chunks(WRITE_CHUNK) {
            let states = store.load_agents(&self.topic, 0, chunk).map_err(store_io)?;
            rows.extend(report::rows(&states, &self.settings, now, 1));
        }
        Ok(report::point_of(&rows, now))
    }

    /// Writes the incidents to `store` in batches as they come (only the last batch stays in
    /// memory); [`write_state`] then writes the rest there.
    pub fn spilling_to(mut self, store: crate::store::Store) -> StateRecorder<S> {
        self.store = Some(store);
        self
    }
}

impl<S: IncidentSink> IncidentSink for StateRecorder<S> {
    fn incident(&mut self, i: &Incident) -> io::Result<()> {
        self.incidents.push(i.clone());
        if let Some(store) = &self.store {
            if self.incidents.len() >= WRITE_CHUNK {
                store
                    .write_incidents_unindexed(&self.incidents)
                    .map_err(io::Error::other)?;
                self.incidents.clear();
            }
        }
        self.inner.incident(i)
    }

    fn dead_letter(&mut self, line: u64, e: &DecodeError, bytes: usize) -> io::Result<()> {
        self.inner.dead_letter(line, e, bytes)
    }

    fn new_day(&mut self, engine: &Engine, day_start: i64) -> io::Result<()> {
        let p = self.point(engine)?;
        self.history.push(p);
        self.inner.new_day(engine, day_start)
    }

    fn load(&mut self, engine: &mut Engine, batch: &[AuditEvent<'_>]) -> io::Result<()> {
        let Some(store) = self.store.as_ref().filter(|_| self.keep.is_some()) else {
            return Ok(());
        };
        let ids = engine.idle_among(batch);
        if ids.is_empty() {
            return Ok(());
        }
        let states = store.load_agents(&self.topic, 0, &ids).map_err(store_io)?;
        for st in states {
            let loaded = engine.reload(st);
            debug_assert!(loaded, "each idle agent is loaded once");
            self.loaded += u64::from(loaded);
        }
        Ok(())
    }

    fn unload(&mut self, engine: &mut Engine) -> io::Result<()> {
        let (Some(store), Some(keep)) = (&self.store, self.keep) else {
            return Ok(());
        };
        if engine.resident_count() <= keep {
            return Ok(());
        }
        let (n, changed) = engine.evict(keep - keep / 8, crate::engine::Evict::Changed);
        self.unloaded += n as u64;
        for chunk in changed.chunks(WRITE_CHUNK) {
            let refs: Vec<&AgentState> = chunk.iter().collect();
            store.put_agents(&self.topic, 0, &refs).map_err(store_io)?;
        }
        Ok(())
    }
}

/// Writes a replay's result as a state directory that `guardian posture --state DIR` (and the
/// admin API) read: the agents as partition 0 of a topic named after the source, the incidents,
/// the daily fleet scores and a ledger. With a recorder [`StateRecorder::spilling_to`] a store,
/// that store is the one written (`dir` is where it was opened).
pub fn write_state<S>(
    dir: &std::path::Path,
    mut engine: Engine,
    rec: &StateRecorder<S>,
    source: &str,
    lines: u64,
) -> Result<(), crate::store::StoreError> {
    use crate::store::{PartitionDelta, Store};
    let store = match &rec.store {
        Some(s) => s.clone(),
        None => Store::open(dir)?,
    };
    let stats = engine.stats().clone();
    let set = engine.blueprints();
    let mut ledger = store.ledger()?;
    let setup = crate::posture::Ledger {
        guardian_ids: vec!["replay".into()],
        source: "replay".into(),
        audit_topics: vec![source.to_string()],
        incident_retention_days: rec.settings.incident_retention_ms as f64 / 86_400_000.0,
        blueprints: crate::posture::blueprint_facts(set),
        ..crate::posture::Ledger::default()
    };
    ledger.record_setup(setup, chrono::Utc::now().timestamp_millis());
    let topic = state_topic(source);
    let fleet = engine.fleet_state();
    let sessions = engine.take_session_changes();
    let (duplicates, duplicate_figures) = engine.take_duplicate_changes();
    // The agents and the incidents in bounded batches (one batch of a whole fleet would take
    // several times its size in memory), then the partition's meta: a state without it is
    // not read as one.
    let mut states = engine.into_dirty_states().peekable();
    while states.peek().is_some() {
        // Each chunk's states are freed once written: the store grows as the engine shrinks.
        let chunk: Vec<AgentState> = states.by_ref().take(WRITE_CHUNK).collect();
        let refs: Vec<&AgentState> = chunk.iter().collect();
        store.write_agents(&topic, 0, &refs)?;
    }
    for chunk in rec.incidents.chunks(WRITE_CHUNK) {
        store.write_incidents_unindexed(chunk)?;
    }
    // The index by agent once the fold's states are freed (it would add to the fold's peak).
    store.index_incidents()?;
    store.checkpoint(
        &[PartitionDelta {
            topic: &topic,
            partition: 0,
            next_offset: lines as i64,
            stats: &stats,
            fleet,
            agents: Vec::new(),
            sessions,
            duplicates,
            duplicate_figures,
            caught_up: Vec::new(),
        }],
        &[],
        &[],
        &[],
        Some(&ledger),
    )?;
    for p in &rec.history {
        store.push_history(p)?;
    }
    store.db().flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{load_blueprint, Assignment, BlueprintSet};
    use std::sync::Arc;

    /// Static frequency over 30 calls a minute, judged from the start.
    fn engine() -> (Engine, Decoder) {
        let bp = load_blueprint(
            "t",
            &serde_json::json!({"name": "T", "mode": "monitor",
                "anomaly": {"frequency_threshold": 30}, "learned": {"learning_period": 0}}),
        )
        .unwrap();
        let set = BlueprintSet::from_blueprints(
            vec![bp],
            Assignment {
                default: "t".into(),
                ..Assignment::default()
            },
        )
        .unwrap();
        let decoder = Decoder::new(&set.decoder_options()).unwrap();
        (Engine::new(Arc::new(set)), decoder)
    }

    fn line(agent: &str, id: usize, ts: i64) -> String {
        format!(
            r#"{{"event_id":"{id}","agent_id":"{agent}","tool_name":"t","timestamp":"{}"}}"#,
            crate::event::format_rfc3339_ms(ts)
        ) + "\n"
    }

    const T: i64 = 1_772_460_000_000;

    fn replay(text: &str) -> (ReplaySummary, Vec<Incident>, Vec<u64>) {
        let (mut e, d) = engine();
        let mut out = Vec::new();
        let mut refused = Vec::new();
        let s = run(
            &mut e,
            &d,
            text.as_bytes(),
            &mut out,
            |no, err| {
                assert_eq!(err.kind(), "future_timestamp");
                refused.push(no);
            },
            None,
        )
        .unwrap();
        (s, out, refused)
    }

    #[test]
    fn one_line_dated_far_ahead_of_the_stream_is_refused_and_blinds_nothing() {
        let mut text: String = (0..10)
            .map(|i| line("a", i, T + i as i64 * 30_000))
            .collect();
        text += &line("a", 10, T + 10 * 365 * 86_400_000);
        // Then 100 calls in a minute.
        text += &(0..100)
            .map(|i| line("a", 11 + i, T + 300_000 + i as i64 * 500))
            .collect::<String>();
        let (s, out, refused) = replay(&text);
        assert_eq!(refused, vec![11]);
        assert_eq!((s.future, s.malformed, s.late_events), (1, 1, 0));
        assert!(
            out.iter()
                .any(|i| i.kind == IncidentType::FrequencySpike && i.agent_id == "a"),
            "{out:?}"
        );
    }

    #[test]
    fn forged_times_on_the_first_line_or_amid_the_stream_are_refused() {
        // The first line dated far ahead; then three forged lines of other agents near its
        // time, each amid the stream's own lines; then a burst.
        let far = T + 10 * 365 * 86_400_000;
        let mut text = line("x", 0, far);
        for i in 0..30 {
            text += &line("a", 1 + i, T + i as i64 * 10_000);
            if i % 10 == 5 {
                text += &line(&format!("forger-{i}"), 100 + i, far + i as i64);
            }
        }
        text += &(0..100)
            .map(|i| line("a", 200 + i, T + 300_000 + i as i64 * 500))
            .collect::<String>();
        let (s, out, refused) = replay(&text);
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert_eq!((s.future, s.late_events), (4, 0));
        assert!(out
            .iter()
            .any(|i| i.kind == IncidentType::FrequencySpike && i.agent_id == "a"));
    }

    #[test]
    fn the_stream_moving_on_after_a_gap_is_folded() {
        // Two hours of silence (an outage), then the fleet again: the first lines after the gap
        // wait for the next ones to confirm their time, and all are folded in order.
        let mut text: String = (0..10)
            .map(|i| line("a", i, T + i as i64 * 1_000))
            .collect();
        let after = T + 2 * 3_600_000;
        text += &(0..10)
            .map(|i| line(["a", "b"][i % 2], 10 + i, after + i as i64 * 1_000))
            .collect::<String>();
        let (s, _, refused) = replay(&text);
        assert!(refused.is_empty());
        assert_eq!((s.future, s.malformed, s.late_events), (0, 0, 0));
        assert_eq!(s.events, 20);
    }
}
