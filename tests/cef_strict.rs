//! `guardian replay --output cef` over a generated fleet: every line passes a strict CEF check
//! written here independently of the formatter: header field count and escaping, version,
//! severity range, known Class IDs, extension key names from the dictionary, escape sequences,
//! value types and the standard's lengths, and a label for every custom field.

use std::collections::BTreeSet;

#[path = "support/fleet.rs"]
mod fleet;
use std::process::Command;

/// Splits the header on unescaped pipes; only `\\` and `\|` are valid escapes there.
fn header(line: &str) -> Result<(Vec<String>, &str), String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut it = line.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '\\' => match it.next() {
                Some((_, e @ ('\\' | '|'))) => cur.push(e),
                other => return Err(format!("bad header escape \\{other:?}")),
            },
            '|' => {
                fields.push(std::mem::take(&mut cur));
                if fields.len() == 6 {
                    return Ok((fields, &line[i + 1..]));
                }
            }
            '\r' | '\n' => return Err("line break in header".into()),
            c => cur.push(c),
        }
    }
    Err(format!(
        "{} header fields, want 6 after the version",
        fields.len()
    ))
}

/// Unescapes an extension value; only `\\`, `\=`, `\n`, `\r` are valid.
fn unescape(v: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut it = v.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some('\\') => out.push('\\'),
                Some('=') => out.push('='),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                other => return Err(format!("bad extension escape \\{other:?} in {v:?}")),
            },
            '=' => return Err(format!("unescaped = in value {v:?}")),
            '\r' | '\n' => return Err("raw line break in extension".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Splits `k=v k=v` at unescaped equals signs: each key is the word before its `=`.
fn extension(ext: &str) -> Result<Vec<(String, String)>, String> {
    let b = ext.as_bytes();
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'=' => {
                eqs.push(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let mut pairs = Vec::new();
    let mut key_start = 0;
    for (n, &eq) in eqs.iter().enumerate() {
        let key = &ext[key_start..eq];
        if key.is_empty() || !key.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("bad key {key:?}"));
        }
        let end = match eqs.get(n + 1) {
            Some(&next) => {
                let sp = ext[..next]
                    .rfind(' ')
                    .filter(|&s| s > eq)
                    .ok_or_else(|| format!("no space before the key after {key}"))?;
                key_start = sp + 1;
                sp
            }
            None => ext.len(),
        };
        pairs.push((key.to_string(), unescape(&ext[eq + 1..end])?));
    }
    Ok(pairs)
}

/// The dictionary keys this product may use, with their maximum length (0 = numeric).
fn limit(key: &str) -> Option<usize> {
    Some(match key {
        "rt" | "start" | "end" | "cn1" | "cfp1" | "cfp2" => 0,
        "externalId" => 40,
        "act" | "outcome" => 63,
        "dvchost" => 100,
        "deviceExternalId" => 255,
        "msg" | "suser" | "cat" | "reason" => 1023,
        "cs1" | "cs2" | "cs3" | "cs4" | "cs5" | "cs6" => 4000,
        k if k.ends_with("Label") => 1023,
        _ => return None,
    })
}

fn check(line: &str) -> Result<(), String> {
    let rest = line.strip_prefix("CEF:0|").ok_or("not CEF:0")?;
    let (h, ext) = header(rest)?;
    // vendor, product, version, class id, name, severity
    if h.len() != 6 {
        return Err(format!("{} header fields", h.len()));
    }
    let (vendor, product, version, class, name, sev) = (&h[0], &h[1], &h[2], &h[3], &h[4], &h[5]);
    if vendor.chars().count() > 63 || product.chars().count() > 63 || version.chars().count() > 31 {
        return Err("header field too long".into());
    }
    if ![
        "100", "101", "102", "103", "110", "111", "112", "113", "120", "200", "201", "300",
    ]
    .contains(&class.as_str())
    {
        return Err(format!("unknown class id {class}"));
    }
    if name.is_empty() || name.chars().count() > 512 {
        return Err("bad name".into());
    }
    let s: u8 = sev.parse().map_err(|_| format!("severity {sev:?}"))?;
    if s > 10 {
        return Err(format!("severity {s}"));
    }
    let pairs = extension(ext)?;
    let mut keys = BTreeSet::new();
    for (k, v) in &pairs {
        if !keys.insert(k.as_str()) {
            return Err(format!("duplicate key {k}"));
        }
        let max = limit(k).ok_or_else(|| format!("key {k} is not in the dictionary"))?;
        if max == 0 {
            if k.starts_with("cfp") {
                v.parse::<f64>()
                    .map_err(|_| format!("{k}={v:?} is not a float"))?;
            } else {
                v.parse::<i64>()
                    .map_err(|_| format!("{k}={v:?} is not an integer"))?;
            }
        } else if v.chars().count() > max {
            return Err(format!("{k} longer than {max}"));
        }
        if v.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
            return Err(format!("control character in {k}"));
        }
    }
    for k in &keys {
        let custom = k.starts_with("cs") || k.starts_with("cn") || k.starts_with("cfp");
        if custom && !k.ends_with("Label") && !keys.contains(format!("{k}Label").as_str()) {
            return Err(format!("{k} without {k}Label"));
        }
    }
    for required in ["rt", "cat", "dvchost"] {
        if !keys.contains(required) {
            return Err(format!("missing {required}"));
        }
    }
    Ok(())
}

