//! The layering of `src/`, checked by reading the source (in the spirit of
//! rust-analyzer's tidy test): imports run one way, from the programs down to
//! the formats, and the programs that sit side by side never import one
//! another.
//!
//! What it reads: every `crate::`, `super::` and `self::` path in a file of
//! `src/` (in `use` trees, braces expanded, and in expressions), and in a
//! `mod.rs` the paths through its own child modules; comments, string
//! literals and `#[cfg(test)]` modules are skipped (tests may reach across).
//! Each path resolves to the file that defines it: the longest prefix that is
//! a file, so `crate::server::worker::Peers` is `src/server/worker.rs` and
//! `crate::server::Published` is `src/server/mod.rs`.
//!
//! What it refuses, naming the file and line:
//! - an import from a lower layer into a higher one ("runs upward"),
//! - an import between two program folders ("crosses between programs"),
//! - a module that no layer lists (a new module must take its floor),
//! - any cycle between files, with every import on the cycle.
//!
//! Why our own reader and not a crate (`syn`): what is checked is a handful
//! of path shapes, and a lexer for comments and strings is 60 lines; `syn`
//! would add a parser build to every test run to find the same paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors, lowest first. A file may import from its own floor (if no
/// cycle results) and from any floor below it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "formats",
        &[
            "ids",
            "clock",
            "wire",
            "token",
            "hlog",
            "http",
            "host",
            "prom",
            "environment",
        ],
    ),
    ("data", &["stats", "ledger", "ring", "conn"]),
    (
        "contracts",
        &["seconds", "mesh", "packets", "durable", "cluster"],
    ),
    ("logic", &["session", "generator", "audit"]),
    ("programs", &["server", "flood", "monitor"]),
    ("demo", &["demo"]),
];

/// The floor whose modules may not import one another.
const PROGRAMS: &str = "programs";

#[derive(Clone, Debug)]
struct Import {
    from: PathBuf,
    line: usize,
    path: String,
    to: PathBuf,
}

