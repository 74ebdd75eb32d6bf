//! HRESULTs of the DO download model, with Windows' numbers.

/// Not implemented.
pub const E_NOTIMPL: u32 = 0x8000_4001;
/// Unspecified failure (the node stopped).
pub const E_FAIL: u32 = 0x8000_4005;
/// A missing, unknown or malformed argument.
pub const E_INVALIDARG: u32 = 0x8007_0057;
/// No such download (the Linux agent's and SDK's `not_found`).
pub const E_NOT_SET: u32 = 0x8007_0490;
/// The URI is not an http(s) URL with a host.
pub const INET_E_INVALID_URL: u32 = 0x800C_0002;
/// Enumeration found nothing.
pub const DO_E_NO_DOWNLOADS: u32 = 0x80D0_2005;
/// No such property id.
pub const DO_E_UNKNOWN_PROPERTY_ID: u32 = 0x80D0_2011;
/// Set on a read-only property.
pub const DO_E_READ_ONLY_PROPERTY: u32 = 0x80D0_2012;
/// Not allowed in the current state.
pub const DO_E_INVALID_STATE: u32 = 0x80D0_2013;
/// Get on a write-only property.
pub const DO_E_WRITE_ONLY_PROPERTY: u32 = 0x80D0_2015;
/// A mandatory integrity check without the information to perform it.
pub const DO_E_INTEGRITYCHECKINFO_UNSPECIFIED: u32 = 0x80D0_2016;
/// No output (neither a local path nor a stream).
pub const DO_E_FILE_DOWNLOADSINK_UNSPECIFIED: u32 = 0x80D0_2018;
/// Start without a URI.
pub const DO_E_DOWNLOAD_NO_URI: u32 = 0x80D0_2200;
/// The content id is not 64 hex digits.
pub const DO_E_INVALID_CONTENT_ID: u32 = 0x80D0_2202;
/// A byte range is invalid.
pub const DO_E_INVALID_RANGE: u32 = 0x80D0_5010;
/// Byte ranges overlap.
pub const DO_E_OVERLAPPING_RANGES: u32 = 0x80D0_5012;

/// Local file errors, as the Linux agent reports them: `0xC0D00000 | errno`.
pub const fn from_errno(errno: i32) -> u32 {
    0xC0D0_0000 | (errno as u32 & 0xFFFF)
}
