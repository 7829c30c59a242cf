//! The README's verification recipes for agents (Python and Node), run by the real interpreters
//! against commands this build signs: they obey a good command and a command signed by a
//! previous key, and refuse a tampered one, an expired one, one signed by an unknown key, a
//! misaddressed one (Kafka key of another agent), a replay and an older one.

use agent_guardian::control::{Command, Verb};

mod support;

const KEY: &str = "verifier-signing-key-0123456789";
const OLD_KEY: &str = "verifier-previous-key-0123456789";

/// The README's code block that starts with `first_line`.
fn snippet(first_line: &str) -> &'static str {
    let readme = include_str!("../README.md");
    let start = readme.find(first_line).expect("snippet in README");
    let end = start + readme[start..].find("```").expect("end of snippet");
    &readme[start..end]
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Cases as `(kafka key, command JSON, expected verdict)`, in the order an agent reads them.
fn cases() -> Vec<(String, String, &'static str)> {
    let agent = "ägent \"7\" | x=1 \\ ✓";
    let t = now() - 60_000;
    let cmd = |verb: Verb, at: i64, key: &str| {
        Command::manual(
            verb,
            agent,
            "line\nbreak\ttab \u{1} ctrl",
            at,
            "operator@host",
        )
        .sign(key.as_bytes())
        .expect("sign")
    };
    let json = |c: &Command| String::from_utf8(c.to_json().expect("json")).expect("utf8");
    let kill = cmd(Verb::Kill, t, KEY);
    let mut tampered = cmd(Verb::Revive, t + 1_000, KEY);
    tampered.reason.push('!');
    let expired = Command::manual(Verb::Revive, agent, "old", t - 7_200_000, "ops")
        .valid_for(t - 7_200_000, 60_000)
        .sign(KEY.as_bytes())
        .expect("sign");
    let unknown = cmd(Verb::Revive, t + 2_000, "a-key-the-agent-does-not-hold");
    let misaddressed = cmd(Verb::Revive, t + 3_000, KEY);
    let revive_by_old = cmd(Verb::Revive, t + 4_000, OLD_KEY);
    let older = cmd(Verb::Kill, t + 500, KEY);
    let a = agent.to_string();
    vec![
        (a.clone(), json(&kill), "ok"),
        (a.clone(), json(&tampered), "bad"),
        (a.clone(), json(&expired), "bad"),
        (a.clone(), json(&unknown), "bad"),
        ("another-agent".into(), json(&misaddressed), "bad"),
        (a.clone(), json(&revive_by_old), "ok"),
        (a.clone(), json(&revive_by_old), "bad"), // replayed
        (a.clone(), json(&older), "bad"),         // issued before the last obeyed
    ]
}

/// Runs `program args…` with the cases on stdin (`key\tjson` lines), one verdict per line.
fn run(program: &str, args: &[&str]) -> Option<Vec<String>> {
    let mut input = String::new();
    for (key, json, _) in cases() {
        input.push_str(&format!("{key}\t{json}\n"));
    }
    let out = support::pipe(program, args, input.into_bytes())?;
    assert!(out.status.success(), "{program}: {out:?}");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

fn expected() -> Vec<String> {
    cases().into_iter().map(|(_, _, v)| v.to_string()).collect()
}

#[test]
fn the_readme_python_recipe_obeys_good_commands_and_refuses_the_rest() {
    let script = format!(
        "{}\nimport sys\nkeys = {{key_id(k.encode()): k.encode() for k in sys.argv[1:]}}\nlast = {{}}\nfor line in sys.stdin:\n    msg_key, msg = line.rstrip('\\n').split('\\t', 1)\n    print('ok' if verify(msg.encode(), msg_key.encode(), keys, last) else 'bad')\n",
        snippet("import hmac, hashlib, json")
    );
    if let Some(got) = run("python3", &["-c", &script, KEY, OLD_KEY]) {
        assert_eq!(got, expected());
    }
}

#[test]
fn the_readme_node_recipe_obeys_good_commands_and_refuses_the_rest() {
    let script = format!(
        "{}\nconst keys = new Map(process.argv.slice(1).map((k) => [keyId(Buffer.from(k)), Buffer.from(k)]));\nconst last = new Map();\nconst lines = require(\"fs\").readFileSync(0, \"utf8\").split(\"\\n\").filter((l) => l);\nfor (const line of lines) {{\n  const i = line.indexOf(\"\\t\");\n  console.log(verify(line.slice(i + 1), line.slice(0, i), keys, last) ? \"ok\" : \"bad\");\n}}\n",
        snippet("const crypto = require(\"crypto\");")
    );
    if let Some(got) = run("node", &["-e", &script, KEY, OLD_KEY]) {
        assert_eq!(got, expected());
    }
}
