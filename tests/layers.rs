//! The layering of `src/` stays one-way: every module imports only modules of its own layer or below, as the table in docs/ARCHITECTURE.md says, and no two modules import each other, however indirectly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer table: top-level module to layer number, read from the rows
/// of docs/ARCHITECTURE.md between the `layers:begin` and `layers:end`
/// markers (`| 2 broker | `broker` | ... |`).
fn layer_table(root: &Path) -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let start = text.find("<!-- layers:begin -->").expect("a layers:begin marker");
    let end = text.find("<!-- layers:end -->").expect("a layers:end marker");
    let mut table = BTreeMap::new();
    for row in text[start..end].lines().filter(|line| line.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|cell| cell.split(' ').next()?.parse().ok()) else {
            continue; // the header and its underline
        };
        for module in cells[2].split(',') {
            let module = module.trim().trim_matches('`');
            assert!(!module.is_empty(), "an empty module name in {row:?}");
            assert!(table.insert(module.to_string(), layer).is_none(), "{module} listed twice");
        }
    }
    assert!(!table.is_empty(), "no layer rows between the markers");
    table
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs")
            && path.file_name().is_some_and(|name| name != "tests.rs")
        {
            // `tests.rs` files are `#[cfg(test)]` modules: tests may use anything.
            found.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/broker/redis/mod.rs` is
/// `broker`, `src/lib.rs` is `lib`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_str().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file's code names (`crate::x`, and `herald::x`
/// in the binary), before its `#[cfg(test)]` part: tests may use anything.
fn imports(text: &str, binary: bool) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = BTreeSet::new();
    let prefixes: &[&str] = if binary { &["crate::", "herald::"] } else { &["crate::"] };
    for line in code.lines().map(str::trim_start).filter(|line| !line.starts_with("//")) {
        for prefix in prefixes {
            for (at, _) in line.match_indices(prefix) {
                let before = line[..at].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // part of a longer path, e.g. `mycrate::`
                }
                let name: String = line[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                } else if line[at + prefix.len()..].starts_with('{') {
                    // `use crate::{a, b}` would hide its modules from this
                    // check: the module list is written one `use` each.
                    found.insert("{".to_string());
                }
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_its_layer_or_below_and_nothing_imports_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let layers = layer_table(root);
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let Some(&layer) = layers.get(&module) else {
            panic!("{} is in no layer: add `{module}` to the table", file.display());
        };
        let text = std::fs::read_to_string(file).unwrap();
        for import in imports(&text, module == "main") {
            assert_ne!(import, "{", "{}: write `use crate::module::..` per module", file.display());
            if import == module {
                continue;
            }
            let Some(&their_layer) = layers.get(&import) else {
                panic!("{} names crate::{import}, which is in no layer", file.display());
            };
            if their_layer > layer {
                upward.push(format!(
                    "{} (layer {layer}) imports {import} (layer {their_layer})",
                    file.strip_prefix(root).unwrap().display()
                ));
            }
            edges.entry(module.clone()).or_default().insert(import);
        }
    }
    assert!(upward.is_empty(), "imports that point up:\n{}", upward.join("\n"));
    // No cycle: a depth-first search that never meets a module on its own path.
    fn visit(
        module: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|m| m == module) {
            panic!(
                "modules import each other in a circle: {} -> {module}",
                path[at..].join(" -> ")
            );
        }
        if !done.insert(module.to_string()) {
            return;
        }
        path.push(module.to_string());
        for next in edges.get(module).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        visit(module, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_check_sees_imports_in_every_form() {
    let text = "use crate::a::b;\nuse crate::{c, d::e};\n  let x = crate::f::g();\n\
                // crate::comment\nlet y = mycrate::h;\n#[cfg(test)]\nuse crate::tests_only;";
    let found: Vec<String> = imports(text, false).into_iter().collect();
    assert_eq!(found, ["a", "f", "{"], "a brace group is reported as such");
    assert!(imports("use herald::server;", true).contains("server"));
    assert!(imports("use herald::server;", false).is_empty());
}

/// `unsafe` is denied crate-wide (Cargo.toml) and allowed in one file, the
/// io_uring's buffers and descriptors: no other file under `src/` may allow
/// it, and no other file may contain an `unsafe` block or impl.
#[test]
fn unsafe_code_lives_in_the_io_uring_module_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("unsafe_code = \"deny\""), "Cargo.toml must deny unsafe_code");
    let allowed = root.join("src/shard/uring.rs");
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.contains(&allowed), "src/shard/uring.rs is missing");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let code: String = text
            .lines()
            .map(str::trim_start)
            .filter(|line| !line.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let uses_unsafe = code.contains("allow(unsafe_code)")
            || code.contains("unsafe {")
            || code.contains("unsafe impl")
            || code.contains("unsafe fn");
        assert!(
            !uses_unsafe || file == allowed,
            "{} uses unsafe: only src/shard/uring.rs may",
            file.display()
        );
    }
}
