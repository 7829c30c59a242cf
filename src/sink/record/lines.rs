//! `guardian replay --output cef|json|ocsf`: the records the SIEM sinks would send, one per line.

use std::io::{self, Write};

use super::cef::CefFormatter;
use super::ecs::EcsFormatter;
use super::ocsf::OcsfFormatter;
use super::{DeadLetter, Record};
use crate::control::Command;
use crate::event::DecodeError;
use crate::response::{Action, Incident};

/// Line format of SIEM records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// ArcSight CEF.
    #[default]
    Cef,
    /// ECS JSON.
    Json,
    /// OCSF JSON (schema [`super::ocsf::OCSF_VERSION`]).
    Ocsf,
}

/// Formats one record in either format.
#[derive(Debug, Clone)]
pub enum Formatter {
    /// CEF lines.
    Cef(CefFormatter),
    /// ECS JSON lines.
    Json(EcsFormatter),
    /// OCSF JSON lines.
    Ocsf(OcsfFormatter),
}

impl Formatter {
    /// A formatter of `format` reporting `host`.
    pub fn new(format: RecordFormat, host: &str) -> Formatter {
        match format {
            RecordFormat::Cef => Formatter::Cef(CefFormatter::new(host)),
            RecordFormat::Json => Formatter::Json(EcsFormatter::new(host)),
            RecordFormat::Ocsf => Formatter::Ocsf(OcsfFormatter::new(host)),
        }
    }

    /// The line of `r` (no terminator).
    pub fn line(&self, r: &Record<'_>) -> Result<String, serde_json::Error> {
        match self {
            Formatter::Cef(f) => Ok(f.line(r)),
            Formatter::Json(f) => f.line(r),
            Formatter::Ocsf(f) => f.line(r),
        }
    }
}

/// Writes every record a replay produces: incidents, the kill command of each automatic kill,
/// and a dead letter per malformed line.
pub struct RecordLines<W: Write> {
    out: W,
    formatter: Formatter,
    guardian_id: String,
    source: String,
}

impl<W: Write> RecordLines<W> {
    /// Writes to `out`; commands carry `guardian_id`; dead letters name `source` (a file).
    pub fn new(out: W, formatter: Formatter, guardian_id: &str, source: &str) -> Self {
        RecordLines {
            out,
            formatter,
            guardian_id: guardian_id.into(),
            source: source.into(),
        }
    }

    /// Flushes the writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn write(&mut self, r: &Record<'_>) -> io::Result<()> {
        let line = self.formatter.line(r).map_err(io::Error::other)?;
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> RecordLines<W> {
    /// Writes an incident, and the kill command of an automatic kill.
    pub fn write_incident(&mut self, i: &Incident) -> io::Result<()> {
        self.write(&Record::Incident(i))?;
        if i.action_taken == Action::Killed {
            let c = Command::for_kill(i, &self.guardian_id);
            self.write(&Record::Command(&c))?;
        }
        Ok(())
    }

    /// Writes the dead letter of malformed line `line` (1-based) of the source.
    pub fn write_dead_letter(
        &mut self,
        line: u64,
        e: &DecodeError,
        bytes: usize,
    ) -> io::Result<()> {
        let d = DeadLetter {
            source: format!("{}:{line}", self.source),
            at: chrono::Utc::now().timestamp_millis(),
            kind: e.kind().into(),
            error: e.to_string(),
            key: None,
            bytes,
        };
        self.write(&Record::DeadLetter(&d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_is_named_in_configuration_and_gives_its_records() {
        #[derive(serde::Deserialize)]
        struct Sink {
            format: RecordFormat,
        }
        let i = crate::sink::record::cef::tests::incident(
            crate::response::IncidentType::OffHours,
            "a",
            "t",
        );
        for (name, starts) in [
            ("cef", "CEF:0|"),
            ("json", "{\"@timestamp\""),
            ("ocsf", "{\"activity_id\":1"),
        ] {
            let s: Sink = toml::from_str(&format!("format = {name:?}")).expect(name);
            let line = Formatter::new(s.format, "h")
                .line(&Record::Incident(&i))
                .unwrap();
            assert!(line.starts_with(starts), "{name}: {line}");
        }
        assert!(toml::from_str::<Sink>("format = \"leef\"").is_err());
    }
}
