//! Serving one file held in memory: what tests and the probe answer peers with.

use do_content::{BLOCK_SIZE, Manifest, block_count};
use futures::StreamExt;
use libp2p::{Swarm, request_response, swarm::SwarmEvent};

use crate::{
    Behaviour, BehaviourEvent,
    wire::{Request, Response},
};

/// One file in memory, with its manifest.
pub struct InMemory {
    data: Vec<u8>,
    manifest: Manifest,
}

impl InMemory {
    /// Holds `data` (its manifest is computed here).
    pub fn new(data: Vec<u8>) -> Self {
        let manifest = Manifest::from_bytes(&data);
        Self { data, manifest }
    }

    /// The file's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The answer to a peer's request; other content ids get `NotHere`. With `corrupt`, the
    /// first byte of every block answer is flipped (a lying peer, for tests).
    pub fn answer(&self, request: &Request, corrupt: bool) -> Response {
        let ours = *self.manifest.root().as_bytes();
        match *request {
            Request::Manifest { content } if content == ours => {
                Response::Manifest(self.manifest.encode())
            }
            Request::Have { content } if content == ours => {
                Response::Have(vec![(0, block_count(self.manifest.len()))])
            }
            Request::Status { content } if content == ours => Response::Status {
                have: vec![(0, block_count(self.manifest.len()))],
                fetching: false,
            },
            Request::Hashes { content, first } if content == ours => Response::Hashes {
                len: self.manifest.len(),
                blocks: (first..block_count(self.manifest.len()))
                    .take(crate::wire::MAX_HASHES)
                    .map(|b| (b, self.manifest.blocks()[b as usize].0))
                    .collect(),
            },
            Request::Blocks {
                content,
                first,
                count,
            } if content == ours => {
                let len = self.data.len();
                let start = (first.saturating_mul(BLOCK_SIZE) as usize).min(len);
                let end = (first
                    .saturating_add(u64::from(count))
                    .saturating_mul(BLOCK_SIZE) as usize)
                    .min(len);
                let mut data = self.data[start..end].to_vec();
                if corrupt && let Some(b) = data.first_mut() {
                    *b ^= 1;
                }
                Response::Blocks { first, data }
            }
            _ => Response::NotHere,
        }
    }

    /// Answers every block-protocol request that reaches `swarm` with [`InMemory::answer`],
    /// for as long as the future is polled (a serving node of the tests and the probe).
    pub async fn serve(&self, swarm: &mut Swarm<Behaviour>, corrupt: bool) {
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Blocks(
                request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                },
            )) = swarm.select_next_some().await
            {
                let answer = self.answer(&request, corrupt);
                let _ = swarm.behaviour_mut().blocks.send_response(channel, answer);
            }
        }
    }
}
