//! The top-level modules only point down: no import cycle between them, and no import from a
//! layer to one above it in the declared order ([`LAYERS`], the README's table).
//!
//! Reads every `src/**/*.rs`, takes each `crate::module` it names (in `use` lines, grouped
//! `use crate::{a, b::C}` imports and inline paths; comments are skipped), and fails on any cycle
//! of the graph of top-level modules, or any edge that points up, naming the files that make it.
//! A new top-level module must be given its layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers from the top, and their modules: a module may use its own layer's modules (no
/// cycle) and those of every layer below.
const LAYERS: &[(&str, &[&str])] = &[
    ("commands", &["cli", "demo", "replay"]),
    ("daemon", &["app"]),
    ("sources", &["source"]),
    ("configuration", &["config"]),
    ("admin API", &["api"]),
    ("run-time view", &["telemetry"]),
    ("state store", &["store"]),
    ("outputs", &["sink"]),
    ("fleet view", &["posture"]),
    (
        "core",
        &[
            "engine",
            "state",
            "detect",
            "response",
            "blueprint",
            "control",
            "simulate",
        ],
    ),
    (
        "leaves",
        &[
            "event", "secret", "tls", "kafka", "prefetch", "chunks", "stop", "text", "files",
        ],
    ),
];

/// The layer of a module (0 at the top), if declared.
fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&m))
}

/// Edges that point up, and modules no layer declares, as messages.
fn order_violations(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, edges) in g {
        let Some(lf) = layer_of(from) else {
            out.push(format!("module {from} has no layer in LAYERS"));
            continue;
        };
        for (to, files) in edges {
            match layer_of(to) {
                Some(lt) if lt < lf => out.push(format!(
                    "{from} ({}) uses {to} ({}), a layer above it: {}",
                    LAYERS[lf].0,
                    LAYERS[lt].0,
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(_) => {}
                None => out.push(format!("module {to} has no layer in LAYERS")),
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Module → module it names → files that name it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The top-level module of a file under `src/` (`src/app/fold.rs` → `app`).
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// Identifiers at depth one of the brace group starting at `text[0] == '{'`.
fn grouped(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 2 {
                    names.push(std::mem::take(&mut current));
                }
            }
            '}' => {
                if depth == 1 {
                    names.push(std::mem::take(&mut current));
                }
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => names.push(std::mem::take(&mut current)),
            _ if depth == 1 => current.push(c),
            _ => {}
        }
    }
    names
        .iter()
        .filter_map(|n| n.trim().split("::").next())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && n != "self")
        .collect()
}

/// The top-level modules one file's code names through `crate::`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        // `crate::` preceded by an identifier character is another path (`$crate::`, `mycrate::`).
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if rest.starts_with('{') {
            out.extend(grouped(rest));
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn graph(files: &[(PathBuf, String)]) -> Graph {
    let mut g = Graph::new();
    for (rel, text) in files {
        let Some(from) = top_module(rel) else {
            continue;
        };
        let edges = g.entry(from.clone()).or_default();
        for to in named_modules(text) {
            if to != from {
                edges
                    .entry(to)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    g
}

/// Every cycle found by a depth-first search, as the modules along it.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut c = path[at..].to_vec();
            c.push(m.to_string());
            found.push(c);
            return;
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for next in g.get(m).into_iter().flat_map(|e| e.keys()) {
            visit(g, next, path, done, found);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(g, m, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn describe(g: &Graph, cycle: &[String]) -> String {
    let mut s = cycle.join(" -> ");
    for w in cycle.windows(2) {
        let files = &g[&w[0]][&w[1]];
        s.push_str(&format!(
            "\n  {} -> {}: {}",
            w[0],
            w[1],
            files.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    s
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).expect("a source file");
            let rel = p.strip_prefix(root).expect("under src").to_path_buf();
            out.push((rel, text));
        }
    }
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let g = graph(&files);
    assert!(g.len() > 10, "the source tree was not read: {:?}", g.keys());
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules:\n{}",
        found
            .iter()
            .map(|c| describe(&g, c))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_module_has_a_layer_and_no_import_points_up() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let g = graph(&files);
    // `lib.rs` and `main.rs` hold the crate together; they are no layer.
    let g: Graph = g
        .into_iter()
        .filter(|(m, _)| m != "lib" && m != "main")
        .collect();
    let bad = order_violations(&g);
    assert!(bad.is_empty(), "layer order:\n{}", bad.join("\n"));
}

#[test]
fn the_order_check_finds_an_import_that_points_up() {
    // The state store naming the daemon, and a module nobody placed.
    let files = vec![
        (
            PathBuf::from("store/mod.rs"),
            "use crate::app::Core;\nuse crate::event::X;\n".to_string(),
        ),
        (
            PathBuf::from("newcomer.rs"),
            "use crate::event::X;\n".to_string(),
        ),
    ];
    let bad = order_violations(&graph(&files));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("newcomer has no layer"), "{bad:?}");
    assert!(
        bad[1].starts_with("store (state store) uses app (daemon)")
            && bad[1].contains("store/mod.rs"),
        "{bad:?}"
    );
    let down = vec![(
        PathBuf::from("app/mod.rs"),
        "use crate::store::S;\n".to_string(),
    )];
    assert!(order_violations(&graph(&down)).is_empty());
}

#[test]
fn the_check_finds_a_cycle_through_grouped_and_inline_paths() {
    let files = vec![
        (
            PathBuf::from("a/mod.rs"),
            "use crate::{b::{X, Y}, c};\n// crate::d in a comment is no import\n".to_string(),
        ),
        (
            PathBuf::from("b.rs"),
            "fn f() { crate::c::g(); }\n".to_string(),
        ),
        (
            PathBuf::from("c.rs"),
            "pub use crate::a::Z;\nmacro_rules! m { () => { $crate::b::h() } }\n".to_string(),
        ),
    ];
    let g = graph(&files);
    assert!(!g["a"].contains_key("d"), "{g:?}");
    assert!(!g["c"].contains_key("b"), "{g:?}");
    let found = cycles(&g);
    assert!(
        found
            .iter()
            .any(|c| c.first() == Some(&"a".to_string()) && c.contains(&"c".to_string())),
        "{found:?}"
    );
    let acyclic = vec![(PathBuf::from("a.rs"), "use crate::b::X;\n".to_string())];
    assert!(cycles(&graph(&acyclic)).is_empty());
}
