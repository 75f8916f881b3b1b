//! The `.kiln` artifact file: a versioned header, a content hash, the manifest, the object code
//! and the constants.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! "KILNART\0" | format version u32 | 0u32 | sha256 of everything after it (32 bytes)
//! | manifest length u64 | manifest JSON | object length u64 | ELF object | data length u64 | data
//! ```
//!
//! Reading checks the magic, then the version (an artifact of another format is refused by name,
//! before anything else of it is trusted), then the hash, then the manifest. A hash mismatch is
//! reported as truncation when the file ends before the sections its headers declare.

use crate::error::{Result, RuntimeError};
use crate::manifest::{Manifest, FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::path::Path;

const MAGIC: &[u8; 8] = b"KILNART\0";
const HEADER_LEN: usize = 8 + 4 + 4 + 32;

#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub manifest: Manifest,
    /// A relocatable ELF object holding every kernel, or for a CUDA target the PTX module's text.
    pub object: Vec<u8>,
    /// Bytes of the manifest's constants.
    pub data: Vec<u8>,
}

/// The body length the section headers ask for, read as far as `body` goes (to tell a truncated
/// file from a modified one once the hash has failed).
fn declared_len(body: &[u8]) -> usize {
    let mut at = 0usize;
    for _ in 0..3 {
        let Some(field) = body.get(at..at.saturating_add(8)) else {
            return at.saturating_add(8);
        };
        let len = u64::from_le_bytes(field.try_into().unwrap());
        at = at.saturating_add(8).saturating_add(len as usize);
    }
    at
}

impl Artifact {
    /// The bytes of every constant the manifest describes, in order; `file` names the artifact
    /// in the error for one that lies outside the data section.
    pub fn constant_bytes(&self, file: &str) -> Result<Vec<&[u8]>> {
        let data = &self.data;
        self.manifest
            .constants
            .iter()
            .enumerate()
            .map(|(i, c)| {
                data.get(c.offset..c.offset + c.len).ok_or_else(|| {
                    RuntimeError::new(
                        file,
                        Some("constants"),
                        format!("constant {i} lies outside the data section"),
                    )
                })
            })
            .collect()
    }

    /// The artifact as bytes, ready to write or embed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = serde_json::to_vec(&self.manifest).expect("manifest serializes");
        let mut body = Vec::new();
        for section in [&manifest, &self.object, &self.data] {
            body.extend_from_slice(&(section.len() as u64).to_le_bytes());
            body.extend_from_slice(section);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Parses artifact bytes; `file` names the source in errors.
    pub fn from_bytes(bytes: &[u8], file: &str) -> Result<Artifact> {
        let err = |msg: String| RuntimeError::new(file, None, msg);
        if bytes.get(..8) != Some(&MAGIC[..]) {
            return Err(err(
                "not a kiln artifact (missing the KILNART header)".into()
            ));
        }
        if bytes.len() < HEADER_LEN {
            return Err(err(format!(
                "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(err(format!(
                "artifact format version {version}, but this runtime reads version \
                 {FORMAT_VERSION}; recompile the model with this kiln"
            )));
        }
        let body = &bytes[HEADER_LEN..];
        if Sha256::digest(body).as_slice() != &bytes[16..48] {
            let need = HEADER_LEN.saturating_add(declared_len(body));
            let reason = if need > bytes.len() {
                format!(
                    "the artifact is truncated ({} bytes, its sections need at least {need})",
                    bytes.len()
                )
            } else {
                "the artifact is corrupt or was modified".into()
            };
            return Err(err(format!("content hash does not match: {reason}")));
        }
        let mut sections = Vec::new();
        let mut rest = body;
        for name in ["manifest", "object", "data"] {
            let truncated = || err(format!("truncated {name} section"));
            let len_bytes = rest.get(..8).ok_or_else(truncated)?;
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let section = rest
                .get(8..8usize.saturating_add(len))
                .ok_or_else(truncated)?;
            sections.push(section);
            rest = &rest[8 + len..];
        }
        let manifest: Manifest = serde_json::from_slice(sections[0])
            .map_err(|e| RuntimeError::new(file, Some("manifest"), e.to_string()))?;
        Ok(Artifact {
            manifest,
            object: sections[1].to_vec(),
            data: sections[2].to_vec(),
        })
    }

    pub fn read(path: &Path) -> Result<Artifact> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(&file, e))?;
        Artifact::from_bytes(&bytes, &file)
    }

    /// Writes atomically: a temporary file in the same directory, synced, then renamed.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::atomic::write_file(path, &self.to_bytes())
    }

    /// The hex SHA-256 of the artifact's content (what the header carries).
    pub fn content_hash(bytes: &[u8]) -> String {
        bytes
            .get(16..48)
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
