//! Where the tests find SmolLM2-135M-Instruct.Q4_1.gguf: `$KILN_SMOLLM2_GGUF`, else
//! `<workspace>/target/models/`, where `scripts/fetch_smollm2.sh` puts it.

use std::path::PathBuf;

use kiln_gguf::GgufFile;

const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model's GGUF header, or `None` (saying the test `name` is skipped) when the file is
/// absent. A `$KILN_SMOLLM2_GGUF` naming a missing file is a failure, not a skip.
pub fn gguf(name: &str) -> Option<GgufFile> {
    let path = match std::env::var_os("KILN_SMOLLM2_GGUF") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "KILN_SMOLLM2_GGUF={} is not a file",
                path.display()
            );
            path
        }
        None => {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let path = workspace.join("target/models").join(NAME);
            if !path.is_file() {
                println!(
                    "skipped {name}: {NAME} is absent (scripts/fetch_smollm2.sh fetches it, or set \
                     KILN_SMOLLM2_GGUF)"
                );
                return None;
            }
            path
        }
    };
    Some(kiln_gguf::read_path(&path).unwrap())
}
