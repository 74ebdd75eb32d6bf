//! Cache entries: one version of one remote file.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Identifier of a cache entry. Never reused within one cache directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u64);

/// What the index knows of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The URL the entry was fetched from.
    pub url: String,
    /// The file's length in bytes.
    pub len: u64,
    /// The origin's ETag for this version, if it gave one.
    pub etag: Option<String>,
    /// The origin's Last-Modified for this version, if it gave one.
    pub last_modified: Option<String>,
    /// The content id (hex), once known.
    pub content_id: Option<String>,
    /// True once every block is verified and the root is known.
    pub complete: bool,
    /// When the entry was created (seconds since the Unix epoch).
    pub created_unix: u64,
    /// When the entry was last used (seconds since the Unix epoch).
    pub accessed_unix: u64,
}

impl EntryMeta {
    /// A new, empty entry for `url` with the origin's length and validators.
    pub fn new(url: &str, len: u64, etag: Option<String>, last_modified: Option<String>) -> Self {
        Self {
            url: url.to_owned(),
            len,
            etag,
            last_modified,
            ..Self::default()
        }
    }

    /// True when this entry is the same version of the same file as described by the origin.
    /// Without any validator, a matching length alone is not trusted.
    pub fn same_version(&self, len: u64, etag: Option<&str>, last_modified: Option<&str>) -> bool {
        let has_validator = etag.is_some() || last_modified.is_some();
        has_validator
            && self.len == len
            && self.etag.as_deref() == etag
            && self.last_modified.as_deref() == last_modified
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entry metadata always serialises")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|_| Error::CorruptIndex("entry metadata"))
    }
}
