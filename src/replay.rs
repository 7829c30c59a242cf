//! `guardian replay`: events from a file or stdin through the engine, incidents to a writer as
//! JSON lines, a summary at the end. Malformed lines are counted and reported, never fatal.

use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::engine::Engine;
use crate::event::{DecodeError, Decoder};
use crate::response::{Incident, IncidentType};

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
    /// Agents seen.
    pub agents: usize,
    /// Incidents by type, in [`IncidentType::ALL`] order.
    pub incidents: [u64; IncidentType::ALL.len()],
    /// Wall time spent.
    pub elapsed: Duration,
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
            "replayed {} events from {} agents in {:.2} s ({:.0} events/s); {} malformed line(s); {} late event(s)\n\
             incidents: {} in all: {}",
            self.events,
            self.agents,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.malformed,
            self.late_events,
            self.incidents.iter().sum::<u64>(),
            by_type.join(", ")
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
}

/// Writes incidents as JSON lines.
pub struct JsonLines<W: Write>(pub W);

impl<W: Write> IncidentSink for JsonLines<W> {
    fn incident(&mut self, i: &Incident) -> io::Result<()> {
        serde_json::to_writer(&mut self.0, i)?;
        self.0.write_all(b"\n")
    }
}

/// Collects incidents in memory.
impl IncidentSink for Vec<Incident> {
    fn incident(&mut self, i: &Incident) -> io::Result<()> {
        self.push(i.clone());
        Ok(())
    }
}

/// Replays every line of `input`. `on_error` receives each malformed line's number (1-based) and error.
pub fn run(
    engine: &mut Engine,
    decoder: &Decoder,
    mut input: impl BufRead,
    sink: &mut impl IncidentSink,
    mut on_error: impl FnMut(u64, &DecodeError),
    progress: Option<&ProgressBar>,
) -> io::Result<ReplaySummary> {
    let started = Instant::now();
    let mut sum = ReplaySummary::default();
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(16);
    let mut line_no = 0u64;
    let mut bytes = 0u64;
    loop {
        buf.clear();
        let n = input.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        bytes += n as u64;
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        sum.lines += 1;
        match decoder.decode(line) {
            Ok(ev) => {
                engine.process(&ev, &mut out);
                sum.events += 1;
                for i in out.drain(..) {
                    sink.incident(&i)?;
                }
            }
            Err(e) => {
                sum.malformed += 1;
                sink.dead_letter(line_no, &e, line.len())?;
                on_error(line_no, &e);
            }
        }
        if line_no & 0xffff == 0 {
            if let Some(p) = progress {
                p.set_position(bytes);
                p.set_message(format!("{} events", sum.events));
            }
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let stats = engine.stats();
    sum.late_events = stats.late_events;
    sum.incidents = stats.incidents;
    sum.agents = engine.agent_count();
    sum.elapsed = started.elapsed();
    Ok(sum)
}