#[test]
fn the_checker_rejects_what_it_must() {
    let good = "CEF:0|V|P|1|100|N|5|rt=1 cat=x dvchost=h msg=a\\=b c|d";
    assert_eq!(check(good), Ok(()));
    for bad in [
        "CEF:0|V|P|1|100|N|5|rt=1 cat=x dvchost=h msg=a=b",
        "CEF:0|V|P|1|100|N|11|rt=1 cat=x dvchost=h",
        "CEF:0|V|P|1|999|N|5|rt=1 cat=x dvchost=h",
        "CEF:0|V|P|1|100|N|5|rt=x cat=x dvchost=h",
        "CEF:0|V|P|1|100|N|5|rt=1 cat=x dvchost=h cs1=a",
        "CEF:0|V|P|1|100|N|5|rt=1 cat=x dvchost=h foo=a",
        "CEF:0|V|P|1|100|N|5|rt=1 cat=x dvchost=h msg=a\\|b",
        "CEF:0|V|P|1|100|N|5|rt=1 cat=x dvchost=h externalId=01234567890123456789012345678901234567890",
        "CEF:0|V|P|1|100|N|5",
        "CEF:0|V\\x|P|1|100|N|5|rt=1 cat=x dvchost=h",
    ] {
        assert!(check(bad).is_err(), "{bad}");
    }
}

#[test]
fn replay_output_cef_over_a_generated_fleet_passes_a_strict_cef_check() {
    let dir = tempfile::tempdir().unwrap();
    let events = fleet::hostile_fleet(dir.path());
    let bin = env!("CARGO_BIN_EXE_guardian");
    let out = Command::new(bin)
        .args([
            "replay",
            "-q",
            "--output",
            "cef",
            "--guardian-id",
            "g|=1",
            "--assign",
            fleet::ASSIGNMENT,
        ])
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut classes = BTreeSet::new();
    let mut n = 0;
    for line in text.lines() {
        check(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        classes.insert(line.split('|').nth(4).unwrap().to_string());
        n += 1;
    }
    assert!(n >= 20, "only {n} records");
    // Incidents of several kinds, kill commands, dead letters.
    for c in ["100", "102", "103", "110", "200", "300"] {
        assert!(classes.contains(c), "no record of class {c} in {classes:?}");
    }
    eprintln!("{n} CEF records checked; classes {classes:?}");
}
