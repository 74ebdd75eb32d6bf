//! Data lanes: a direct TCP connection between two peers that carries block requests and their
//! answers beside libp2p, every frame sealed with AEGIS-128L (or, with a peer that predates it,
//! AES-256-GCM) under keys the two agreed over their libp2p connection.
//!
//! Why: on a LAN, the libp2p path costs more CPU per byte than the network carries. noise seals
//! with ChaCha20-Poly1305 in software, yamux frames and copies every chunk, and each request is
//! a stream of its own with its own negotiation. AES-GCM with the CPU's AES and carry-less
//! multiply instructions costs a fraction of ChaCha20-Poly1305, and AEGIS-128L, built on the
//! same AES round instruction, less than half of AES-GCM (0.08-0.09 s per GiB against
//! 0.19-0.22 s on one core here; a 1 GiB transfer between two nodes took 6 % less time and
//! 10 % less CPU). A lane's answers are written to the socket straight from the buffer they
//! were read into.
//!
//! Trust is unchanged: a lane is opened only through an authenticated libp2p connection
//! (noise, and in Group mode the group's private network), and every block that comes over it
//! is verified against the trusted manifest like any other peer block.
//!
//! Setup:
//! 1. The asker draws a secret of [`SECRET_LEN`] bytes and sends it in
//!    [`Request::AegisLane`](crate::wire::Request::AegisLane) over libp2p (encrypted there);
//!    a peer that does not know that request fails it, and is asked again with
//!    [`Request::Lane`](crate::wire::Request::Lane), the AES-256-GCM lane it knows.
//! 2. The server keeps it under a fresh ticket of [`TICKET_LEN`] bytes and answers
//!    [`Response::Lane`](crate::wire::Response::Lane) with its lane port and the ticket.
//! 3. The asker connects to the peer's address at that port and sends the ticket in clear;
//!    the server takes the ticket's secret (once: a ticket opens one lane).
//!
//! From then on every frame is sealed: a 4-byte big-endian length of what follows, then the
//! ciphertext and its 16-byte tag. The length is the associated data; the nonce is a counter
//! per direction, so a frame dropped, replayed or moved fails to open. Each direction has its
//! own key, derived with BLAKE3's `derive_key` from the secret and the ticket (in a context
//! that names the cipher).
//!
//! Messages: the asker sends [`LaneRequest`]s; the server answers each, in order, with a
//! [`LaneAnswer`] header frame and, for blocks, a data frame of exactly the bytes announced.

use aegis::aegis128l::Aegis128L;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::wire::MAX_BLOCKS_PER_REQUEST;

/// Length of the secret the asker sends over libp2p.
pub const SECRET_LEN: usize = 32;
/// Length of the ticket the server answers with (sent in clear on the lane).
pub const TICKET_LEN: usize = 16;
/// Length of a frame's authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of a frame's length prefix.
pub const HEADER_LEN: usize = 4;
/// The largest frame (after its length prefix): the most blocks one request may ask for, and
/// the tag.
pub const MAX_FRAME: usize =
    MAX_BLOCKS_PER_REQUEST as usize * do_content::BLOCK_SIZE as usize + TAG_LEN;

/// Why a lane frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaneError {
    /// The length prefix is out of bounds.
    #[error("lane frame of {0} bytes is out of bounds")]
    FrameLength(usize),
    /// The frame did not open under the lane's key and the expected counter.
    #[error("lane frame failed authentication")]
    Auth,
    /// The frame opened but its message is malformed.
    #[error("malformed lane message: {0}")]
    Malformed(&'static str),
    /// A direction's counter ran out (never in practice: 2^64 frames).
    #[error("lane counter exhausted")]
    Exhausted,
}

/// Which way a frame travels: each direction has its own key and counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the asker to the server (requests).
    ToServer,
    /// From the server to the asker (answers and data).
    ToAsker,
}

/// The AEAD that seals a lane's frames, agreed by the request that opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// AEGIS-128L ([`Request::AegisLane`](crate::wire::Request::AegisLane)): what this build
    /// asks for.
    Aegis128L,
    /// AES-256-GCM ([`Request::Lane`](crate::wire::Request::Lane)): the first lanes' cipher,
    /// still offered to and asked of peers that know no other.
    Aes256Gcm,
}

