//! Serving the cache to peers over the p2p layer: manifests, holdings and blocks of complete
//! files, every block re-checked against its recorded hash on the way out.

use std::{path::Path, sync::Arc};

use do_content::{ContentId, Manifest, block_count};
use do_p2p::{
    BehaviourEvent,
    wire::{Request, Response},
};
use do_store::Store;
use futures::StreamExt;
use libp2p::{Swarm, request_response, swarm::SwarmEvent};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, info, warn};

/// Answers computed off the actor, waiting to be sent.
type Answer = (request_response::ResponseChannel<Response>, Response);

/// The node's p2p side: its swarm and the answers in progress.
pub(crate) struct Serving {
    swarm: Swarm<do_p2p::Behaviour>,
    answers_tx: mpsc::Sender<Answer>,
    answers_rx: mpsc::Receiver<Answer>,
    /// Answers being computed; more than `slots` get `Busy` (DO's upload slots).
    busy: usize,
    slots: usize,
}

/// What woke the serving side.
pub(crate) enum Served {
    Swarm(Box<SwarmEvent<BehaviourEvent>>),
    Answer(Answer),
}

impl Serving {
    /// Starts the swarm with the node's persisted identity, listening on all addresses.
    pub(crate) fn start(
        config: &crate::P2pConfig,
        identity_dir: &Path,
    ) -> Result<Self, do_p2p::Error> {
        let key = do_p2p::load_or_create_identity(identity_dir)?;
        let mut swarm = do_p2p::swarm(key, &config.layer)?;
        swarm
            .listen_on(config.listen.clone())
            .map_err(|e| do_p2p::Error::Transport(e.to_string()))?;
        info!(peer = %swarm.local_peer_id(), "p2p layer up");
        let (answers_tx, answers_rx) = mpsc::channel(64);
        Ok(Self {
            swarm,
            answers_tx,
            answers_rx,
            busy: 0,
            slots: config.upload_slots.max(1),
        })
    }

    /// The next thing to handle. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Served {
        tokio::select! {
            event = self.swarm.select_next_some() => Served::Swarm(Box::new(event)),
            Some(answer) = self.answers_rx.recv() => Served::Answer(answer),
        }
    }

    /// Handles it: requests are answered from the store on blocking threads.
    pub(crate) fn handle(&mut self, served: Served, store: &Arc<Store>, tasks: &mut JoinSet<()>) {
        match served {
            Served::Answer((channel, response)) => {
                self.busy -= 1;
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, response);
            }
            Served::Swarm(event) => {
                let SwarmEvent::Behaviour(BehaviourEvent::Blocks(
                    request_response::Event::Message {
                        peer,
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) = *event
                else {
                    return;
                };
                if self.busy >= self.slots {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .blocks
                        .send_response(channel, Response::Busy);
                    return;
                }
                debug!(%peer, ?request, "peer request");
                self.busy += 1;
                let (store, tx) = (Arc::clone(store), self.answers_tx.clone());
                tasks.spawn(async move {
                    let response = tokio::task::spawn_blocking(move || answer(&store, request))
                        .await
                        .unwrap_or(Response::NotHere);
                    let _ = tx.send((channel, response)).await;
                });
            }
        }
    }
}

/// Answers one request from the cache: complete files only, verified bytes only.
fn answer(store: &Store, request: Request) -> Response {
    let content = match &request {
        Request::Manifest { content }
        | Request::Have { content }
        | Request::Blocks { content, .. } => ContentId::from_bytes(*content),
    };
    let found = match store.lookup_content(&content) {
        Ok(Some((id, meta))) if meta.complete => (id, meta),
        Ok(_) => return Response::NotHere,
        Err(e) => {
            warn!(error = %e, "cache lookup for a peer failed");
            return Response::NotHere;
        }
    };
    let (id, meta) = found;
    let result = match request {
        Request::Manifest { .. } => store.blocks(id).map(|blocks| {
            let hashes: Vec<_> = blocks.into_iter().map(|(_, h)| h).collect();
            match Manifest::new(meta.len, hashes) {
                Ok(m) if m.root() == content => Response::Manifest(m.encode()),
                _ => Response::NotHere,
            }
        }),
        Request::Have { .. } => store
            .verified(id)
            .map(|set| Response::Have(set.runs().map(|r| (r.start, r.end)).collect())),
        Request::Blocks { first, count, .. } => {
            let count = u64::from(count).min(block_count(meta.len).saturating_sub(first));
            store
                .read_verified(id, first, count)
                .map(|data| match data {
                    Some(data) => Response::Blocks { first, data },
                    None => Response::NotHere,
                })
        }
    };
    result.unwrap_or_else(|e| {
        warn!(error = %e, "answering a peer failed");
        Response::NotHere
    })
}
