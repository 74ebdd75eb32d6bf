//! The block exchange protocol's messages come from peers: decoding any bytes never panics,
//! and what decodes survives a round trip (bincode accepts non-canonical integer encodings,
//! so the bytes themselves may differ); a response frame decodes in place exactly as it decodes
//! generically.
#![no_main]

use do_p2p::wire::{Request, Response, decode, decode_response, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode::<Request>(data) {
        assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
    }
    let generic = decode::<Response>(data);
    if let Ok(r) = &generic {
        assert_eq!(&decode::<Response>(&encode(r).unwrap()).unwrap(), r);
    }
    let in_place = decode_response(data.to_vec());
    match (&generic, &in_place) {
        // The generic decoder has no bound on rank keys; the codec does.
        (Ok(Response::CoFetchers(_)), Err(_)) => {}
        _ => assert_eq!(generic.ok(), in_place.ok()),
    }
});
