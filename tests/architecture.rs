//! The design's invariants that the compiler cannot see: the dependency direction between crates
//! (`kiln-ir` depends on no other kiln crate; `kiln-runtime` on no compiler crate; the embedded
//! example application on `kiln-runtime` alone, the compiler being only its build-dependency)
//! and a module doc at the top of every Rust file.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crates a manifest's `[dependencies]` tables name: `[dependencies]`, its
/// `[target.'cfg(..)'.dependencies]` variants, and `[dependencies.NAME]` tables.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('[') {
            let table = table.trim_end_matches(']');
            let for_target = table.starts_with("target.") && table.ends_with(".dependencies");
            in_deps = table == "dependencies" || for_target;
            if let Some(name) = table.strip_prefix("dependencies.") {
                deps.push(name.to_string());
            }
        } else if in_deps && !line.is_empty() && !line.starts_with('#') {
            deps.push(line.split(['.', ' ', '=']).next().unwrap().to_string());
        }
    }
    deps
}

/// The kiln crates a manifest's `[dependencies]` tables name.
fn kiln_dependencies(manifest: &Path) -> Vec<String> {
    dependencies(manifest)
        .into_iter()
        .filter(|dep| dep == "kiln" || dep.starts_with("kiln-"))
        .collect()
}

#[test]
fn ir_depends_on_no_other_kiln_crate() {
    assert_eq!(
        kiln_dependencies(&root().join("ir/Cargo.toml")),
        Vec::<String>::new()
    );
}

#[test]
fn runtime_links_no_compiler_crate() {
    let compiler = [
        "kiln-ir",
        "kiln-frontend",
        "kiln-passes",
        "kiln-backend-cpu",
        "kiln-backend-cuda",
    ];
    for dep in kiln_dependencies(&root().join("runtime/Cargo.toml")) {
        assert!(
            !compiler.contains(&dep.as_str()),
            "kiln-runtime depends on compiler crate {dep}"
        );
    }
}

#[test]
fn embedded_example_links_only_the_runtime() {
    // The compiler (`kiln` and its crates) may be a build-dependency, never a dependency.
    assert_eq!(
        dependencies(&root().join("examples/embedded/Cargo.toml")),
        ["kiln-runtime"]
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() && name != "target" && !name.starts_with('.') && name != "fixtures" {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    assert!(files.len() > 30, "found only {} files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a `//!` module doc",
            file.display()
        );
    }
}
