//! HRESULT values reported for origin failures.
//!
//! Delivery Optimization reports every failure as a 32-bit HRESULT. HTTP status
//! failures use the `0x8019xxxx` family (`0x8019_0000 | status`), network failures
//! use `HRESULT_FROM_WIN32` of the matching WinHTTP error, and range and size
//! problems use the Delivery Optimization facility (`0x80D0xxxx`, values from DO's
//! public `do_errors.h`). [`crate::Error::hresult`] maps each error onto one of
//! these constants.

/// Base of the HTTP status family: an HTTP status `code` maps to
/// `HTTP_STATUS_BASE | code` (404 → `0x80190194`). See [`hresult_for_status`].
pub const HTTP_STATUS_BASE: u32 = 0x8019_0000;

/// `HRESULT_FROM_WIN32(ERROR_WINHTTP_TIMEOUT)` (12002): the request timed out
/// (connect timeout, or no bytes within the read timeout).
pub const WINHTTP_TIMEOUT: u32 = 0x8007_2EE2;

/// `HRESULT_FROM_WIN32(ERROR_WINHTTP_INVALID_URL)` (12005): the URL is malformed
/// or does not use `http`/`https`.
pub const WINHTTP_INVALID_URL: u32 = 0x8007_2EE5;

/// `HRESULT_FROM_WIN32(ERROR_WINHTTP_CANNOT_CONNECT)` (12029): name resolution or
/// the TCP/TLS connection to the server failed.
pub const WINHTTP_CANNOT_CONNECT: u32 = 0x8007_2EFD;

/// `HRESULT_FROM_WIN32(ERROR_WINHTTP_CONNECTION_ERROR)` (12030): the connection
/// was reset or failed after it was established.
pub const WINHTTP_CONNECTION_ERROR: u32 = 0x8007_2EFE;

/// `HRESULT_FROM_WIN32(ERROR_WINHTTP_REDIRECT_FAILED)` (12156): the redirect chain
/// was too long or a redirect was refused (HTTPS to HTTP).
pub const WINHTTP_REDIRECT_FAILED: u32 = 0x8007_2F7C;

/// `E_INVALIDARG`: a caller-supplied argument (custom header) is invalid.
pub const E_INVALIDARG: u32 = 0x8007_0057;

/// `E_FAIL`: unspecified failure (for example the HTTP client could not be built).
pub const E_FAIL: u32 = 0x8000_4005;

/// `E_CHANGED_STATE`: "a concurrent or interleaved operation changed the state of
/// the object, invalidating this operation". Delivery Optimization has no public
/// code for "the file changed on the origin"; donode reports this generic COM code
/// for [`crate::Error::ContentChanged`].
pub const E_CHANGED_STATE: u32 = 0x8000_000C;

/// `DO_E_HTTP_BLOCKSIZE_MISMATCH`: the HTTP server returned a response with a data
/// size not equal to what was requested (bad `Content-Range`, truncated body).
pub const DO_E_HTTP_BLOCKSIZE_MISMATCH: u32 = 0x80D0_5001;

/// `DO_E_INVALID_RANGE`: the requested byte range is invalid (empty or reversed).
pub const DO_E_INVALID_RANGE: u32 = 0x80D0_5010;

/// `DO_E_INSUFFICIENT_RANGE_SUPPORT`: the server does not honour `Range` requests.
pub const DO_E_INSUFFICIENT_RANGE_SUPPORT: u32 = 0x80D0_5011;

/// HRESULT for an HTTP status failure: `HTTP_STATUS_BASE | code`
/// (404 → `0x80190194`, 403 → `0x80190193`, 500 → `0x801901F4`).
#[must_use]
pub const fn hresult_for_status(code: u16) -> u32 {
    HTTP_STATUS_BASE | code as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        assert_eq!(hresult_for_status(404), 0x8019_0194);
        assert_eq!(hresult_for_status(403), 0x8019_0193);
        assert_eq!(hresult_for_status(500), 0x8019_01F4);
        assert_eq!(hresult_for_status(416), 0x8019_01A0);
    }

    #[test]
    fn win32_values() {
        // HRESULT_FROM_WIN32(x) = 0x80070000 | x
        assert_eq!(WINHTTP_TIMEOUT, 0x8007_0000 | 12002);
        assert_eq!(WINHTTP_INVALID_URL, 0x8007_0000 | 12005);
        assert_eq!(WINHTTP_CANNOT_CONNECT, 0x8007_0000 | 12029);
        assert_eq!(WINHTTP_CONNECTION_ERROR, 0x8007_0000 | 12030);
        assert_eq!(WINHTTP_REDIRECT_FAILED, 0x8007_0000 | 12156);
    }
}
