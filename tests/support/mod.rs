//! Helpers shared by the tests that start real services (rsyslog, an SMTP server).
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Output, Stdio};

/// A program: the path in the environment variable named like it (upper case), else the first
/// existing candidate.
pub fn tool(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(name.to_uppercase()) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

pub fn required() -> bool {
    std::env::var("GUARDIAN_REQUIRE_E2E").is_ok_and(|v| v == "1")
}

pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run(cmd: &mut Proc) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 / localhost, made with the openssl CLI.
pub fn certificates(dir: &Path, openssl: &Path) {
    let d = |f: &str| dir.join(f);
    run(Proc::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=guardian-test-ca", "-keyout"])
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.pem")));
    run(Proc::new(openssl)
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(d("server.key"))
        .arg("-out")
        .arg(d("server.csr")));
    std::fs::write(d("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(Proc::new(openssl)
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(d("server.csr"))
        .arg("-CA")
        .arg(d("ca.pem"))
        .arg("-CAkey")
        .arg(d("ca.key"))
        .arg("-extfile")
        .arg(d("ext.cnf"))
        .arg("-out")
        .arg(d("server.pem")));
}

/// `/metrics` through the Python prometheus_client parsers.
pub fn parse_metrics(text: &str) -> Option<serde_json::Value> {
    let python = tool("METRICS_PYTHON", &["/usr/bin/python3"])?;
    let ok = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !required(),
            "Debian's python3-prometheus-client is needed (scripts/packages.sh)"
        );
        eprintln!("skipped: no prometheus_client for {}", python.display());
        return None;
    }
    let mut child = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/parse_metrics.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Runs `program args…` with `input` on its stdin (written from a thread, so a large input cannot
/// block on a full pipe while the program writes its output): its output; `None` (the test is
/// skipped) when the program cannot be started, a failure instead under `GUARDIAN_REQUIRE_E2E`.
pub fn pipe(program: &str, args: &[&str], input: Vec<u8>) -> Option<Output> {
    let mut child = match Proc::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(!required(), "{program}: {e}");
            eprintln!("skipped: {program}: {e}");
            return None;
        }
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait");
    feeder.join().expect("feeder").expect("write to stdin");
    Some(out)
}
