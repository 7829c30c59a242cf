//! OCSF output checked by an independent validator: `guardian replay --output ocsf` over a
//! 400-agent, 4-week generated fleet (with hostile and malformed lines) gives records that the
//! OCSF schema (the part the records use, compiled by the OCSF project's own compiler, in
//! `tests/fixtures/ocsf-schema.json`), turned into JSON Schemas and applied by the `jsonschema`
//! package, and Prowler's `py-ocsf-models`, accept with 0 errors (`tests/support/ocsf_validate.py`).
//! `scripts/python-peers.sh` installs both from PyPI.

use std::process::Command;

#[path = "support/fleet.rs"]
mod fleet;
mod support;

const VALIDATOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/ocsf_validate.py"
);
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ocsf-schema.json"
);

/// Runs the validator on `records`: its exit status and output.
fn validate(records: &[u8]) -> Option<(bool, String)> {
    let out = support::pipe("python3", &[VALIDATOR, SCHEMA], records.to_vec())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        assert!(
            !support::required(),
            "the validator's packages are missing (scripts/python-peers.sh): {stderr}"
        );
        eprintln!("skipped: {stderr}");
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some((out.status.success(), text + &stderr))
}

#[test]
fn the_validator_refuses_what_it_must() {
    let good = concat!(
        r#"{"class_uid":6008,"class_name":"Application Error","category_uid":6,"activity_id":2,"#,
        r#""type_uid":600802,"time":5,"severity_id":1,"status_id":2,"message":"m","#,
        r#""metadata":{"version":"1.5.0","product":{"name":"agent-guardian","vendor_name":"agent-guardian","version":"0"}}}"#
    );
    let Some((ok, out)) = validate(format!("{good}\n").as_bytes()) else {
        return;
    };
    assert!(ok, "{out}");
    let mut bad = Vec::new();
    for (from, to) in [
        (r#""severity_id":1"#, r#""severity_id":9"#),
        (r#""time":5"#, r#""time":"5""#),
        (r#""message":"m","#, r#""message":"m","surprise":1,"#),
        (r#""type_uid":600802,"#, ""),
        (r#""class_uid":6008"#, r#""class_uid":6009"#),
        (r#""vendor_name":"agent-guardian","#, r#""vendor_name":7,"#),
    ] {
        let line = good.replacen(from, to, 1);
        assert_ne!(line, good);
        bad.extend_from_slice(line.as_bytes());
        bad.push(b'\n');
    }
    let (ok, out) = validate(&bad).expect("validator");
    assert!(!ok);
    let errors = out.lines().filter(|l| l.starts_with("line ")).count();
    assert!(errors >= 6, "{out}");
    for n in 1..=6 {
        assert!(
            out.contains(&format!("line {n} ")),
            "line {n} accepted:\n{out}"
        );
    }
}

#[test]
fn replay_output_ocsf_over_a_generated_fleet_validates_with_no_error() {
    let dir = tempfile::tempdir().expect("dir");
    let events = fleet::hostile_fleet(dir.path());
    let bin = env!("CARGO_BIN_EXE_guardian");
    let out = Command::new(bin)
        .args([
            "replay",
            "-q",
            "--output",
            "ocsf",
            "--assign",
            fleet::ASSIGNMENT,
        ])
        .arg(&events)
        .output()
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Some((ok, report)) = validate(&out.stdout) else {
        return;
    };
    assert!(
        ok,
        "{}",
        report.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    let summary: serde_json::Value =
        serde_json::from_str(report.lines().last().expect("summary")).expect("summary json");
    assert_eq!(summary["errors"], 0);
    let n = |class: &str| summary["records"][class].as_u64().unwrap_or(0);
    // Findings, kill commands and dead letters, all validated.
    assert!(n("detection_finding") >= 20, "{summary}");
    assert!(n("remediation_activity") >= 1, "{summary}");
    assert_eq!(n("application_error"), 2, "{summary}");
    eprintln!("OCSF records validated: {summary}");
}
