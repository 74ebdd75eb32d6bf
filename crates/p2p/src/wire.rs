//! The block exchange protocol: messages and their framing.
//!
//! One request, one response, over a libp2p request-response stream. A frame is a 4-byte
//! big-endian length, then a version byte, then the bincode (v2, standard configuration)
//! encoding of the message. Every decoder bounds what it reads before allocating.

use std::io;

use futures::prelude::*;
use serde::{Deserialize, Serialize};

/// The protocol name negotiated on streams: a request asks for up to
/// [`MAX_BLOCKS_PER_REQUEST`] blocks.
pub const PROTOCOL: &str = "/donode/blocks/2";
/// The first version of the protocol, still served and spoken: the same messages, but a
/// request asks for up to [`MAX_BLOCKS_PER_REQUEST_V1`] blocks. A larger request is not sent
/// over it: it fails (a node learns from identify which version a peer speaks and asks no more).
pub const PROTOCOL_V1: &str = "/donode/blocks/1";
/// The version byte this build writes and reads.
pub const VERSION: u8 = 1;
/// Largest request frame.
pub const MAX_REQUEST: usize = 4 * 1024;
/// Largest response frame: 128 blocks of 64 KiB, or the manifest of a 256 GiB file.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024 + 64;
/// Most blocks one request may ask for ([`PROTOCOL`]). 64 blocks (4 MiB): each request costs
/// a stream of its own and its negotiation, and between two nodes on one LAN 16 of them took
/// 15 % longer than 64.
pub const MAX_BLOCKS_PER_REQUEST: u32 = 64;
/// Most blocks one request may ask for over [`PROTOCOL_V1`].
pub const MAX_BLOCKS_PER_REQUEST_V1: u32 = 16;

/// The most blocks a request over `protocol` may ask for.
fn max_blocks(protocol: &libp2p::StreamProtocol) -> u32 {
    if protocol.as_ref() == PROTOCOL_V1 {
        MAX_BLOCKS_PER_REQUEST_V1
    } else {
        MAX_BLOCKS_PER_REQUEST
    }
}

/// The protocols a node serves and speaks, the newest first.
pub fn protocols() -> [libp2p::StreamProtocol; 2] {
    [
        libp2p::StreamProtocol::new(PROTOCOL),
        libp2p::StreamProtocol::new(PROTOCOL_V1),
    ]
}

/// A question to a peer, about one file identified by its content id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The file's block manifest (`do_content::Manifest` encoding).
    Manifest {
        /// The content id (BLAKE3 root).
        content: [u8; 32],
    },
    /// Which blocks the peer holds, verified.
    Have {
        /// The content id.
        content: [u8; 32],
    },
    /// Blocks `first .. first + count`.
    Blocks {
        /// The content id.
        content: [u8; 32],
        /// First block index.
        first: u64,
        /// Number of blocks (at most [`MAX_BLOCKS_PER_REQUEST`]).
        count: u32,
    },
    /// Which blocks the peer holds, verified, and whether it is fetching the whole file
    /// right now (so that the origin's work can be split with it).
    Status {
        /// The content id.
        content: [u8; 32],
    },
    /// The hashes of the peer's verified blocks, from block `first` on (at most
    /// [`MAX_HASHES`] of them). Before anyone holds the whole file, the asker collects them
    /// from several peers and trusts them only once they merge to the content id.
    Hashes {
        /// The content id.
        content: [u8; 32],
        /// First block index.
        first: u64,
    },
    /// Group mode: the content id of the file at `url`, in the version with this length and
    /// these validators, if the peer holds that version complete. Asked of and answered to
    /// the members of the node's group only.
    Claim {
        /// The file's URL.
        url: String,
        /// Its length in bytes.
        len: u64,
        /// The origin's `ETag` for this version.
        etag: Option<String>,
        /// The origin's `Last-Modified` for this version.
        last_modified: Option<String>,
    },
    /// The rank keys of the nodes the peer splits the file's origin work with (its own
    /// co-fetchers), so that a node that sees only part of a crowd splits the work as if it
    /// saw more of it. A peer that does not know this request fails it: "none".
    CoFetchers {
        /// The content id.
        content: [u8; 32],
    },
    /// The blocks of the file that the peer's own peers hold, as far as it knows: what can
    /// come through it. A node that sees part of a crowd so waits for what a co-fetcher it
    /// does not see took from the origin, instead of taking it again. A peer that does not
    /// know this request fails it: "none".
    Near {
        /// The content id.
        content: [u8; 32],
    },
    /// Open a data lane ([`crate::lane`]): a direct TCP connection for block requests, sealed
    /// under keys derived from this secret. A peer that does not know this request, or offers
    /// no lanes, fails it or answers `NotHere`: blocks then go over libp2p.
    Lane {
        /// The asker's secret, drawn fresh for this lane.
        secret: [u8; crate::lane::SECRET_LEN],
    },
    /// Open a data lane sealed with AEGIS-128L ([`crate::lane::Cipher::Aegis128L`]), answered
    /// like [`Request::Lane`]. A peer that predates it fails it: it is then asked for a
    /// [`Request::Lane`].
    AegisLane {
        /// The asker's secret, drawn fresh for this lane.
        secret: [u8; crate::lane::SECRET_LEN],
    },
}

