//! Data lane frames come from peers: any prefix, frame or message either opens and decodes or
//! fails cleanly, never panics; a message that decodes encodes back to the same bytes (the
//! lane's encodings are canonical); a frame sealed from the input opens back to it.
#![no_main]

use do_p2p::lane::{
    Cipher, Direction, HEADER_LEN, LaneAnswer, LaneRequest, Opener, SECRET_LEN, Sealer, TICKET_LEN,
    frame_len,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = LaneRequest::decode(data) {
        assert_eq!(&r.encode()[..], data);
    }
    if let Ok(a) = LaneAnswer::decode(data) {
        assert_eq!(&a.encode()[..], data);
    }
    let secret = [3u8; SECRET_LEN];
    let ticket = [5u8; TICKET_LEN];
    if data.len() >= HEADER_LEN {
        let header: [u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
        let _ = frame_len(header);
        for cipher in [Cipher::Aegis128L, Cipher::Aes256Gcm] {
            let mut body = data[HEADER_LEN..].to_vec();
            let mut opener = Opener::new(cipher, &secret, &ticket, Direction::ToAsker);
            let _ = opener.open(header, &mut body);
        }
    }
    for cipher in [Cipher::Aegis128L, Cipher::Aes256Gcm] {
        let mut sealer = Sealer::new(cipher, &secret, &ticket, Direction::ToServer);
        let mut opener = Opener::new(cipher, &secret, &ticket, Direction::ToServer);
        let frame = sealer.seal_frame(data).unwrap();
        let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let mut body = frame[HEADER_LEN..].to_vec();
        let len = opener.open(header, &mut body).unwrap();
        assert_eq!(&body[..len], data);
    }
});