#[test]
fn imports_run_one_way_and_programs_never_meet() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (problems, _) = check(&src);
    assert!(
        problems.is_empty(),
        "the layering of src/ is broken (see tests/layers.rs and docs/ARCHITECTURE.md):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_reader_finds_the_imports_it_must() {
    // A fixture tree with one of each shape the reader must resolve, and
    // every forbidden kind of import: so that a reader that finds nothing
    // cannot pass the test above.
    let dir = std::env::temp_dir().join(format!("hongbao-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files: &[(&str, &str)] = &[
        (
            "lib.rs",
            "pub mod ids; pub mod stats; pub mod server; pub mod flood; pub mod extra;",
        ),
        (
            "ids.rs",
            "//! ids\n/// see crate::server\npub struct UserId;\nconst S: &str = \"crate::server::x\";\n",
        ),
        (
            "stats.rs",
            "use crate::ids::{UserId as U};\nfn f() { crate::server::go(); }\n",
        ),
        (
            "server/mod.rs",
            "mod worker;\npub use worker::Peers;\npub fn go() {}\n#[cfg(test)]\nmod tests { use crate::flood::x; }\n",
        ),
        ("server/worker.rs", "use super::go;\npub struct Peers;\n"),
        (
            "flood/mod.rs",
            "use crate::{ids::UserId, server::{worker::Peers}};\n",
        ),
        ("extra.rs", "use crate::ids::UserId;\n"),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let (problems, imports) = check(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let all = problems.join("\n");
    assert!(
        all.contains("stats.rs:2") && all.contains("runs upward"),
        "{all}"
    );
    assert!(
        all.contains("extra.rs:1") && all.contains("is on no floor"),
        "{all}"
    );
    assert!(
        all.contains("flood/mod.rs:1") && all.contains("crosses between programs"),
        "{all}"
    );
    assert!(
        all.contains("cycle") && all.contains("server/worker.rs:1"),
        "{all}"
    );
    // Comments, strings and test modules are not imports.
    assert!(
        !imports
            .iter()
            .any(|i| i.from.ends_with("ids.rs") || i.path.contains("flood::x")),
        "{imports:#?}"
    );
    // A renamed import names what it renames.
    assert!(
        imports
            .iter()
            .any(|i| i.from.ends_with("stats.rs") && i.path == "ids::UserId"),
        "{imports:#?}"
    );
    // The brace group resolves each leaf to its own file.
    assert!(
        imports
            .iter()
            .any(|i| i.from.ends_with("flood/mod.rs") && i.to.ends_with("server/worker.rs")),
        "{imports:#?}"
    );
}

/// Every problem of the tree at `src`, and the imports it read.
fn check(src: &Path) -> (Vec<String>, Vec<Import>) {
    let files = rust_files(src);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter_map(|f| module_path(src, f).map(|m| (m, f.clone())))
        .collect();
    let mut problems = Vec::new();
    let mut imports = Vec::new();
    for (module, file) in &modules {
        let Ok(text) = std::fs::read_to_string(file) else {
            problems.push(format!("{}: cannot be read", file.display()));
            continue;
        };
        let code = without_tests(&blank_comments_and_strings(&text));
        for (line, path) in paths(&code, module, is_mod_file(file)) {
            if let Some(to) = resolve(&modules, &path) {
                if to != *file {
                    imports.push(Import {
                        from: file.clone(),
                        line,
                        path: path.join("::"),
                        to,
                    });
                }
            }
        }
    }
    for (module, file) in &modules {
        if let Some(top) = module.first() {
            if layer_of(top).is_none() {
                problems.push(format!(
                    "{}:1: module `{top}` is on no floor: add it to LAYERS in tests/layers.rs and to the layering in docs/ARCHITECTURE.md",
                    rel(src, file)
                ));
            }
        }
    }
    for i in &imports {
        let (Some(a), Some(b)) = (top_of(src, &i.from), top_of(src, &i.to)) else {
            continue;
        };
        if a == b {
            continue;
        }
        let (Some((la, na)), Some((lb, nb))) = (layer_of(&a), layer_of(&b)) else {
            continue;
        };
        if lb > la {
            problems.push(format!(
                "{}:{}: `{}` runs upward: `{a}` ({na}) imports `{b}` ({nb})",
                rel(src, &i.from),
                i.line,
                i.path
            ));
        } else if la == lb && na == PROGRAMS {
            problems.push(format!(
                "{}:{}: `{}` crosses between programs: `{a}` imports `{b}`; they meet only in what lies below them (the published schema in `seconds`, the data types)",
                rel(src, &i.from),
                i.line,
                i.path
            ));
        }
    }
    for cycle in cycles(&imports) {
        let steps: Vec<String> = cycle
            .iter()
            .map(|i| {
                format!(
                    "  {}:{}: `{}` -> {}",
                    rel(src, &i.from),
                    i.line,
                    i.path,
                    rel(src, &i.to)
                )
            })
            .collect();
        problems.push(format!("an import cycle:\n{}", steps.join("\n")));
    }
    (problems, imports)
}

fn rel(src: &Path, f: &Path) -> String {
    f.strip_prefix(src.parent().unwrap_or(src))
        .unwrap_or(f)
        .display()
        .to_string()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `src/server/worker.rs` is `["server", "worker"]`, `src/server/mod.rs`
/// `["server"]`, `src/lib.rs` `[]`; `main.rs` (the binary, on top of
/// everything, reaching the library as `hongbao::`) is not a module here.
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        "main.rs" if parts.is_empty() => None,
        "lib.rs" if parts.is_empty() => Some(parts),
        "mod.rs" => Some(parts),
        _ => {
            parts.push(last.trim_end_matches(".rs").to_string());
            Some(parts)
        }
    }
}

fn is_mod_file(f: &Path) -> bool {
    f.file_name()
        .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
}

fn top_of(src: &Path, f: &Path) -> Option<String> {
    module_path(src, f)?.first().cloned()
}

/// The floor's index and name of a top-level module.
fn layer_of(top: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, mods))| mods.contains(&top))
        .map(|(i, (name, _))| (i, *name))
}

/// The file that defines `path`: the longest prefix of it that is a module.
fn resolve(modules: &BTreeMap<Vec<String>, PathBuf>, path: &[String]) -> Option<PathBuf> {
    (1..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n]).cloned())
}