impl Cipher {
    fn context(self, direction: Direction) -> &'static str {
        match (self, direction) {
            (Self::Aes256Gcm, Direction::ToServer) => "donode data lane 1 asker to server",
            (Self::Aes256Gcm, Direction::ToAsker) => "donode data lane 1 server to asker",
            (Self::Aegis128L, Direction::ToServer) => {
                "donode data lane 2 aegis128l asker to server"
            }
            (Self::Aegis128L, Direction::ToAsker) => "donode data lane 2 aegis128l server to asker",
        }
    }
}

/// One direction's key.
enum Key {
    Aegis([u8; 16]),
    Aes(Box<LessSafeKey>),
}

impl Key {
    fn new(
        cipher: Cipher,
        secret: &[u8; SECRET_LEN],
        ticket: &[u8; TICKET_LEN],
        direction: Direction,
    ) -> Self {
        let mut material = [0u8; SECRET_LEN + TICKET_LEN];
        material[..SECRET_LEN].copy_from_slice(secret);
        material[SECRET_LEN..].copy_from_slice(ticket);
        let derived = blake3::derive_key(cipher.context(direction), &material);
        match cipher {
            Cipher::Aegis128L => {
                let mut key = [0u8; 16];
                key.copy_from_slice(&derived[..16]);
                Self::Aegis(key)
            }
            Cipher::Aes256Gcm => Self::Aes(Box::new(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &derived).expect("a 32-byte AES-256 key"),
            ))),
        }
    }

    /// Encrypts `plain` in place under frame `counter`, `header` the associated data.
    fn seal(
        &self,
        counter: u64,
        header: [u8; HEADER_LEN],
        plain: &mut [u8],
    ) -> Result<[u8; TAG_LEN], LaneError> {
        match self {
            Self::Aegis(key) => Ok(Aegis128L::<TAG_LEN>::new(key, &aegis_nonce(counter))
                .encrypt_in_place(plain, &header)),
            Self::Aes(key) => {
                let tag = key
                    .seal_in_place_separate_tag(aes_nonce(counter), Aad::from(header), plain)
                    .map_err(|_| LaneError::Auth)?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
        }
    }

    /// Decrypts `frame` (ciphertext then tag) in place; the plain length.
    fn open(
        &self,
        counter: u64,
        header: [u8; HEADER_LEN],
        frame: &mut [u8],
    ) -> Result<usize, LaneError> {
        match self {
            Self::Aegis(key) => {
                let (body, tag) = frame.split_at_mut(frame.len() - TAG_LEN);
                let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("a tag's length");
                Aegis128L::<TAG_LEN>::new(key, &aegis_nonce(counter))
                    .decrypt_in_place(body, tag, &header)
                    .map_err(|_| LaneError::Auth)?;
                Ok(body.len())
            }
            Self::Aes(key) => key
                .open_in_place(aes_nonce(counter), Aad::from(header), frame)
                .map(|plain| plain.len())
                .map_err(|_| LaneError::Auth),
        }
    }
}

fn aes_nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aegis_nonce(counter: u64) -> [u8; 16] {
    let mut n = [0u8; 16];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// The length a frame's prefix announces, checked against the bounds before anything is
/// allocated for it.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, LaneError> {
    let len = u32::from_be_bytes(header) as usize;
    if (TAG_LEN..=MAX_FRAME).contains(&len) {
        Ok(len)
    } else {
        Err(LaneError::FrameLength(len))
    }
}

/// One direction's key and the counter of its next frame.
struct Frames {
    key: Key,
    next: u64,
}

impl Frames {
    fn new(
        cipher: Cipher,
        secret: &[u8; SECRET_LEN],
        ticket: &[u8; TICKET_LEN],
        direction: Direction,
    ) -> Self {
        Self {
            key: Key::new(cipher, secret, ticket, direction),
            next: 0,
        }
    }

    /// The next frame's counter.
    fn count(&mut self) -> Result<u64, LaneError> {
        let counter = self.next;
        self.next = self.next.checked_add(1).ok_or(LaneError::Exhausted)?;
        Ok(counter)
    }
}

/// Seals the frames of one direction.
pub struct Sealer(Frames);

