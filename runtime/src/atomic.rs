//! Atomic file writes: a temporary file beside the target, written, synced, renamed over it.
//! A crash leaves either the old file or the new one, never a torn one.

use crate::error::{Result, RuntimeError};
use std::io::Write;
use std::path::Path;

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = path.display().to_string();
    let io = |e| RuntimeError::io(&file, e);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| RuntimeError::new(&file, None, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