impl Request {
    /// The request for a data lane sealed with `cipher`, under `secret`.
    pub fn lane(cipher: crate::lane::Cipher, secret: [u8; crate::lane::SECRET_LEN]) -> Self {
        match cipher {
            crate::lane::Cipher::Aegis128L => Self::AegisLane { secret },
            crate::lane::Cipher::Aes256Gcm => Self::Lane { secret },
        }
    }

    /// A lane request's secret and cipher; `None` for any other request.
    pub fn as_lane(&self) -> Option<([u8; crate::lane::SECRET_LEN], crate::lane::Cipher)> {
        match *self {
            Self::AegisLane { secret } => Some((secret, crate::lane::Cipher::Aegis128L)),
            Self::Lane { secret } => Some((secret, crate::lane::Cipher::Aes256Gcm)),
            _ => None,
        }
    }
}

/// Most block hashes one [`Response::Hashes`] carries.
pub const MAX_HASHES: usize = 65_536;

/// A peer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The encoded manifest. The asker checks that its root is the content id it trusts.
    Manifest(#[serde(with = "bytes")] Vec<u8>),
    /// Held blocks as half-open runs `[start, end)`.
    Have(Vec<(u64, u64)>),
    /// The blocks' bytes, one after another, from `first`. The asker verifies each block.
    Blocks {
        /// First block index.
        first: u64,
        /// The bytes of the blocks.
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// The peer does not hold this (or no longer).
    NotHere,
    /// No upload slot free: ask later or elsewhere.
    Busy,
    /// Answer to [`Request::Status`].
    Status {
        /// Held blocks as half-open runs `[start, end)`.
        have: Vec<(u64, u64)>,
        /// The peer is fetching the whole file now.
        fetching: bool,
    },
    /// Answer to [`Request::Hashes`]: the file's length and `(block, hash)` pairs in
    /// ascending block order.
    Hashes {
        /// The file's length in bytes.
        len: u64,
        /// Verified blocks' hashes (BLAKE3 chaining values, as in the manifest).
        blocks: Vec<(u64, [u8; 32])>,
    },
    /// Answer to [`Request::Claim`]: the content id the peer's complete copy hashed to.
    Claimed {
        /// The content id.
        content: [u8; 32],
    },
    /// Answer to [`Request::CoFetchers`]: rank keys (at most [`MAX_CO_FETCHERS`]), each with
    /// its distance from the answering node in hops between co-fetchers (0: itself).
    CoFetchers(Vec<(u64, u8)>),
    /// Answer to [`Request::Near`]: blocks as half-open runs `[start, end)`.
    Near(Vec<(u64, u64)>),
    /// Answer to [`Request::Lane`]: connect to this port at the peer's address and send the
    /// ticket (valid for one connection, for a short while).
    Lane {
        /// The server's lane port.
        port: u16,
        /// The ticket that names the asker's secret.
        ticket: [u8; crate::lane::TICKET_LEN],
    },
}

/// Most rank keys one [`Response::CoFetchers`] carries.
pub const MAX_CO_FETCHERS: usize = 65_536;

/// The request-response codec for [`Request`] and [`Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(
        &mut self,
        protocol: &Self::Protocol,
        io: &mut T,
    ) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, MAX_REQUEST).await?;
        let request: Request = decode(&frame)?;
        if let Request::Blocks { count, .. } = request
            && (count == 0 || count > max_blocks(protocol))
        {
            return Err(invalid("block count out of range"));
        }
        Ok(request)
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_response(read_frame(io, MAX_RESPONSE).await?)
    }

    async fn write_request<T>(
        &mut self,
        protocol: &Self::Protocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if let Request::Blocks { count, .. } = req
            && count > max_blocks(protocol)
        {
            return Err(invalid("more blocks than the peer's protocol allows"));
        }
        write_frame(io, &encode(&req)?, MAX_REQUEST).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if let Response::Blocks { first, data } = &res {
            // The bytes go from the answer to the stream as they are, behind their header.
            let header = blocks_header(*first, data.len())?;
            let len = header.len() - 4 + data.len();
            if len > MAX_RESPONSE {
                return Err(invalid("frame too large"));
            }
            let mut header = header;
            header[..4].copy_from_slice(&(len as u32).to_be_bytes());
            io.write_all(&header).await?;
            io.write_all(data).await?;
            return io.close().await;
        }
        write_frame(io, &encode(&res)?, MAX_RESPONSE).await
    }
}

