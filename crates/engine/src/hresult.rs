//! The DO error codes (HRESULTs) the engine reports, with the numbers Windows uses.

/// The download made no progress within its no-progress timeout.
pub const DO_E_DOWNLOAD_NO_PROGRESS: u32 = 0x80D0_2002;
/// The action is not allowed in the download's current state.
pub const DO_E_INVALID_STATE: u32 = 0x80D0_2013;
/// A byte range is invalid (empty, or past the end of the file).
pub const DO_E_INVALID_RANGE: u32 = 0x80D0_5010;
/// Two requested byte ranges overlap.
pub const DO_E_OVERLAPPING_RANGES: u32 = 0x80D0_5012;
/// The bytes do not hash to the content id the caller gave (no source is banned: the origin
/// sent them).
pub const DO_E_BAD_PIECE_HASH_NO_BAN: u32 = 0x80D0_6806;
/// The origin's file kept changing while it was being downloaded (HTTP 412, precondition
/// failed, the way If-Range reports it).
pub const HTTP_E_STATUS_PRECOND_FAILED: u32 = 0x8019_019C;
