//! The REST API's request parser: any bytes give a request or an error, never a panic, and a
//! parsed request's segments and query are what the parser promises.
#![no_main]

use do_agent::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(len) = wire::head_len(data)
        && let Ok(request) = wire::parse_head(&data[..len])
    {
        assert!(request.segments.iter().all(|s| !s.is_empty() && *s == s.to_ascii_lowercase()));
        assert!(len <= wire::MAX_HEAD);
    }
    let _ = wire::parse_head(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wire::parse_query(text);
    }
});
