//! The layers of the daemon and the transport import each other one way
//! only: no module-level import cycle in daemon/src or transport/src.
//!
//! A module is a file (or a folder's mod.rs); it depends on another when it
//! names it in a path (`use crate::spool::Stream`, `super::task::Cmd`,
//! `crate::metrics::render(..)`). A parent and its own children may name
//! each other (a mod.rs re-exports and declares what it holds); siblings
//! and cousins may not go round in a circle. A cycle fails the test,
//! printed with the lines that make each step of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from its crate's root: `["consume", "task"]`.
type Module = Vec<String>;

/// Which sibling depends on which, and the first place that makes it so:
/// the module that names, the one it names, file and line.
type Edges = BTreeMap<Module, BTreeMap<Module, Step>>;

struct Step {
    from: Module,
    to: Module,
    file: PathBuf,
    line: usize,
}

fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, prefix: &Module, out: &mut BTreeMap<Module, PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let path = e.expect("entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name == "bin" && prefix.is_empty() {
                    continue; // binaries are crates of their own
                }
                let mut m = prefix.clone();
                m.push(name);
                if path.join("mod.rs").exists() {
                    out.insert(m.clone(), path.join("mod.rs"));
                }
                walk(&path, &m, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                if name == "mod" {
                    continue;
                }
                let mut m = prefix.clone();
                if name != "lib" || !prefix.is_empty() {
                    m.push(name);
                }
                out.insert(m, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &Vec::new(), &mut out);
    out
}

/// The text without comments and string literals (so that neither a
/// `crate::` in a doc comment nor a URL counts).
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"' above all); lifetimes are left alone.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The paths a piece of code names, each as its segments, with the line
/// it starts on: `use` trees expanded (`use crate::{a::b, c::{d, e}}`),
/// and every other path that starts with `crate`, `super` or `self`, or
/// with a child module's name in a `use`.
fn paths(code: &str) -> Vec<(Vec<String>, usize)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let line_at = |i: usize| code[..i].matches('\n').count() + 1;
    while i < b.len() {
        let boundary = i == 0 || !ident(b[i - 1]) && b[i - 1] != b':';
        if boundary && b[i..].starts_with(b"use ") {
            let end = code[i..].find(';').map_or(b.len(), |e| i + e);
            let tree = code[i + 4..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let tree = ["::", "{", "}", ","].iter().fold(tree, |t, p| {
                t.replace(&format!(" {p}"), p).replace(&format!("{p} "), p)
            });
            let line = line_at(i);
            for p in expand(&tree) {
                out.push((p, line));
            }
            i = end;
            continue;
        }
        if boundary && ident(b[i]) {
            let start = i;
            while i < b.len() && (ident(b[i]) || b[i..].starts_with(b"::")) {
                i += if b[i] == b':' { 2 } else { 1 };
            }
            let p: Vec<String> = code[start..i]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if p.len() > 1 && matches!(p[0].as_str(), "crate" | "super" | "self") {
                out.push((p, line_at(start)));
            }
            continue;
        }
        i += 1;
    }
    out
}

/// `a::{b::c, d}` as `[a, b, c]`, `[a, d]`; `as` renames dropped.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let Some(open) = tree.find('{') else {
        let plain = tree.split(" as ").next().unwrap_or(tree);
        return vec![plain
            .split("::")
            .filter(|s| !s.is_empty() && *s != "*")
            .map(str::to_owned)
            .collect()];
    };
    let prefix: Vec<String> = tree[..open]
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..k]);
                from = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    let mut out = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        for rest in expand(part) {
            let mut p = prefix.clone();
            p.extend(rest.into_iter().filter(|s| s != "self"));
            out.push(p);
        }
    }
    out
}

