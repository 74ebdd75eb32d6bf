//! Block manifests arrive from outside (peers, the cache): decoding any bytes never panics, and
//! what decodes re-encodes to the same bytes.
#![no_main]

use do_content::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data);
        let _ = m.root();
    }
});
