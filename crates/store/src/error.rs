//! Store errors.

use std::{io, path::PathBuf};

use crate::EntryId;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The disk (or the user's quota) is full.
    #[error("{}: no space left on device", path.display())]
    DiskFull {
        /// The file that could not be written.
        path: PathBuf,
    },
    /// The output file exists and overwriting was not asked for.
    #[error("{}: file exists (use --force to replace it)", .0.display())]
    AlreadyExists(PathBuf),
    /// The index database failed.
    #[error("cache index: {0}")]
    Index(#[from] redb::Error),
    /// The index holds a record that cannot be decoded.
    #[error("cache index holds a malformed record: {0}")]
    CorruptIndex(&'static str),
    /// No entry with this id exists.
    #[error("no cache entry {}", .0.0)]
    NoSuchEntry(EntryId),
}

impl Error {
    /// Classifies an I/O error on `path`.
    pub fn io(path: &std::path::Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Self::DiskFull { path },
            Some(libc::EEXIST) => Self::AlreadyExists(path),
            _ => Self::Io { path, source },
        }
    }

    /// The DO HRESULT for this error. Local file errors use the Linux DO agent's convention,
    /// `0xC0D00000 | errno`; index failures are `DO_E_FATAL_CORE_ERROR`.
    pub fn hresult(&self) -> u32 {
        const LOCAL: u32 = 0xC0D0_0000;
        match self {
            Self::Io { source, .. } => {
                LOCAL | (source.raw_os_error().unwrap_or(libc::EIO) as u32 & 0xFFFF)
            }
            Self::DiskFull { .. } => LOCAL | libc::ENOSPC as u32,
            Self::AlreadyExists(_) => LOCAL | libc::EEXIST as u32,
            Self::Index(_) | Self::CorruptIndex(_) | Self::NoSuchEntry(_) => 0x80D0_6802,
        }
    }
}