/// The module a path names, from module `at`: the longest module prefix.
fn resolve(path: &[String], at: &Module, known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    // A folder's module is its mod.rs, so `super` is the parent of `at`
    // either way.
    let mut base: Module = at.clone();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        // A child module named directly (`use task::Cmd` in consume/mod.rs).
        Some(first) => {
            let mut child = at.clone();
            child.push(first.to_owned());
            if !known.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    let mut m = base;
    let mut found = None;
    for seg in rest {
        m.push(seg.clone());
        if known.contains_key(&m) {
            found = Some(m.clone());
        } else {
            break;
        }
    }
    found
}

fn edges(src: &Path) -> Edges {
    let known = modules(src);
    let mut edges = Edges::new();
    for (m, file) in &known {
        let text = std::fs::read_to_string(file).expect("read module");
        // A file's unit tests (a `mod tests` at its end) are not a layer:
        // they may reach anywhere, and their `super` is one level deeper.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (p, line) in paths(&code(text)) {
            let Some(to) = resolve(&p, m, &known) else {
                continue;
            };
            // Itself, its ancestors and its descendants do not count.
            if to.starts_with(m) || m.starts_with(&to) {
                continue;
            }
            // The step is between the two siblings that hold them (below
            // their common parent): a folder counts as one module to its
            // siblings, so `serve -> udp::batch` and `udp::io -> serve`
            // are a cycle of serve and udp.
            let common = m.iter().zip(&to).take_while(|(a, b)| a == b).count();
            let (a, b) = (m[..=common].to_vec(), to[..=common].to_vec());
            edges.entry(a).or_default().entry(b).or_insert(Step {
                from: m.clone(),
                to,
                file: file.clone(),
                line,
            });
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &Edges) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Module) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(next) = t.edges.get(v) {
            for w in next.keys() {
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let l = t.low[w].min(t.low[v]);
                    t.low.insert(v, l);
                } else if t.on.contains(w) {
                    let l = t.index[w].min(t.low[v]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "(root)".into()
    } else {
        m.join("::")
    }
}

/// Describes each cycle of `src`: its modules and, for each module in it,
/// where it names the next ones in the cycle.
fn report(src: &Path) -> Vec<String> {
    let edges = edges(src);
    cycles(&edges)
        .into_iter()
        .map(|scc| {
            let members: BTreeSet<&Module> = scc.iter().collect();
            let mut s = format!(
                "cycle: {}\n",
                scc.iter().map(name).collect::<Vec<_>>().join(", ")
            );
            for m in &scc {
                for (to, step) in &edges[m] {
                    if members.contains(to) {
                        s += &format!(
                            "  {} -> {}  ({}:{})\n",
                            name(&step.from),
                            name(&step.to),
                            step.file.display(),
                            step.line
                        );
                    }
                }
            }
            s
        })
        .collect()
}

fn src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

/// The crate's top-level modules by layer (a module's layer is one more
/// than the highest of those it names; leaves are 0), each with what it
/// names: the module graph, printed by the test (`--nocapture`).
fn graph(src: &Path) -> String {
    let edges = edges(src);
    let top: BTreeMap<&Module, Vec<&Module>> = edges
        .iter()
        .filter(|(m, _)| m.len() == 1)
        .map(|(m, to)| (m, to.keys().filter(|t| t.len() == 1).collect()))
        .collect();
    let mut layer: BTreeMap<&Module, usize> = BTreeMap::new();
    // Acyclic (checked first), so this settles within as many rounds as
    // there are modules.
    for _ in 0..=top.len() {
        for (m, to) in &top {
            let l = to
                .iter()
                .map(|t| layer.get(t).map_or(1, |l| l + 1))
                .max()
                .unwrap_or(0);
            layer.insert(m, l);
        }
    }
    let mut out = String::new();
    let max = layer.values().copied().max().unwrap_or(0);
    for l in (0..=max).rev() {
        for (m, to) in top.iter().filter(|(m, _)| layer[*m] == l) {
            let names: Vec<String> = to.iter().map(|t| name(t)).collect();
            out += &format!("  {l}  {} -> {}\n", name(m), names.join(", "));
        }
    }
    out
}

#[test]
fn the_daemon_and_the_transport_have_no_import_cycle() {
    let mut found = Vec::new();
    for krate in ["daemon", "transport"] {
        for c in report(&src(krate)) {
            found.push(format!("{krate}: {c}"));
        }
    }
    assert!(
        found.is_empty(),
        "module-level import cycles:\n{}",
        found.join("\n")
    );
    for krate in ["daemon", "transport"] {
        eprintln!(
            "{krate}/src, top-level modules by layer:\n{}",
            graph(&src(krate))
        );
    }
}

#[test]
fn the_check_finds_a_cycle_and_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "// use crate::c::X; (a comment: not a use)\nuse crate::b::{inner::{Y, Z}, W};\nfn f() { let _ = \"crate::c::X\"; }\n",
    )
    .unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod inner;\nuse inner::Y;\n").unwrap();
    std::fs::write(
        src.join("b/inner.rs"),
        "use super::super::c;\npub struct Y;\npub struct Z;\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "pub fn g() { crate::a::f() }\n").unwrap();
    let r = report(src);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with("cycle: a, b, c\n"), "{}", r[0]);
    assert!(r[0].contains("a -> b::inner"), "{}", r[0]);
    assert!(r[0].contains("c.rs:1"), "{}", r[0]);
    // Without the call in c there is none (the commented and quoted
    // names do not count).
    std::fs::write(src.join("c.rs"), "pub fn g() {}\n").unwrap();
    assert_eq!(report(src), Vec::<String>::new());
}