/// The index of [`Response::Blocks`] among the response variants, as bincode writes it.
const BLOCKS_VARIANT: u32 = 2;

/// A [`Response::Blocks`] frame up to its bytes: room for the frame length, the version
/// byte, then what bincode writes before the bytes (the variant index, `first`, the bytes'
/// length), so that the bytes can follow without being copied into one buffer with it.
fn blocks_header(first: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0, 0, 0, 0, VERSION];
    let fields = bincode::serde::encode_to_vec(
        (BLOCKS_VARIANT, first, len as u64),
        bincode::config::standard(),
    )
    .map_err(|e| invalid(&e.to_string()))?;
    out.extend_from_slice(&fields);
    Ok(out)
}

/// Decodes a [`Response::Blocks`] frame in place: its bytes stay in the frame's buffer.
/// Any other frame comes back as it was, for [`decode`].
fn take_blocks(mut frame: Vec<u8>) -> io::Result<Result<Response, Vec<u8>>> {
    if frame.first() != Some(&VERSION) || frame.get(1) != Some(&(BLOCKS_VARIANT as u8)) {
        return Ok(Err(frame));
    }
    let config = bincode::config::standard().with_limit::<{ MAX_RESPONSE }>();
    let ((variant, first, len), used): ((u32, u64, u64), usize) =
        match bincode::serde::decode_from_slice(&frame[1..], config) {
            Ok(decoded) => decoded,
            Err(_) => return Ok(Err(frame)),
        };
    if variant != BLOCKS_VARIANT {
        return Ok(Err(frame));
    }
    let start = 1 + used;
    if (frame.len() - start) as u64 != len {
        return Err(invalid(if (frame.len() - start) as u64 > len {
            "trailing bytes"
        } else {
            "frame shorter than its bytes"
        }));
    }
    frame.drain(..start);
    Ok(Ok(Response::Blocks { first, data: frame }))
}