impl Sealer {
    /// The sealer for `direction` of the lane opened with `secret` and `ticket`, sealing with
    /// `cipher`.
    pub fn new(
        cipher: Cipher,
        secret: &[u8; SECRET_LEN],
        ticket: &[u8; TICKET_LEN],
        direction: Direction,
    ) -> Self {
        Self(Frames::new(cipher, secret, ticket, direction))
    }

    /// Encrypts `plain` in place; returns the frame's length prefix and its tag. The frame
    /// on the wire is the prefix, the encrypted bytes, then the tag.
    pub fn seal(
        &mut self,
        plain: &mut [u8],
    ) -> Result<([u8; HEADER_LEN], [u8; TAG_LEN]), LaneError> {
        let len = plain.len() + TAG_LEN;
        if len > MAX_FRAME {
            return Err(LaneError::FrameLength(len));
        }
        let header = (len as u32).to_be_bytes();
        let counter = self.0.count()?;
        Ok((header, self.0.key.seal(counter, header, plain)?))
    }

    /// A whole small frame: prefix, ciphertext and tag in one buffer.
    pub fn seal_frame(&mut self, plain: &[u8]) -> Result<Vec<u8>, LaneError> {
        let mut body = plain.to_vec();
        let (header, tag) = self.seal(&mut body)?;
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&body);
        frame.extend_from_slice(&tag);
        Ok(frame)
    }
}

/// Opens the frames of one direction, in the order they were sealed.
pub struct Opener(Frames);

impl Opener {
    /// The opener for `direction` of the lane opened with `secret` and `ticket`, sealed with
    /// `cipher`.
    pub fn new(
        cipher: Cipher,
        secret: &[u8; SECRET_LEN],
        ticket: &[u8; TICKET_LEN],
        direction: Direction,
    ) -> Self {
        Self(Frames::new(cipher, secret, ticket, direction))
    }

    /// Decrypts a frame (`frame`: ciphertext then tag, as long as `header` announced) in
    /// place and returns the plain length: the plain bytes are `frame[..len]`. A frame that
    /// fails to open leaves the lane unusable (the counter has moved on).
    pub fn open(&mut self, header: [u8; HEADER_LEN], frame: &mut [u8]) -> Result<usize, LaneError> {
        if frame_len(header)? != frame.len() {
            return Err(LaneError::FrameLength(frame.len()));
        }
        let counter = self.0.count()?;
        self.0.key.open(counter, header, frame)
    }
}

/// A block request on a lane: blocks `first .. first + count` of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneRequest {
    /// The content id.
    pub content: [u8; 32],
    /// First block index.
    pub first: u64,
    /// Number of blocks, 1 to [`MAX_BLOCKS_PER_REQUEST`].
    pub count: u32,
}

impl LaneRequest {
    /// The encoded length.
    pub const LEN: usize = 44;

    /// Encodes the request (content id, then big-endian `first` and `count`).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.content);
        out[32..40].copy_from_slice(&self.first.to_be_bytes());
        out[40..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    /// Decodes a request; refuses any other length and a count out of bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self, LaneError> {
        let bytes: &[u8; Self::LEN] = bytes
            .try_into()
            .map_err(|_| LaneError::Malformed("request length"))?;
        let count = u32::from_be_bytes(bytes[40..].try_into().expect("4 bytes"));
        if count == 0 || count > MAX_BLOCKS_PER_REQUEST {
            return Err(LaneError::Malformed("block count"));
        }
        Ok(Self {
            content: bytes[..32].try_into().expect("32 bytes"),
            first: u64::from_be_bytes(bytes[32..40].try_into().expect("8 bytes")),
            count,
        })
    }
}

/// The server's answer to a [`LaneRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneAnswer {
    /// The blocks from `first`: a data frame of `len` plain bytes follows.
    Blocks {
        /// First block index.
        first: u64,
        /// Bytes in the data frame that follows (1 to the most a request may ask for).
        len: u32,
    },
    /// The server does not hold them (or no longer).
    NotHere,
}

impl LaneAnswer {
    /// The encoded length.
    pub const LEN: usize = 13;

