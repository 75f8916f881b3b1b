//! `Reader`: a little-endian cursor over a byte stream whose total length is known up front.
//!
//! It owns the position and the bounds: no read goes past the stated length (the read fails
//! with `Truncated` and the stream is left where it was), and no length or count is accepted
//! unless the bytes left can hold it, so nothing is allocated for a length the file cannot
//! back. Errors it makes carry the file name and the offset where the item starts; callers add
//! what was being read.

use std::io::{self, Read};

use crate::error::{ErrorKind, GgufError};

pub(crate) struct Reader<'s, R> {
    inner: R,
    pos: u64,
    len: u64,
    source: &'s str,
}

impl<'s, R: Read> Reader<'s, R> {
    /// A reader at byte 0 of a stream of `len` bytes named `source` in errors.
    pub(crate) fn new(inner: R, len: u64, source: &'s str) -> Self {
        Reader {
            inner,
            pos: 0,
            len,
            source,
        }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    pub(crate) fn source(&self) -> &'s str {
        self.source
    }

    /// An error of this file at `offset`.
    pub(crate) fn error(&self, offset: u64, kind: ErrorKind) -> GgufError {
        GgufError::new(self.source, kind).at(offset)
    }

    /// Fills `buf` with the next bytes, or fails without consuming anything the caller sees.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        let needed = buf.len() as u64;
        if needed > self.remaining() {
            let available = self.remaining();
            return Err(self.error(self.pos, ErrorKind::Truncated { needed, available }));
        }
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += needed;
                Ok(())
            }
            Err(e) => {
                let e = if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(e.kind(), "the file is shorter than its size said")
                } else {
                    e
                };
                Err(self.error(self.pos, ErrorKind::Io(e)))
            }
        }
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    /// Up to `n` bytes, fewer when the stream ends first; never fails on a short stream.
    pub(crate) fn up_to(&mut self, n: u64) -> Result<Vec<u8>, GgufError> {
        let take = n.min(self.remaining()) as usize;
        let mut buf = vec![0u8; take];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.bytes::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A u64 count of items of at least `item_bytes` bytes each, refused when the bytes left
    /// cannot hold that many.
    pub(crate) fn count(&mut self, what: &'static str, item_bytes: u64) -> Result<u64, GgufError> {
        let at = self.pos;
        let count = self.u64()?;
        let remaining = self.remaining();
        if count
            .checked_mul(item_bytes)
            .is_none_or(|total| total > remaining)
        {
            let file_len = self.len;
            let kind = ErrorKind::TooLong {
                what,
                count,
                item_bytes,
                remaining,
                file_len,
            };
            return Err(self.error(at, kind));
        }
        Ok(count)
    }

    /// A string: u64 byte length, then that many bytes of UTF-8.
    pub(crate) fn string(&mut self) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.count("string length", 1)?;
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf)?;
        String::from_utf8(buf).map_err(|e| {
            let valid_up_to = e.utf8_error().valid_up_to();
            self.error(at, ErrorKind::InvalidUtf8 { valid_up_to })
        })
    }
}