/// The text with comments and the insides of string and char literals
/// replaced by spaces, line breaks kept (so line numbers hold).
fn blank_comments_and_strings(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push_str(&" ".repeat(j + 1 - i));
            i = j + 1;
            while i < b.len() {
                if b[i] == '"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&'#')) {
                    out.push_str(&" ".repeat(1 + hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push_str(&" ".repeat(e + 1 - i));
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// The code with every `#[cfg(test)]` item (a test module, a test-only
/// function) blanked out, line breaks kept.
fn without_tests(code: &str) -> String {
    let mut out: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + marker.len() <= out.len() {
        if out[i..i + marker.len()] != marker[..] {
            i += 1;
            continue;
        }
        // The item runs to its matching close brace, or to a `;`.
        let mut j = i + marker.len();
        let mut depth = 0usize;
        while j < out.len() {
            match out[j] {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let stop = (j + 1).min(out.len());
        for c in &mut out[i..stop] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = j + 1;
    }
    out.into_iter().collect()
}

/// Every module path `code` (in module `module`) names, absolute, with its
/// line: `use` trees expanded, expression paths, and in a `mod.rs` the
/// paths through its declared children.
fn paths(code: &str, module: &[String], is_mod: bool) -> Vec<(usize, Vec<String>)> {
    let children: BTreeSet<String> = if is_mod {
        code.lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l.strip_prefix("pub ").unwrap_or(l);
                let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
                l.strip_prefix("mod ")
                    .and_then(|r| r.strip_suffix(';'))
                    .map(|n| n.trim().to_string())
            })
            .collect()
    } else {
        BTreeSet::new()
    };
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (pos, c) = chars[k];
        if !(c.is_alphabetic() || c == '_') || (k > 0 && is_ident(chars[k - 1].1)) {
            k += 1;
            continue;
        }
        // A path starts here: read `a::b::{...}` with its braces.
        let start = pos;
        let mut end = k;
        let mut depth = 0usize;
        while end < chars.len() {
            let ch = chars[end].1;
            if is_ident(ch) || ch == ':' || (depth > 0 && (ch == ',' || ch.is_whitespace())) {
                end += 1;
            } else if ch == '{' && end > 0 && chars[end - 1].1 == ':' {
                depth += 1;
                end += 1;
            } else if ch == '}' && depth > 0 {
                depth -= 1;
                end += 1;
            } else if ch == '*' && end > 0 && chars[end - 1].1 == ':' {
                end += 1;
            } else {
                break;
            }
        }
        let stop = chars.get(end).map_or(code.len(), |&(p, _)| p);
        let text = &code[start..stop];
        let head = text.split("::").next().unwrap_or("");
        let anchored = matches!(head, "crate" | "super" | "self") || children.contains(head);
        if anchored && text.contains("::") {
            for leaf in expand(text) {
                if let Some(abs) = absolute(&leaf, module, &children) {
                    out.push((line_of(start), abs));
                }
            }
        }
        k = end.max(k + 1);
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    // `b as c` names `b`: the rename goes, then the spaces.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut kept = Vec::with_capacity(words.len());
    let mut k = 0;
    while k < words.len() {
        if words[k] == "as" {
            k += 2;
            if let Some(rest) = words
                .get(k - 1)
                .and_then(|w| w.find([',', '}']).map(|i| &w[i..]))
            {
                kept.push(rest);
            }
            continue;
        }
        kept.push(words[k]);
        k += 1;
    }
    let tree: String = kept.concat();
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::").to_string()];
    };
    let prefix = &tree[..open];
    let inner = tree[open + 1..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 1..]);
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in inner.chars() {
        match ch {
            '{' => {
                depth += 1;
                cur.push(ch);
            }
            '}' => {
                depth -= 1;
                cur.push(ch);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            let p = if p == "self" {
                String::new()
            } else {
                p.strip_prefix("self::").unwrap_or(&p).to_string()
            };
            expand(&format!("{prefix}{p}"))
        })
        .collect()
}

/// A path as written in module `module` as the absolute module path it
/// names; None for one that does not start in this crate.
fn absolute(path: &str, module: &[String], children: &BTreeSet<String>) -> Option<Vec<String>> {
    let segs: Vec<&str> = path
        .split("::")
        .filter(|s| !s.is_empty() && *s != "*")
        .collect();
    let mut abs: Vec<String>;
    let mut rest = &segs[..];
    match segs.first().copied() {
        Some("crate") => {
            abs = Vec::new();
            rest = &segs[1..];
        }
        Some("self") => {
            abs = module.to_vec();
            rest = &segs[1..];
        }
        Some("super") => {
            abs = module.to_vec();
            while rest.first() == Some(&"super") {
                abs.pop()?;
                rest = &rest[1..];
            }
        }
        Some(head) if children.contains(head) => abs = module.to_vec(),
        _ => return None,
    }
    abs.extend(rest.iter().map(|s| s.to_string()));
    Some(abs)
}

/// The import cycles between files: for each strongly connected set of
/// more than one file, one cycle through it, as its imports.
fn cycles(imports: &[Import]) -> Vec<Vec<Import>> {
    let mut edges: BTreeMap<&Path, Vec<&Import>> = BTreeMap::new();
    for i in imports {
        edges.entry(i.from.as_path()).or_default().push(i);
    }
    let mut found = Vec::new();
    let mut in_cycle: BTreeSet<PathBuf> = BTreeSet::new();
    let nodes: BTreeSet<&Path> = imports.iter().map(|i| i.from.as_path()).collect();
    for start in nodes {
        if in_cycle.contains(start) {
            continue;
        }
        // Breadth-first from `start` back to itself: the shortest cycle.
        let mut came: BTreeMap<&Path, &Import> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        'search: while let Some(n) = queue.pop_front() {
            for e in edges.get(n).into_iter().flatten() {
                if e.to == start {
                    closing = Some(*e);
                    break 'search;
                }
                if !came.contains_key(e.to.as_path()) {
                    came.insert(e.to.as_path(), e);
                    queue.push_back(e.to.as_path());
                }
            }
        }
        let Some(last) = closing else {
            continue;
        };
        let mut cycle = vec![last.clone()];
        let mut at = last.from.as_path();
        while at != start {
            let e = came[at];
            cycle.push(e.clone());
            at = e.from.as_path();
        }
        cycle.reverse();
        for i in &cycle {
            in_cycle.insert(i.from.clone());
        }
        found.push(cycle);
    }
    found
}
