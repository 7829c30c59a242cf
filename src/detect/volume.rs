//! volume_spike on data volume: bytes in a sliding window over the static threshold, or one
//! call's bytes improbable under the agent's learned distribution for that tool (log-normal,
//! exponentially weighted, fixed size).

use serde::{Deserialize, Serialize};

use super::{human_ms, Episode, Finding, Observation, Ring};
use crate::blueprint::Blueprint;
use crate::response::{Basis, IncidentType};
use crate::state::prefetch;

/// Tools whose volume is learned per agent; calls of further tools are checked statically only.
const MAX_TOOLS: usize = 32;
/// Calls after which a tool's statistics become exponentially weighted.
const TOOL_HORIZON: f32 = 1000.0;
/// Smallest standard deviation of ln(bytes) assumed (a factor of about 1.65).
const MIN_LOG_SD: f32 = 0.5;

/// Learned distribution of ln(1 + bytes) of one tool's calls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ToolStats {
    /// [`super::tool_hash`] of the tool.
    pub tool: u64,
    /// Calls learned.
    pub n: u32,
    /// Mean of ln(1 + bytes).
    pub mean: f32,
    /// Variance of ln(1 + bytes).
    pub var: f32,
}

/// Per-agent data-volume state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeState {
    bytes: Ring<u64>,
    episode: Episode,
    tools: Vec<ToolStats>,
}

impl VolumeState {
    /// Fresh state for a blueprint.
    pub fn new(bp: &Blueprint) -> VolumeState {
        VolumeState {
            bytes: Ring::new(bp.data_volume.window_ms, bp.allowed_lateness_ms),
            episode: Episode::default(),
            tools: Vec::new(),
        }
    }

    /// The learned statistics of every tool.
    pub fn tools(&self) -> &[ToolStats] {
        &self.tools
    }

    /// Announces the memory an event reads.
    pub fn prefetch(&self) {
        self.bytes.prefetch();
        prefetch::lines(&self.tools, 12);
    }
}

fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Checks one event.
pub fn observe(
    bp: &Blueprint,
    st: &mut VolumeState,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    let Some(bytes) = obs.bytes else {
        return;
    };
    let mut sum = bytes;
    if obs.in_order {
        if !st
            .bytes
            .fits(bp.data_volume.window_ms, bp.allowed_lateness_ms)
        {
            st.bytes = Ring::new(bp.data_volume.window_ms, bp.allowed_lateness_ms);
        }
        // Whole bytes (saturating) keep the running window sum exact.
        st.bytes.add(obs.ts, bytes.round() as u64);
        sum = st.bytes.max_window_containing(obs.ts) as f64;
    }
    let over_static = bp.data_volume.max_bytes.filter(|m| sum > *m);

    let l = &bp.learned;
    let x = (1.0 + bytes).ln() as f32;
    let idx = st.tools.iter().position(|t| t.tool == obs.tool);
    let mut learned = None;
    if let Some(t) = idx.map(|i| st.tools[i]) {
        let sd = t.var.sqrt().max(MIN_LOG_SD);
        let z = (x - t.mean) / sd;
        if l.enabled
            && t.n >= l.volume_warmup_calls
            && bytes >= l.volume_min_bytes
            && f64::from(z) > l.z_threshold
        {
            learned = Some(t);
        }
    }
    // Learn from every in-order call that is not itself anomalous.
    if obs.in_order && learned.is_none() && over_static.is_none() {
        let i = match idx {
            Some(i) => Some(i),
            None if st.tools.len() < MAX_TOOLS => {
                st.tools.push(ToolStats {
                    tool: obs.tool,
                    n: 0,
                    mean: 0.0,
                    var: 0.0,
                });
                Some(st.tools.len() - 1)
            }
            None => None,
        };
        if let Some(i) = i {
            let t = &mut st.tools[i];
            t.n = t.n.saturating_add(1);
            let alpha = 1.0 / (t.n as f32).min(TOOL_HORIZON);
            let diff = x - t.mean;
            let incr = alpha * diff;
            t.mean += incr;
            t.var = (1.0 - alpha) * (t.var + diff * incr);
        }
    }

    if over_static.is_none() && learned.is_none() {
        st.episode.calm();
        return;
    }
    if !st.episode.violate(obs.ts, &bp.dedup) {
        return;
    }
    out.push(match (over_static, learned) {
        (Some(m), _) => Finding {
            kind: IncidentType::VolumeSpike,
            basis: Basis::Static,
            severity: bp.severities.volume_spike,
            observed: sum,
            expected: m,
            unit: "bytes",
            window_start: obs.ts - bp.data_volume.window_ms,
            window_end: obs.ts,
            description: format!(
                "Agent {:?} moved {} in {} (threshold {}), last call {:?}.",
                obs.agent_id,
                fmt_bytes(sum),
                human_ms(bp.data_volume.window_ms),
                fmt_bytes(m),
                obs.tool_name
            ),
            pattern: None,
            disc: 0,
        },
        (None, Some(t)) => {
            let typical = f64::from(t.mean).exp() - 1.0;
            Finding {
                kind: IncidentType::VolumeSpike,
                basis: Basis::Learned,
                severity: bp.severities.volume_spike,
                observed: bytes,
                expected: typical,
                unit: "bytes",
                window_start: obs.ts,
                window_end: obs.ts,
                description: format!(
                    "Agent {:?} moved {} in one {:?} call; its typical {:?} call moves {} (learned from {} calls).",
                    obs.agent_id,
                    fmt_bytes(bytes),
                    obs.tool_name,
                    obs.tool_name,
                    fmt_bytes(typical),
                    t.n
                ),
                pattern: None,
                disc: 0,
            }
        }
        (None, None) => return,
    });
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::response::{Basis, IncidentType};

    #[test]
    fn exfiltration_over_static_threshold_in_a_window() {
        let mut k = Kit::new(finance()); // 50 MB per minute
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..6).map(|i| ev(t0 + i * 5_000, "export_report", Some(10e6))));
        let v: Vec<_> = found
            .iter()
            .filter(|f| f.kind == IncidentType::VolumeSpike)
            .collect();
        assert_eq!(v.len(), 1, "{found:?}");
        assert_eq!(v[0].basis, Basis::Static);
        assert_eq!(v[0].observed, 60e6);
    }

    #[test]
    fn learned_volume_per_tool_after_warmup() {
        let mut k = Kit::new(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        // 60 calls of ~20 kB, one minute apart, then 5 MB (under the 50 MB static limit).
        let mut evs: Vec<_> = (0..60)
            .map(|i| {
                ev(
                    t0 + i * 60_000,
                    "read_invoice",
                    Some(20_000.0 + (i % 7) as f64 * 1000.0),
                )
            })
            .collect();
        evs.push(ev(t0 + 61 * 60_000, "read_invoice", Some(5e6)));
        // Another tool that normally moves 5 MB is not anomalous at 5 MB.
        evs.extend((0..60).map(|i| ev(t0 + 62 * 60_000 + i * 60_000, "export_report", Some(5e6))));
        let found = k.feed(evs);
        let v: Vec<_> = found
            .iter()
            .filter(|f| f.kind == IncidentType::VolumeSpike)
            .collect();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].basis, Basis::Learned);
        assert_eq!(v[0].observed, 5e6);
    }

    #[test]
    fn learned_volume_is_silent_during_warmup() {
        let mut k = Kit::new(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let mut evs: Vec<_> = (0..10)
            .map(|i| ev(t0 + i * 60_000, "read_invoice", Some(20_000.0)))
            .collect();
        evs.push(ev(t0 + 11 * 60_000, "read_invoice", Some(5e6)));
        assert!(k.feed(evs).is_empty());
    }
}
