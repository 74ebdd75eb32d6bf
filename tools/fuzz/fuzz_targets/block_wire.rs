//! The block exchange protocol's messages come from peers: decoding any bytes never panics,
//! and what decodes survives a round trip (bincode accepts non-canonical integer encodings,
//! so the bytes themselves may differ).
#![no_main]

use do_p2p::wire::{Request, Response, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode::<Request>(data) {
        assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
    }
    if let Ok(r) = decode::<Response>(data) {
        assert_eq!(decode::<Response>(&encode(&r).unwrap()).unwrap(), r);
    }
});
