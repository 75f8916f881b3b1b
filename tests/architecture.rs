//! The design's invariants that the compiler cannot see: the dependency direction between crates
//! (`kiln-ir` depends on no other kiln crate; `kiln-runtime` on no compiler crate) and a module
//! doc at the top of every Rust file.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kiln crates a manifest's `[dependencies]` table names.
fn kiln_dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && line.starts_with("kiln-") {
            deps.push(line.split(['.', ' ', '=']).next().unwrap().to_string());
        }
    }
    deps
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