    /// Encodes the answer (a kind byte, then big-endian `first` and `len`; zeros for
    /// `NotHere`).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        if let Self::Blocks { first, len } = *self {
            out[0] = 1;
            out[1..9].copy_from_slice(&first.to_be_bytes());
            out[9..].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    /// Decodes an answer; refuses any other length, an unknown kind and a data length out of
    /// bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self, LaneError> {
        let bytes: &[u8; Self::LEN] = bytes
            .try_into()
            .map_err(|_| LaneError::Malformed("answer length"))?;
        match bytes[0] {
            0 if bytes[1..].iter().all(|&b| b == 0) => Ok(Self::NotHere),
            1 => {
                let len = u32::from_be_bytes(bytes[9..].try_into().expect("4 bytes"));
                if len == 0 || len as usize > MAX_FRAME - TAG_LEN {
                    return Err(LaneError::Malformed("data length"));
                }
                Ok(Self::Blocks {
                    first: u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
                    len,
                })
            }
            _ => Err(LaneError::Malformed("answer kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: [u8; SECRET_LEN] = [7; SECRET_LEN];
    const TICKET: [u8; TICKET_LEN] = [9; TICKET_LEN];

    const CIPHERS: [Cipher; 2] = [Cipher::Aegis128L, Cipher::Aes256Gcm];

    fn pair(cipher: Cipher, direction: Direction) -> (Sealer, Opener) {
        (
            Sealer::new(cipher, &SECRET, &TICKET, direction),
            Opener::new(cipher, &SECRET, &TICKET, direction),
        )
    }

    /// Splits a sealed frame into its prefix and the rest.
    fn split(frame: &[u8]) -> ([u8; HEADER_LEN], Vec<u8>) {
        (
            frame[..HEADER_LEN].try_into().unwrap(),
            frame[HEADER_LEN..].to_vec(),
        )
    }

    #[test]
    fn frames_open_in_order_under_their_direction() {
        for cipher in CIPHERS {
            let (mut sealer, mut opener) = pair(cipher, Direction::ToAsker);
            for message in [&b"first"[..], b"", b"third frame"] {
                let (header, mut body) = split(&sealer.seal_frame(message).unwrap());
                let len = opener.open(header, &mut body).unwrap();
                assert_eq!(&body[..len], message, "{cipher:?}");
            }
        }
    }

    #[test]
    fn a_changed_byte_a_replayed_frame_or_the_other_direction_fails_to_open() {
        for cipher in CIPHERS {
            let (mut sealer, _) = pair(cipher, Direction::ToServer);
            let first = sealer.seal_frame(b"block request").unwrap();
            let second = sealer.seal_frame(b"block request").unwrap();
            assert_ne!(first, second, "the counter changes every frame");

            let (_, mut opener) = pair(cipher, Direction::ToServer);
            let (header, mut body) = split(&first);
            body[3] ^= 1;
            assert_eq!(opener.open(header, &mut body), Err(LaneError::Auth));

            // A changed tag, and a changed length prefix (the associated data).
            let (_, mut opener) = pair(cipher, Direction::ToServer);
            let (header, mut body) = split(&first);
            *body.last_mut().unwrap() ^= 1;
            assert_eq!(opener.open(header, &mut body), Err(LaneError::Auth));
            let (_, mut opener) = pair(cipher, Direction::ToServer);
            let (header, mut body) = split(&first);
            body.push(0);
            let longer = ((body.len()) as u32).to_be_bytes();
            assert_ne!(header, longer);
            assert_eq!(opener.open(longer, &mut body), Err(LaneError::Auth));

            // The second frame first: its counter is not the one expected.
            let (_, mut opener) = pair(cipher, Direction::ToServer);
            let (header, mut body) = split(&second);
            assert_eq!(opener.open(header, &mut body), Err(LaneError::Auth));

            // The same frame twice: the replay fails.
            let (_, mut opener) = pair(cipher, Direction::ToServer);
            let (header, body) = split(&first);
            assert!(opener.open(header, &mut body.clone()).is_ok());
            assert_eq!(opener.open(header, &mut body.clone()), Err(LaneError::Auth));

            // The other direction's key.
            let (_, mut opener) = pair(cipher, Direction::ToAsker);
            let (header, mut body) = split(&first);
            assert_eq!(opener.open(header, &mut body), Err(LaneError::Auth));

            // Another secret.
            let mut opener = Opener::new(cipher, &[8; SECRET_LEN], &TICKET, Direction::ToServer);
            let (header, mut body) = split(&first);
            assert_eq!(opener.open(header, &mut body), Err(LaneError::Auth));
        }
    }

    #[test]
    fn a_frame_sealed_with_one_cipher_does_not_open_with_the_other() {
        let (mut aegis, _) = pair(Cipher::Aegis128L, Direction::ToAsker);
        let (mut aes, _) = pair(Cipher::Aes256Gcm, Direction::ToAsker);
        let by_aegis = aegis.seal_frame(b"blocks").unwrap();
        let by_aes = aes.seal_frame(b"blocks").unwrap();
        assert_ne!(by_aegis, by_aes);
        let (_, mut opener) = pair(Cipher::Aes256Gcm, Direction::ToAsker);
        let (header, mut body) = split(&by_aegis);
        assert_eq!(opener.open(header, &mut body), Err(LaneError::Auth));
        let (_, mut opener) = pair(Cipher::Aegis128L, Direction::ToAsker);
        let (header, mut body) = split(&by_aes);
        assert_eq!(opener.open(header, &mut body), Err(LaneError::Auth));
    }

    #[test]
    fn a_prefix_out_of_bounds_is_refused_before_anything_is_read() {
        assert_eq!(frame_len([0, 0, 0, 15]), Err(LaneError::FrameLength(15)));
        assert_eq!(frame_len([0, 0, 0, 16]), Ok(16));
        assert_eq!(frame_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
        let over = MAX_FRAME as u32 + 1;
        assert_eq!(
            frame_len(over.to_be_bytes()),
            Err(LaneError::FrameLength(over as usize))
        );
        for cipher in CIPHERS {
            let (mut sealer, _) = pair(cipher, Direction::ToAsker);
            let mut big = vec![0u8; MAX_FRAME - TAG_LEN + 1];
            assert!(sealer.seal(&mut big).is_err());
        }
    }

    #[test]
    fn a_whole_request_of_blocks_fits_in_one_data_frame() {
        for cipher in CIPHERS {
            let (mut sealer, mut opener) = pair(cipher, Direction::ToAsker);
            let mut data: Vec<u8> = (0..MAX_FRAME - TAG_LEN).map(|i| i as u8).collect();
            let original = data.clone();
            let (header, tag) = sealer.seal(&mut data).unwrap();
            assert_ne!(data, original);
            data.extend_from_slice(&tag);
            let len = opener.open(header, &mut data).unwrap();
            assert_eq!(&data[..len], &original[..], "{cipher:?}");
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(LaneRequest::decode(&[0; 43]).is_err());
        assert!(LaneRequest::decode(&[0; 45]).is_err());
        // A count of zero, and one over the most blocks per request.
        assert!(LaneRequest::decode(&[0; 44]).is_err());
        let mut over = LaneRequest {
            content: [1; 32],
            first: 0,
            count: MAX_BLOCKS_PER_REQUEST,
        }
        .encode();
        assert!(LaneRequest::decode(&over).is_ok());
        over[43] += 1;
        assert!(LaneRequest::decode(&over).is_err());

        assert!(LaneAnswer::decode(&[2; 13]).is_err());
        assert!(LaneAnswer::decode(&[0; 12]).is_err());
        // NotHere with stray bytes, and blocks of no data.
        let mut stray = [0u8; 13];
        stray[5] = 1;
        assert!(LaneAnswer::decode(&stray).is_err());
        let empty = LaneAnswer::Blocks { first: 3, len: 0 }.encode();
        assert!(LaneAnswer::decode(&empty).is_err());
    }

    proptest! {
        #[test]
        fn requests_round_trip(content: [u8; 32], first: u64, count in 1..=MAX_BLOCKS_PER_REQUEST) {
            let r = LaneRequest { content, first, count };
            prop_assert_eq!(LaneRequest::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn answers_round_trip(first: u64, len in 1..=(MAX_FRAME - TAG_LEN) as u32) {
            let a = LaneAnswer::Blocks { first, len };
            prop_assert_eq!(LaneAnswer::decode(&a.encode()), Ok(a));
            prop_assert_eq!(LaneAnswer::decode(&LaneAnswer::NotHere.encode()), Ok(LaneAnswer::NotHere));
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = LaneRequest::decode(&bytes);
            let _ = LaneAnswer::decode(&bytes);
        }
    }
}