/// Encodes a message with its version byte.
pub fn encode<M: Serialize>(message: &M) -> io::Result<Vec<u8>> {
    let mut out = vec![VERSION];
    let body = bincode::serde::encode_to_vec(message, bincode::config::standard())
        .map_err(|e| invalid(&e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a response frame (what follows the frame's length) as [`Codec`] reads it: block
/// answers in place, in their frame's buffer; anything else by [`decode`], with its bounds.
pub fn decode_response(frame: Vec<u8>) -> io::Result<Response> {
    let frame = match take_blocks(frame)? {
        Ok(blocks) => return Ok(blocks),
        Err(frame) => frame,
    };
    let response: Response = decode(&frame)?;
    if let Response::CoFetchers(keys) = &response
        && keys.len() > MAX_CO_FETCHERS
    {
        return Err(invalid("too many rank keys"));
    }
    Ok(response)
}

/// Decodes a message written by [`encode`]; anything else is an error, never a panic.
pub fn decode<M: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<M> {
    let (&version, body) = bytes.split_first().ok_or_else(|| invalid("empty frame"))?;
    if version != VERSION {
        return Err(invalid("unknown protocol version"));
    }
    let config = bincode::config::standard().with_limit::<{ MAX_RESPONSE }>();
    let (message, used) =
        bincode::serde::decode_from_slice(body, config).map_err(|e| invalid(&e.to_string()))?;
    if used != body.len() {
        return Err(invalid("trailing bytes"));
    }
    Ok(message)
}

async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid("frame too large"));
    }
    let mut frame = vec![0u8; len];
    io.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    frame: &[u8],
    max: usize,
) -> io::Result<()> {
    if frame.len() > max {
        return Err(invalid("frame too large"));
    }
    io.write_all(&(frame.len() as u32).to_be_bytes()).await?;
    io.write_all(frame).await?;
    io.close().await
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Byte vectors as serde byte strings, which bincode copies whole; as a sequence, every byte
/// would pass through serde on its own (the encoding is the same: a length, then the bytes).
mod bytes {
    use std::fmt;

    use serde::{Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Visitor)
    }

    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_lane_request_names_its_cipher_both_ways() {
        use crate::lane::Cipher;
        for cipher in [Cipher::Aegis128L, Cipher::Aes256Gcm] {
            assert_eq!(
                Request::lane(cipher, [3; 32]).as_lane(),
                Some(([3; 32], cipher))
            );
        }
        assert!(matches!(
            Request::lane(Cipher::Aes256Gcm, [3; 32]),
            Request::Lane { .. }
        ));
        assert_eq!(Request::Have { content: [0; 32] }.as_lane(), None);
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|content| Request::Manifest { content }),
            any::<[u8; 32]>().prop_map(|content| Request::Have { content }),
            (any::<[u8; 32]>(), any::<u64>(), 1u32..=16).prop_map(|(content, first, count)| {
                Request::Blocks {
                    content,
                    first,
                    count,
                }
            }),
            any::<[u8; 32]>().prop_map(|content| Request::Status { content }),
            any::<[u8; 32]>().prop_map(|content| Request::CoFetchers { content }),
            any::<[u8; 32]>().prop_map(|content| Request::Near { content }),
            any::<[u8; 32]>().prop_map(|secret| Request::Lane { secret }),
            any::<[u8; 32]>().prop_map(|secret| Request::AegisLane { secret }),
            (any::<[u8; 32]>(), any::<u64>())
                .prop_map(|(content, first)| Request::Hashes { content, first }),
            (
                ".{0,100}",
                any::<u64>(),
                proptest::option::of(".{0,40}"),
                proptest::option::of(".{0,40}")
            )
                .prop_map(|(url, len, etag, last_modified)| Request::Claim {
                    url,
                    len,
                    etag,
                    last_modified
                }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Response::Manifest),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20).prop_map(Response::Have),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(first, data)| Response::Blocks { first, data }),
            Just(Response::NotHere),
            Just(Response::Busy),
            (
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20),
                any::<bool>()
            )
                .prop_map(|(have, fetching)| Response::Status { have, fetching }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), any::<[u8; 32]>()), 0..20)
            )
                .prop_map(|(len, blocks)| Response::Hashes { len, blocks }),
            any::<[u8; 32]>().prop_map(|content| Response::Claimed { content }),
            proptest::collection::vec((any::<u64>(), any::<u8>()), 0..40)
                .prop_map(Response::CoFetchers),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20).prop_map(Response::Near),
            (any::<u16>(), any::<[u8; 16]>())
                .prop_map(|(port, ticket)| Response::Lane { port, ticket }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip_through_frames(req in request(), res in response()) {
            futures::executor::block_on(async {
                let mut buf = Vec::new();
                let mut codec = Codec;
                let protocol = libp2p::StreamProtocol::new(PROTOCOL);
                libp2p::request_response::Codec::write_request(&mut codec, &protocol, &mut futures::io::Cursor::new(&mut buf), req.clone()).await.unwrap();
                let got = libp2p::request_response::Codec::read_request(&mut codec, &protocol, &mut futures::io::Cursor::new(&buf)).await.unwrap();
                assert_eq!(got, req);
                let mut buf = Vec::new();
                libp2p::request_response::Codec::write_response(&mut codec, &protocol, &mut futures::io::Cursor::new(&mut buf), res.clone()).await.unwrap();
                let got = libp2p::request_response::Codec::read_response(&mut codec, &protocol, &mut futures::io::Cursor::new(&buf)).await.unwrap();
                assert_eq!(got, res);
            });
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }

        /// Frames that look like block answers (version 1, variant 2) in every other respect
        /// arbitrary: the in-place decoder accepts exactly what the generic one accepts.
        #[test]
        fn block_answers_decode_in_place_as_they_decode_generically(
            tail in proptest::collection::vec(any::<u8>(), 0..40),
            data in proptest::collection::vec(any::<u8>(), 0..40),
            lie in -2i64..=2,
        ) {
            let mut frame = vec![VERSION, BLOCKS_VARIANT as u8];
            frame.extend_from_slice(&tail);
            let generic = decode::<Response>(&frame).ok();
            prop_assert_eq!(decode_response(frame).ok(), generic);
            // And well-formed headers whose length is off by `lie`.
            let mut frame = blocks_header(5, (data.len() as i64 + lie).max(0) as usize).unwrap();
            frame.drain(..4);
            frame.extend_from_slice(&data);
            let generic = decode::<Response>(&frame).ok();
            prop_assert_eq!(generic.is_some(), lie == 0 || (lie < 0 && data.is_empty()));
            prop_assert_eq!(decode_response(frame).ok(), generic);
        }
    }

    #[test]
    fn block_data_is_encoded_as_a_plain_byte_sequence() {
        // What version 1 has always sent: serde's default encoding of the same shape.
        #[derive(Serialize)]
        enum Plain {
            _Manifest(Vec<u8>),
            _Have(Vec<(u64, u64)>),
            Blocks { first: u64, data: Vec<u8> },
        }
        let data: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let plain = encode(&Plain::Blocks {
            first: 7,
            data: data.clone(),
        })
        .unwrap();
        let response = Response::Blocks { first: 7, data };
        assert_eq!(encode(&response).unwrap(), plain);
        assert_eq!(decode::<Response>(&plain).unwrap(), response);
    }

    /// The frame a response takes through the generic path: length, version, bincode.
    fn generic_frame(res: &Response) -> Vec<u8> {
        let body = encode(res).unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    async fn written(res: Response) -> Vec<u8> {
        let mut buf = Vec::new();
        let protocol = libp2p::StreamProtocol::new(PROTOCOL);
        libp2p::request_response::Codec::write_response(
            &mut Codec,
            &protocol,
            &mut futures::io::Cursor::new(&mut buf),
            res,
        )
        .await
        .unwrap();
        buf
    }

    async fn read(frame: &[u8]) -> io::Result<Response> {
        let protocol = libp2p::StreamProtocol::new(PROTOCOL);
        libp2p::request_response::Codec::read_response(
            &mut Codec,
            &protocol,
            &mut futures::io::Cursor::new(frame),
        )
        .await
    }

    proptest! {
        #[test]
        fn blocks_frames_are_the_generic_encoding(
            first in prop_oneof![0u64..300, any::<u64>()],
            len in prop_oneof![0usize..300, 65_530usize..65_540, Just(1 << 20)],
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let res = Response::Blocks { first, data };
            let frame = futures::executor::block_on(written(res.clone()));
            prop_assert_eq!(&frame, &generic_frame(&res), "the wire format is unchanged");
            prop_assert_eq!(futures::executor::block_on(read(&frame)).unwrap(), res);
        }
    }

    #[test]
    fn blocks_frames_with_too_many_or_too_few_bytes_are_refused() {
        futures::executor::block_on(async {
            let res = Response::Blocks {
                first: 3,
                data: vec![9; 1000],
            };
            let frame = generic_frame(&res);
            // One byte more than the header says, inside a well-formed frame.
            let mut long = frame.clone();
            long.push(0);
            let n = (long.len() - 4) as u32;
            long[..4].copy_from_slice(&n.to_be_bytes());
            assert!(read(&long).await.is_err(), "trailing bytes");
            let mut short = frame.clone();
            short.pop();
            let n = (short.len() - 4) as u32;
            short[..4].copy_from_slice(&n.to_be_bytes());
            assert!(read(&short).await.is_err(), "fewer bytes than announced");
            let mut cut = frame;
            cut.truncate(100);
            assert!(
                read(&cut).await.is_err(),
                "a stream that ends inside the frame"
            );
        });
    }

    #[test]
    fn oversized_and_foreign_frames_are_refused() {
        futures::executor::block_on(async {
            let mut codec = Codec;
            let protocol = libp2p::StreamProtocol::new(PROTOCOL);
            let mut frame = (MAX_REQUEST as u32 + 1).to_be_bytes().to_vec();
            frame.resize(frame.len() + MAX_REQUEST + 1, 0);
            let r = libp2p::request_response::Codec::read_request(
                &mut codec,
                &protocol,
                &mut futures::io::Cursor::new(&frame),
            )
            .await;
            assert!(r.is_err());
            let mut v2 = encode(&Request::Have { content: [0; 32] }).unwrap();
            v2[0] = 2;
            assert!(
                decode::<Request>(&v2).is_err(),
                "another version is refused"
            );
        });
    }

    /// A request for `count` blocks as read over `protocol`.
    async fn read_blocks_request(protocol: &'static str, count: u32) -> io::Result<Request> {
        let body = encode(&Request::Blocks {
            content: [0; 32],
            first: 0,
            count,
        })
        .unwrap();
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        libp2p::request_response::Codec::read_request(
            &mut Codec,
            &libp2p::StreamProtocol::new(protocol),
            &mut futures::io::Cursor::new(&framed),
        )
        .await
    }

    #[test]
    fn each_protocol_bounds_the_blocks_of_a_request() {
        futures::executor::block_on(async {
            for (protocol, most) in [
                (PROTOCOL, MAX_BLOCKS_PER_REQUEST),
                (PROTOCOL_V1, MAX_BLOCKS_PER_REQUEST_V1),
            ] {
                for count in [1, most] {
                    assert!(
                        read_blocks_request(protocol, count).await.is_ok(),
                        "{count} blocks over {protocol}"
                    );
                }
                for count in [0, most + 1] {
                    assert!(
                        read_blocks_request(protocol, count).await.is_err(),
                        "{count} blocks over {protocol}"
                    );
                }
            }
            // A request the peer's protocol would refuse is not sent at all.
            let mut buf = Vec::new();
            let r = libp2p::request_response::Codec::write_request(
                &mut Codec,
                &libp2p::StreamProtocol::new(PROTOCOL_V1),
                &mut futures::io::Cursor::new(&mut buf),
                Request::Blocks {
                    content: [0; 32],
                    first: 0,
                    count: MAX_BLOCKS_PER_REQUEST_V1 + 1,
                },
            )
            .await;
            assert!(r.is_err());
            assert!(buf.is_empty(), "nothing went to the stream");
        });
    }
}
