//! Every source and test file of the crate opens with a `//!` module doc.

use std::path::Path;

#[test]
fn every_file_opens_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "src/dequant", "tests/gguf"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with("//! "),
                    "{} lacks a `//!` module doc",
                    path.display()
                );
            }
        }
    }
}
