//! Content identity, block manifests and verification for donode.
//!
//! This crate owns what a file *is*: its [`ContentId`] (the BLAKE3 hash of the whole file,
//! exactly what `b3sum` prints), the split of a file into [`BLOCK_SIZE`] blocks, and the
//! [`Manifest`]: the BLAKE3 chaining value of every block. Because every block is a complete
//! subtree of the file's BLAKE3 tree, the manifest merges back to the root; a manifest whose
//! root equals the `ContentId` authenticates every block hash in it, and any block can then be
//! verified on its own (at most 64 KiB per check).
//!
//! It is pure and synchronous: no I/O beyond the helpers that hash a file on disk, no clock,
//! no async. It deliberately does not decide what to fetch or where bytes are stored: that is
//! the engine's and the store's job.
//!
//! ```
//! use do_content::{ContentId, Manifest};
//! let data = vec![7u8; 200_000];
//! let manifest = Manifest::from_bytes(&data);
//! assert_eq!(manifest.root(), ContentId::from(blake3::hash(&data)));
//! assert!(manifest.verify_block(1.into(), &data[65536..131072]).is_ok());
//! ```
#![warn(missing_docs)]

mod bits;
mod manifest;
mod range;

pub use bits::BlockBits;
pub use manifest::{BlockHash, BlockHasher, Manifest, ManifestError, hash_block};
pub use range::{BlockIndex, ByteRange, RangeSet};

use std::{fmt, str::FromStr};

/// Size of a verification block: 64 KiB (64 BLAKE3 chunks, a complete subtree).
pub const BLOCK_SIZE: u64 = 64 * 1024;

/// The identity of a file: the BLAKE3 hash of its bytes.
///
/// Displays and parses as 64 lowercase hex digits, as `b3sum` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; 32]);

impl ContentId {
    /// Builds a `ContentId` from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hashes a byte slice (the whole file) into its `ContentId`.
    pub fn of(data: &[u8]) -> Self {
        Self::from(blake3::hash(data))
    }
}

impl From<blake3::Hash> for ContentId {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl FromStr for ContentId {
    type Err = ParseContentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(ParseContentIdError::Length(s.len()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseContentIdError::NotHex)?;
        Ok(Self(bytes))
    }
}

/// Why a string is not a `ContentId`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseContentIdError {
    /// The string is not 64 characters long.
    #[error("a content id is 64 hex digits, got {0} characters")]
    Length(usize),
    /// The string holds a character that is not a hex digit.
    #[error("a content id is 64 hex digits, got a non-hex character")]
    NotHex,
}

/// Number of blocks of a file of `len` bytes (an empty file has one empty block).
pub const fn block_count(len: u64) -> u64 {
    if len == 0 {
        1
    } else {
        len.div_ceil(BLOCK_SIZE)
    }
}

/// The byte range that block `index` covers in a file of `len` bytes.
pub fn block_range(len: u64, index: BlockIndex) -> ByteRange {
    let start = index.0.saturating_mul(BLOCK_SIZE).min(len);
    ByteRange::new(start, (start + BLOCK_SIZE).min(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_round_trips_through_hex() {
        let id = ContentId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(text.parse::<ContentId>().unwrap(), id);
        assert_eq!(
            "abc".parse::<ContentId>(),
            Err(ParseContentIdError::Length(3))
        );
        assert_eq!(
            "z".repeat(64).parse::<ContentId>(),
            Err(ParseContentIdError::NotHex)
        );
    }

    #[test]
    fn block_geometry() {
        assert_eq!(block_count(0), 1);
        assert_eq!(block_count(1), 1);
        assert_eq!(block_count(BLOCK_SIZE), 1);
        assert_eq!(block_count(BLOCK_SIZE + 1), 2);
        assert_eq!(
            block_range(BLOCK_SIZE + 10, BlockIndex(1)),
            ByteRange::new(BLOCK_SIZE, BLOCK_SIZE + 10)
        );
    }
}
