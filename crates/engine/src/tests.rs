//! Engine scenarios driven by a fake driver with a virtual clock.

use std::collections::{BTreeMap, BTreeSet};

use do_content::BLOCK_SIZE;
use proptest::prelude::*;

use super::*;
use crate::peers::{SPLIT_POINTS, arcs, ring, ring_point};

const ID: DownloadId = DownloadId(1);

/// A scripted driver: a virtual clock and the engine's queued actions.
struct Harness {
    engine: Engine,
    now: Instant,
    pending: Vec<Action>,
    events: Vec<Event>,
}

impl Harness {
    fn new(config: Config) -> Self {
        Self {
            engine: Engine::new(config, [7; 32]),
            // The virtual clock has to start somewhere; only `advance` moves it.
            #[allow(clippy::disallowed_methods)]
            now: Instant::now(),
            pending: Vec::new(),
            events: Vec::new(),
        }
    }

    fn create(&mut self, content_id: Option<ContentId>) {
        let spec = Spec {
            url: "http://origin/f".into(),
            content_id,
            no_progress_timeout: Some(Duration::from_secs(60)),
        };
        self.engine
            .handle_command(self.now, Command::Create { id: ID, spec })
            .unwrap();
    }

    /// Creates the download and starts it for the whole file.
    fn start_whole(&mut self, content_id: Option<ContentId>) {
        self.create(content_id);
        self.command(Command::Start {
            id: ID,
            ranges: None,
        })
        .unwrap();
    }

    fn command(&mut self, command: Command) -> Result<(), CommandError> {
        let r = self.engine.handle_command(self.now, command);
        self.collect();
        r
    }

    fn input(&mut self, input: Input) {
        self.engine.handle_input(self.now, input);
        self.collect();
    }

    /// A peer of `class` comes and says it holds `blocks` of the download.
    fn add_peer(&mut self, peer: u64, class: PeerClass, blocks: RangeSet) {
        self.input(Input::PeerAdded {
            peer: PeerId(peer),
            class,
        });
        self.input(Input::PeerHas {
            id: ID,
            peer: PeerId(peer),
            blocks,
        });
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
        }
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            self.pending.push(a);
        }
        while let Some(e) = self.engine.poll_event() {
            self.events.push(e);
        }
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.pending)
    }

    fn status(&self) -> Status {
        self.engine.status(ID).unwrap()
    }

    /// Answers the pending stat.
    fn answer_stat(&mut self, result: Result<FileInfo, Failure>) {
        let actions = self.take();
        let [Action::Stat { request, .. }] = actions.as_slice() else {
            panic!("expected one stat, got {actions:?}")
        };
        self.input(Input::Stat {
            request: *request,
            result,
        });
    }

    /// Completes every pending fetch (in the order given by `order`), returning the blocks
    /// delivered; answers an Assemble with `root`.
    fn serve_all(&mut self, root: Result<Option<ContentId>, Failure>) -> Vec<u64> {
        let mut delivered = Vec::new();
        loop {
            let actions = self.take();
            if actions.is_empty() {
                return delivered;
            }
            for action in actions {
                match action {
                    Action::Fetch { request, range, .. } => {
                        for b in range.blocks() {
                            delivered.push(b);
                            self.input(Input::Block {
                                request,
                                block: BlockIndex(b),
                            });
                        }
                        self.input(Input::FetchEnded {
                            request,
                            result: Ok(()),
                        });
                    }
                    Action::Assemble { request, .. } => self.input(Input::Assembled {
                        request,
                        result: root,
                    }),
                    Action::Cancel { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}

fn info(len: u64) -> FileInfo {
    FileInfo {
        len,
        accepts_ranges: true,
        cached: RangeSet::new(),
        content_id: None,
    }
}

fn root() -> ContentId {
    ContentId::of(b"file")
}

#[test]
fn whole_file_download_goes_created_transferring_transferred_finalized() {
    let mut h = Harness::new(Config::default());
    h.create(None);
    assert_eq!(h.status().state, State::Created);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
    assert_eq!(h.status().state, State::Transferring);
    let len = 100 * BLOCK_SIZE + 5;
    h.answer_stat(Ok(info(len)));
    let fetches = h
        .pending
        .iter()
        .filter(|a| matches!(a, Action::Fetch { .. }))
        .count();
    assert_eq!(fetches, 4, "one request per origin connection");
    let mut delivered = h.serve_all(Ok(Some(root())));
    delivered.sort();
    assert_eq!(
        delivered,
        (0..101).collect::<Vec<_>>(),
        "each block fetched exactly once"
    );
    let s = h.status();
    assert_eq!(
        (s.state, s.bytes_total, s.bytes_transferred),
        (State::Transferred, len, len)
    );
    assert_eq!(
        h.command(Command::Start {
            id: ID,
            ranges: None
        }),
        Err(CommandError::InvalidState(State::Transferred))
    );
    h.command(Command::Finalize { id: ID }).unwrap();
    assert_eq!(h.status().state, State::Finalized);
    assert_eq!(
        h.command(Command::Abort { id: ID }),
        Err(CommandError::InvalidState(State::Finalized))
    );
    assert!(h.engine.remove(ID));
}

#[test]
fn cached_blocks_are_not_fetched_again() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    let cached: RangeSet = [0..30, 50..60].into_iter().collect();
    h.answer_stat(Ok(FileInfo {
        len: 64 * BLOCK_SIZE,
        accepts_ranges: true,
        cached,
        content_id: None,
    }));
    assert_eq!(h.status().bytes_transferred, 40 * BLOCK_SIZE);
    let mut delivered = h.serve_all(Ok(Some(root())));
    delivered.sort();
    assert_eq!(delivered, (30..50).chain(60..64).collect::<Vec<_>>());
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn a_fatal_origin_error_pauses_with_the_error_and_stops() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.answer_stat(Err(Failure::Fatal(0x8019_0194)));
    let s = h.status();
    assert_eq!((s.state, s.error), (State::Paused, 0x8019_0194));
    h.advance(Duration::from_secs(600));
    assert!(h.take().is_empty(), "no retries after a fatal error");
    assert_eq!(
        h.status().error,
        0x8019_0194,
        "no-progress timeout does not overwrite it"
    );
}

#[test]
fn transient_errors_pause_with_extended_error_then_retry_with_backoff() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.answer_stat(Err(Failure::Transient(0x8019_01F7)));
    let s = h.status();
    assert_eq!(
        (s.state, s.error, s.extended_error),
        (State::Paused, 0, 0x8019_01F7)
    );
    assert!(h.take().is_empty(), "waits before retrying");
    h.advance(Duration::from_millis(600));
    h.answer_stat(Err(Failure::Transient(0x8019_01F7)));
    h.advance(Duration::from_millis(400));
    assert!(
        h.pending.is_empty(),
        "second delay is longer (backoff doubles)"
    );
    h.advance(Duration::from_millis(700));
    h.answer_stat(Ok(info(3 * BLOCK_SIZE)));
    h.serve_all(Ok(Some(root())));
    let s = h.status();
    assert_eq!(
        (s.state, s.error, s.extended_error),
        (State::Transferred, 0, 0)
    );
}

#[test]
fn a_dropped_connection_refetches_only_what_it_still_owed() {
    let mut h = Harness::new(Config {
        origin_connections: 1,
        ..Config::default()
    });
    h.start_whole(None);
    h.answer_stat(Ok(info(40 * BLOCK_SIZE)));
    let [Action::Fetch { request, range, .. }] = h.take()[..] else {
        panic!()
    };
    assert_eq!(range, ByteRange::new(0, 40 * BLOCK_SIZE));
    for b in 0..10 {
        h.input(Input::Block {
            request,
            block: BlockIndex(b),
        });
    }
    h.input(Input::FetchEnded {
        request,
        result: Err(Failure::Transient(0x8007_2EFE)),
    });
    assert_eq!(h.status().state, State::Paused);
    h.advance(Duration::from_secs(1));
    let actions = h.take();
    let [Action::Fetch { range, .. }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(*range, ByteRange::new(10 * BLOCK_SIZE, 40 * BLOCK_SIZE));
    h.pending = actions;
    h.serve_all(Ok(Some(root())));
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn one_outage_across_parallel_fetches_is_one_failure() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.answer_stat(Ok(info(64 * BLOCK_SIZE)));
    let requests: Vec<RequestId> = h
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::Fetch { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 4);
    for request in requests {
        h.input(Input::FetchEnded {
            request,
            result: Err(Failure::Transient(0x8007_2EFE)),
        });
    }
    // The first backoff (at most 500 ms) applies, not the fourth (up to 4 s).
    h.advance(Duration::from_millis(500));
    assert!(
        h.take().iter().any(|a| matches!(a, Action::Fetch { .. })),
        "retried after the first delay"
    );
}

#[test]
fn no_progress_for_the_timeout_fails_the_download() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.answer_stat(Ok(info(10 * BLOCK_SIZE)));
    let fetches = h.take();
    h.advance(Duration::from_secs(59));
    assert_eq!(h.status().state, State::Transferring);
    h.advance(Duration::from_secs(2));
    let s = h.status();
    assert_eq!(
        (s.state, s.error),
        (State::Paused, hresult::DO_E_DOWNLOAD_NO_PROGRESS)
    );
    let cancels = h
        .take()
        .into_iter()
        .filter(|a| matches!(a, Action::Cancel { .. }))
        .count();
    assert_eq!(cancels, fetches.len());
}

#[test]
fn pause_cancels_and_resume_continues_where_it_stopped() {
    let mut h = Harness::new(Config {
        origin_connections: 1,
        ..Config::default()
    });
    h.start_whole(None);
    h.answer_stat(Ok(info(20 * BLOCK_SIZE)));
    let [Action::Fetch { request, .. }] = h.take()[..] else {
        panic!()
    };
    for b in 0..5 {
        h.input(Input::Block {
            request,
            block: BlockIndex(b),
        });
    }
    h.command(Command::Pause { id: ID }).unwrap();
    assert_eq!(h.take(), vec![Action::Cancel { request }]);
    // A late block from the cancelled request is ignored.
    h.input(Input::Block {
        request,
        block: BlockIndex(5),
    });
    assert_eq!(h.status().bytes_transferred, 5 * BLOCK_SIZE);
    h.advance(Duration::from_secs(3600));
    assert_eq!(
        h.status().state,
        State::Paused,
        "no timeout while paused by the caller"
    );
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
    let actions = h.take();
    let [Action::Fetch { range, .. }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(range.start, 5 * BLOCK_SIZE);
    h.pending = actions;
    h.serve_all(Ok(Some(root())));
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn ranges_fetch_only_their_blocks_and_count_only_their_bytes() {
    let mut h = Harness::new(Config::default());
    h.create(None);
    let ranges = vec![
        ByteRange::new(10, 20),
        ByteRange::from_offset_len(5 * BLOCK_SIZE + 1, u64::MAX),
    ];
    h.command(Command::Start {
        id: ID,
        ranges: Some(ranges),
    })
    .unwrap();
    h.answer_stat(Ok(info(7 * BLOCK_SIZE)));
    let s = h.status();
    assert_eq!(s.bytes_total, 10 + 2 * BLOCK_SIZE - 1);
    let mut delivered = h.serve_all(Ok(Some(root())));
    delivered.sort();
    assert_eq!(delivered, vec![0, 5, 6]);
    let s = h.status();
    assert_eq!(
        (s.state, s.bytes_transferred),
        (State::Transferred, s.bytes_total)
    );
}

#[test]
fn bad_ranges_are_rejected() {
    let mut h = Harness::new(Config::default());
    h.create(None);
    let start = |h: &mut Harness, r: Vec<ByteRange>| {
        h.command(Command::Start {
            id: ID,
            ranges: Some(r),
        })
    };
    assert_eq!(start(&mut h, vec![]), Err(CommandError::InvalidRange));
    assert_eq!(
        start(&mut h, vec![ByteRange::new(5, 5)]),
        Err(CommandError::InvalidRange)
    );
    assert_eq!(
        start(&mut h, vec![ByteRange::new(0, 10), ByteRange::new(5, 15)]),
        Err(CommandError::OverlappingRanges)
    );
    assert_eq!(
        h.status().state,
        State::Created,
        "a rejected start changes nothing"
    );
    start(&mut h, vec![ByteRange::new(100, 200)]).unwrap();
    h.answer_stat(Ok(info(150)));
    let s = h.status();
    assert_eq!(
        (s.state, s.error),
        (State::Paused, hresult::DO_E_INVALID_RANGE)
    );
}

#[test]
fn a_changed_origin_file_restarts_then_fails_after_too_many_changes() {
    let mut h = Harness::new(Config {
        max_restarts: 1,
        ..Config::default()
    });
    h.start_whole(None);
    h.answer_stat(Ok(info(40 * BLOCK_SIZE)));
    let Some(Action::Fetch { request, .. }) = h.take().into_iter().next() else {
        panic!()
    };
    h.input(Input::Block {
        request,
        block: BlockIndex(0),
    });
    h.input(Input::FetchEnded {
        request,
        result: Err(Failure::ContentChanged),
    });
    let actions = h.take();
    assert!(actions.contains(&Action::Restart { id: ID }));
    assert!(
        actions.iter().any(|a| matches!(a, Action::Stat { .. })),
        "{actions:?}"
    );
    assert_eq!(h.status().bytes_transferred, 0);
    h.pending = actions
        .into_iter()
        .filter(|a| matches!(a, Action::Stat { .. }))
        .collect();
    h.answer_stat(Ok(info(40 * BLOCK_SIZE)));
    let Some(Action::Fetch { request, .. }) = h.take().into_iter().next() else {
        panic!()
    };
    h.input(Input::FetchEnded {
        request,
        result: Err(Failure::ContentChanged),
    });
    let s = h.status();
    assert_eq!(
        (s.state, s.error),
        (State::Paused, hresult::HTTP_E_STATUS_PRECOND_FAILED)
    );
}

#[test]
fn an_origin_without_ranges_gets_one_whole_file_request() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.answer_stat(Ok(info(40 * BLOCK_SIZE)));
    let requests: Vec<RequestId> = h
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::Fetch { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    h.input(Input::FetchEnded {
        request: requests[0],
        result: Err(Failure::RangeNotSupported),
    });
    let actions = h.take();
    let whole: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Fetch { whole: true, .. }))
        .collect();
    assert_eq!(whole.len(), 1, "{actions:?}");
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Cancel { .. }))
            .count(),
        requests.len() - 1
    );
    h.pending = actions
        .into_iter()
        .filter(|a| matches!(a, Action::Fetch { .. }))
        .collect();
    h.serve_all(Ok(Some(root())));
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn a_content_id_mismatch_at_assembly_is_fatal() {
    let mut h = Harness::new(Config::default());
    h.start_whole(Some(root()));
    h.answer_stat(Ok(info(3)));
    h.serve_all(Err(Failure::Integrity));
    let s = h.status();
    assert_eq!(
        (s.state, s.error),
        (State::Paused, hresult::DO_E_BAD_PIECE_HASH_NO_BAN)
    );
}

#[test]
fn an_empty_file_completes() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.answer_stat(Ok(info(0)));
    h.serve_all(Ok(Some(ContentId::of(&[]))));
    assert_eq!(h.status().state, State::Transferred);
}

/// Starts a download of `blocks` blocks with a trusted manifest and the given peers (all LAN
/// unless said) holding the given blocks; returns the harness with the first actions pending.
fn with_peers(config: Config, blocks: u64, peers: &[(u64, PeerClass, RangeSet)]) -> Harness {
    let mut h = Harness::new(config);
    h.start_whole(Some(root()));
    for (p, class, _) in peers {
        h.input(Input::PeerAdded {
            peer: PeerId(*p),
            class: *class,
        });
    }
    for (p, _, have) in peers {
        h.input(Input::PeerHas {
            id: ID,
            peer: PeerId(*p),
            blocks: have.clone(),
        });
    }
    h.input(Input::ManifestTrusted {
        id: ID,
        refuted: RangeSet::new(),
        lost: RangeSet::new(),
    });
    h.answer_stat(Ok(info(blocks * BLOCK_SIZE)));
    h
}

/// Like [`with_peers`], but no manifest is trusted yet (the content id is).
fn with_peers_untrusted(blocks: u64, peers: &[(u64, PeerClass, RangeSet)]) -> Harness {
    let mut h = Harness::new(Config::default());
    h.start_whole(Some(root()));
    for (p, class, have) in peers {
        h.add_peer(*p, *class, have.clone());
    }
    h.answer_stat(Ok(info(blocks * BLOCK_SIZE)));
    h
}

fn all(blocks: u64) -> RangeSet {
    std::iter::once(0..blocks).collect()
}

/// Answers every pending action: peer requests and origin fetches deliver their blocks (a
/// peer in `corrupt` sends a bad first block), assembly succeeds. Returns blocks by source
/// (`None` for the origin).
fn serve_sources(h: &mut Harness, corrupt: &[u64]) -> BTreeMap<Option<u64>, Vec<u64>> {
    serve(h, corrupt, false)
}

/// Like [`serve_sources`] before the manifest is trusted: peers' blocks arrive unchecked
/// (`Input::BlockUnchecked`), the origin's as usual, and nothing may be assembled.
fn serve_unchecked(h: &mut Harness) -> BTreeMap<Option<u64>, Vec<u64>> {
    serve(h, &[], true)
}

fn serve(h: &mut Harness, corrupt: &[u64], unchecked: bool) -> BTreeMap<Option<u64>, Vec<u64>> {
    let mut got: BTreeMap<Option<u64>, Vec<u64>> = BTreeMap::new();
    for _ in 0..10_000 {
        let actions = h.take();
        if actions.is_empty() {
            return got;
        }
        for action in actions {
            match action {
                Action::RequestBlocks {
                    request,
                    peer,
                    blocks,
                    ..
                } => {
                    if corrupt.contains(&peer.0) {
                        h.input(Input::BlockCorrupt {
                            request,
                            block: BlockIndex(blocks.start),
                        });
                        continue;
                    }
                    for b in blocks {
                        got.entry(Some(peer.0)).or_default().push(b);
                        let block = BlockIndex(b);
                        h.input(if unchecked {
                            Input::BlockUnchecked { request, block }
                        } else {
                            Input::Block { request, block }
                        });
                    }
                    h.input(Input::FetchEnded {
                        request,
                        result: Ok(()),
                    });
                }
                Action::Fetch { request, range, .. } => {
                    for b in range.blocks() {
                        got.entry(None).or_default().push(b);
                        h.input(Input::Block {
                            request,
                            block: BlockIndex(b),
                        });
                    }
                    h.input(Input::FetchEnded {
                        request,
                        result: Ok(()),
                    });
                }
                Action::Assemble { .. } if unchecked => {
                    panic!("assembled before the manifest was trusted")
                }
                Action::Assemble { request, .. } => h.input(Input::Assembled {
                    request,
                    result: Ok(Some(root())),
                }),
                Action::Cancel { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    panic!("did not settle");
}

#[test]
fn peers_that_hold_everything_leave_the_origin_idle() {
    let mut h = with_peers(
        Config::default(),
        100,
        &[(1, PeerClass::Lan, all(100)), (2, PeerClass::Lan, all(100))],
    );
    let got = serve_sources(&mut h, &[]);
    assert!(
        !got.contains_key(&None),
        "nothing from the origin: {:?}",
        got.keys()
    );
    let mut blocks: Vec<u64> = got.values().flatten().copied().collect();
    blocks.sort();
    assert_eq!(blocks, (0..100).collect::<Vec<_>>(), "each block once");
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn the_origin_fetches_only_what_no_peer_holds() {
    let half: RangeSet = std::iter::once(0..50).collect();
    let mut h = with_peers(Config::default(), 100, &[(1, PeerClass::Lan, half)]);
    let got = serve_sources(&mut h, &[]);
    let mut origin = got[&None].clone();
    origin.sort();
    assert_eq!(origin, (50..100).collect::<Vec<_>>());
    assert_eq!(got[&Some(1)].len(), 50);
}

#[test]
fn without_a_trusted_manifest_peers_are_not_asked() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.add_peer(1, PeerClass::Lan, all(20));
    h.answer_stat(Ok(info(20 * BLOCK_SIZE)));
    let got = serve_sources(&mut h, &[]);
    assert_eq!(got.keys().collect::<Vec<_>>(), vec![&None], "origin only");
}

#[test]
fn a_peer_sending_a_bad_block_is_banned_and_never_asked_again() {
    let mut h = with_peers(
        Config::default(),
        64,
        &[(1, PeerClass::Lan, all(64)), (2, PeerClass::Lan, all(64))],
    );
    let got = serve_sources(&mut h, &[1]);
    assert!(
        !got.contains_key(&Some(1)),
        "no block of the bad peer was used"
    );
    assert_eq!(h.status().state, State::Transferred);
    // Re-announcing the banned peer changes nothing.
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: all(64),
    });
    assert!(h.take().is_empty());
    assert!(h.events.contains(&Event::PeerBanned { peer: PeerId(1) }));
}

#[test]
fn lan_peers_are_asked_before_internet_peers() {
    let config = Config {
        peer_slots: 1,
        ..Config::default()
    };
    let h = with_peers(
        config,
        64,
        &[
            (9, PeerClass::Internet, all(64)),
            (5, PeerClass::Lan, all(64)),
        ],
    );
    let first = h.pending.iter().find_map(|a| match a {
        Action::RequestBlocks { peer, .. } => Some(*peer),
        _ => None,
    });
    assert_eq!(first, Some(PeerId(5)));
}

#[test]
fn a_block_a_lan_peer_holds_never_crosses_to_an_internet_peer() {
    // One request slot at the LAN peer: the Internet peer, idle, gets only what the LAN
    // peer lacks (blocks 48..64), even while the LAN peer works through the rest alone.
    let config = Config {
        peer_slots: 1,
        ..Config::default()
    };
    let lan: RangeSet = std::iter::once(0..48).collect();
    let mut h = with_peers(
        config,
        64,
        &[(9, PeerClass::Internet, all(64)), (5, PeerClass::Lan, lan)],
    );
    let got = serve_sources(&mut h, &[]);
    assert_eq!(got.get(&Some(5)).map(Vec::len), Some(48), "{got:?}");
    let mut far = got.get(&Some(9)).cloned().unwrap_or_default();
    far.sort();
    assert_eq!(far, (48..64).collect::<Vec<_>>());
    assert!(!got.contains_key(&None));
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn the_rarest_blocks_are_asked_first() {
    let config = Config {
        peer_slots: 1,
        peer_request_blocks: 1,
        ..Config::default()
    };
    // Peer 1 holds everything, peer 2 only blocks 0..30: blocks 30..40 are rarest.
    let some: RangeSet = std::iter::once(0..30).collect();
    let h = with_peers(
        config,
        40,
        &[(1, PeerClass::Lan, all(40)), (2, PeerClass::Lan, some)],
    );
    let asked_of_1 = h.pending.iter().find_map(|a| match a {
        Action::RequestBlocks {
            peer: PeerId(1),
            blocks,
            ..
        } => Some(blocks.start),
        _ => None,
    });
    assert!(
        asked_of_1.is_some_and(|b| b >= 30),
        "peer 1 gets a block only it holds: {asked_of_1:?}"
    );
}

#[test]
fn a_stalled_peer_request_is_cancelled_and_its_blocks_fetched_elsewhere() {
    let mut h = with_peers(Config::default(), 16, &[(1, PeerClass::Lan, all(16))]);
    let requests: Vec<RequestId> = h
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::RequestBlocks { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    assert!(!requests.is_empty());
    h.advance(Duration::from_secs(11));
    let actions = h.take();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Cancel { .. })),
        "{actions:?}"
    );
    h.pending = actions;
    let got = serve_sources(&mut h, &[]);
    assert_eq!(got[&None].len(), 16, "the origin takes over");
    assert_eq!(h.status().state, State::Transferred);
}

/// The peer requests among `actions`: (request, peer, blocks).
fn peer_requests(actions: &[Action]) -> Vec<(RequestId, u64, std::ops::Range<u64>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RequestBlocks {
                request,
                peer,
                blocks,
                ..
            } => Some((*request, peer.0, blocks.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn endgame_asks_a_slow_request_once_of_another_peer_and_cancels_the_loser() {
    // Slots enough for one peer to be asked for the whole file.
    let config = Config {
        peer_slots: 16,
        ..Config::default()
    };
    let mut h = with_peers(config, 16, &[(1, PeerClass::Lan, all(16))]);
    let slow = peer_requests(&h.take());
    assert!(!slow.is_empty());
    // A second holder comes: every block is asked for already, so nothing goes to it yet.
    h.input(Input::PeerAdded {
        peer: PeerId(2),
        class: PeerClass::Lan,
    });
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(2),
        blocks: all(16),
    });
    assert!(peer_requests(&h.take()).is_empty());
    // Before `endgame_after`, nothing is asked twice.
    h.advance(Duration::from_millis(1_500));
    assert!(peer_requests(&h.take()).is_empty());
    h.advance(Duration::from_millis(600));
    let copies = peer_requests(&h.take());
    assert_eq!(
        copies.len(),
        slow.len(),
        "one copy each: {slow:?} then {copies:?}"
    );
    for ((_, _, blocks), (_, peer, copied)) in slow.iter().zip(&copies) {
        assert_eq!(*peer, 2, "the copy goes to the other holder");
        assert_eq!(copied, blocks);
    }
    // A copy is made once: later passes make no third request.
    h.advance(Duration::from_secs(3));
    assert!(peer_requests(&h.take()).is_empty());
    // The copies answer first: the slow requests are cancelled, the download completes.
    let mut cancels = Vec::new();
    for (copy, _, blocks) in &copies {
        for b in blocks.clone() {
            h.input(Input::Block {
                request: *copy,
                block: BlockIndex(b),
            });
        }
        cancels.extend(h.take());
        h.input(Input::FetchEnded {
            request: *copy,
            result: Ok(()),
        });
    }
    for (request, _, _) in &slow {
        assert!(
            cancels.contains(&Action::Cancel { request: *request }),
            "{request:?} is cancelled: {cancels:?}"
        );
    }
    let got = serve_sources(&mut h, &[]);
    assert!(got.is_empty(), "nothing asked again: {got:?}");
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn endgame_sends_no_copy_when_no_other_peer_holds_the_blocks() {
    let mut h = with_peers(
        Config::default(),
        16,
        &[(1, PeerClass::Lan, all(16)), (2, PeerClass::Lan, all(8))],
    );
    let first = peer_requests(&h.take());
    assert!(first.iter().any(|(_, _, b)| b.end > 8), "{first:?}");
    h.advance(Duration::from_secs(3));
    let copies = peer_requests(&h.take());
    // Every request has a copy but those of blocks 8..16, which peer 2 lacks.
    let copied = first
        .iter()
        .filter(|(_, p, b)| *p == 2 || b.end <= 8)
        .count();
    assert_eq!(copies.len(), copied, "{first:?} then {copies:?}");
    for (_, peer, blocks) in &copies {
        assert!(*peer == 1 || blocks.end <= 8, "{copies:?}");
    }
}

/// 40 peers hold a 2,048-block file and answer at `peer_rate` blocks a second, the origin at
/// `origin_rate`, for `seconds`; returns the origin fetches asked meanwhile (their spans),
/// and the seconds the origin was topping the peers up.
fn slow_peers(
    config: Config,
    peer_rate: u64,
    origin_rate: u64,
    seconds: u64,
) -> (Vec<std::ops::Range<u64>>, u64) {
    let config = Config {
        // Slow, not stalled: every request keeps delivering.
        peer_stall_timeout: Duration::from_secs(600),
        ..config
    };
    let peers: Vec<(u64, PeerClass, RangeSet)> =
        (1..=40).map(|p| (p, PeerClass::Lan, all(2048))).collect();
    let mut h = with_peers(config, 2048, &peers);
    let mut from_peers: Vec<(RequestId, std::ops::Range<u64>)> = Vec::new();
    let mut from_origin: Vec<(RequestId, std::ops::Range<u64>)> = Vec::new();
    let mut asked = Vec::new();
    let mut topping_up = 0;
    for _ in 0..seconds {
        topping_up += u64::from(h.engine.downloads[&ID].below_qos);
        for action in h.take() {
            match action {
                Action::RequestBlocks {
                    request, blocks, ..
                } => from_peers.push((request, blocks)),
                Action::Fetch { request, range, .. } => {
                    asked.push(range.blocks());
                    from_origin.push((request, range.blocks()));
                }
                Action::Cancel { request } => {
                    from_origin.retain(|(r, _)| *r != request);
                    from_peers.retain(|(r, _)| *r != request);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for (open, rate) in [
            (&mut from_peers, peer_rate),
            (&mut from_origin, origin_rate),
        ] {
            for _ in 0..rate {
                let Some((request, blocks)) = open.first_mut() else {
                    break;
                };
                let request = *request;
                let block = BlockIndex(blocks.start);
                blocks.start += 1;
                let done = blocks.is_empty();
                if done {
                    open.remove(0);
                }
                h.input(Input::Block { request, block });
                if done {
                    h.input(Input::FetchEnded {
                        request,
                        result: Ok(()),
                    });
                }
            }
        }
        h.advance(Duration::from_secs(1));
    }
    (asked, topping_up)
}

#[test]
fn peers_slower_than_the_minimum_speed_are_topped_up_from_the_origin() {
    let floor = Config {
        min_background_qos: 500_000,
        ..Config::default()
    };
    // Peers bring 2 blocks (128 KiB) a second, below the 500 KB/s floor: after the first
    // 10 s window the origin is asked too, in 1 MiB spans.
    let (origin, _) = slow_peers(floor.clone(), 2, 64, 15);
    assert!(!origin.is_empty(), "the origin tops up");
    assert!(origin.iter().all(|r| r.end - r.start <= 16), "{origin:?}");
    // Without the floor (the default), the peers hold everything and the origin stays idle.
    assert!(slow_peers(Config::default(), 2, 64, 15).0.is_empty());
    // Peers fast enough (16 blocks, 1 MiB, a second) need no top-up.
    assert!(slow_peers(floor, 16, 64, 25).0.is_empty());
}

#[test]
fn a_top_up_the_origin_cannot_speed_up_pauses() {
    let floor = Config {
        min_background_qos: 500_000,
        ..Config::default()
    };
    // An origin as slow as the peers (it shares their bottleneck): tried, then left alone
    // for longer and longer.
    let (asked, topping_up) = slow_peers(floor, 2, 2, 300);
    assert!(!asked.is_empty(), "the origin is tried");
    assert!(
        (10..100).contains(&topping_up),
        "topping up {topping_up} s of 300"
    );
}

#[test]
fn requests_to_many_peers_are_capped_and_spread_one_per_peer() {
    // 40 peers hold the whole file: a download keeps 16 requests in flight, each at another
    // peer, so that a crowd does not pile up in a few servers' queues.
    let peers: Vec<(u64, PeerClass, RangeSet)> =
        (1..=40).map(|p| (p, PeerClass::Lan, all(1024))).collect();
    let mut h = with_peers(Config::default(), 1024, &peers);
    let asked: Vec<u64> = h
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::RequestBlocks { peer, .. } => Some(peer.0),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 16, "{asked:?}");
    let distinct: BTreeSet<u64> = asked.iter().copied().collect();
    assert_eq!(distinct.len(), 16, "one request per peer: {asked:?}");
}

#[test]
fn a_peer_with_a_request_limit_is_asked_no_more_blocks_at_once() {
    // Two LAN peers hold the whole file; peer 2 speaks the block protocol's first version (at
    // most 16 blocks per request), peer 1 the current one.
    let mut h = Harness::new(Config::default());
    h.start_whole(Some(root()));
    for p in [1, 2] {
        h.input(Input::PeerAdded {
            peer: PeerId(p),
            class: PeerClass::Lan,
        });
    }
    h.input(Input::PeerRequestLimit {
        peer: PeerId(2),
        blocks: 16,
    });
    for p in [1, 2] {
        h.input(Input::PeerHas {
            id: ID,
            peer: PeerId(p),
            blocks: all(1024),
        });
    }
    h.input(Input::ManifestTrusted {
        id: ID,
        refuted: RangeSet::new(),
        lost: RangeSet::new(),
    });
    h.answer_stat(Ok(info(1024 * BLOCK_SIZE)));
    let mut largest = [0u64; 3];
    for a in h.take() {
        if let Action::RequestBlocks { peer, blocks, .. } = a {
            let n = blocks.end - blocks.start;
            largest[peer.0 as usize] = largest[peer.0 as usize].max(n);
        }
    }
    assert!(
        (1..=16).contains(&largest[2]),
        "peer 2 asked, at most 16 at once: {largest:?}"
    );
    assert!(largest[1] > 16, "the limit is peer 2's alone: {largest:?}");
}

#[test]
fn lan_requests_are_smaller_while_peers_beyond_the_lan_are_known() {
    // The largest request to LAN peer 1, alone and with a group peer beside it.
    let largest_to_lan = |peers: &[(u64, PeerClass, RangeSet)]| {
        let mut h = with_peers(Config::default(), 1024, peers);
        h.take()
            .into_iter()
            .filter_map(|a| match a {
                Action::RequestBlocks {
                    peer: PeerId(1),
                    blocks,
                    ..
                } => Some(blocks.end - blocks.start),
                _ => None,
            })
            .max()
    };
    let config = Config::default();
    let lan = (1, PeerClass::Lan, all(1024));
    assert_eq!(
        largest_to_lan(std::slice::from_ref(&lan)),
        Some(config.peer_request_blocks)
    );
    let group = (2, PeerClass::Group, all(1024));
    assert_eq!(
        largest_to_lan(&[lan, group]),
        Some(config.mixed_request_blocks)
    );
}

/// `blocks` in increasing order.
fn sorted(blocks: &[u64]) -> Vec<u64> {
    let mut v = blocks.to_vec();
    v.sort_unstable();
    v
}

/// A download of 100 blocks whose LAN peer 1 holds 0..50 and whose peer `near_peer` (of
/// class `class`) says its own peers hold 50..80.
fn with_near(class: PeerClass) -> Harness {
    let mut h = Harness::new(Config::default());
    h.start_whole(Some(root()));
    h.input(Input::PeerAdded {
        peer: PeerId(1),
        class: PeerClass::Lan,
    });
    h.input(Input::PeerAdded {
        peer: PeerId(2),
        class,
    });
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: std::iter::once(0..50).collect(),
    });
    h.input(Input::PeerNear {
        id: ID,
        peer: PeerId(2),
        blocks: BlockBits::from_set(&std::iter::once(50..80).collect()),
    });
    h.input(Input::ManifestTrusted {
        id: ID,
        refuted: RangeSet::new(),
        lost: RangeSet::new(),
    });
    h.answer_stat(Ok(info(100 * BLOCK_SIZE)));
    h
}

#[test]
fn blocks_the_peers_peers_hold_are_left_to_them_while_peers_bring_blocks() {
    let mut h = with_near(PeerClass::Lan);
    let got = serve_sources(&mut h, &[]);
    assert_eq!(sorted(&got[&Some(1)]), (0..50).collect::<Vec<_>>());
    assert_eq!(
        sorted(&got[&None]),
        (80..100).collect::<Vec<_>>(),
        "not near"
    );
    // Peers bring nothing more: the wait ends `near_wait` after the last block they brought,
    // a timer, and the origin takes the rest.
    let wait = Config::default().near_wait;
    assert_eq!(h.engine.poll_timeout(), Some(h.now + wait));
    h.advance(wait - Duration::from_millis(1));
    assert!(h.take().is_empty(), "nothing before the wait is over");
    h.advance(Duration::from_millis(1));
    let got = serve_sources(&mut h, &[]);
    assert_eq!(sorted(&got[&None]), (50..80).collect::<Vec<_>>());
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn what_a_peer_no_longer_offers_or_a_peer_gone_does_not_keep_the_origin_waiting() {
    // Peer 2 says again what comes through it, without 50..60 (its peer that held them went):
    // those come from the origin at once. Then peer 2 goes: the rest too.
    let mut h = with_near(PeerClass::Lan);
    h.input(Input::PeerNear {
        id: ID,
        peer: PeerId(2),
        blocks: BlockBits::from_set(&std::iter::once(60..80).collect()),
    });
    let origin: BTreeSet<u64> = h
        .pending
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { range, .. } => Some(range.blocks()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(origin.contains(&50) && !origin.contains(&60), "{origin:?}");
    h.input(Input::PeerRemoved { peer: PeerId(2) });
    let got = serve_sources(&mut h, &[]);
    assert!(got[&None].contains(&70), "{got:?}");
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn what_comes_through_a_peer_beyond_the_lan_keeps_the_origin_waiting_too() {
    // In Group mode the file is to cross the sites' links once, not to leave the origin again.
    let mut h = with_near(PeerClass::Internet);
    let got = serve_sources(&mut h, &[]);
    assert_eq!(sorted(&got[&None]), (80..100).collect::<Vec<_>>());
    h.advance(Config::default().near_wait);
    let got = serve_sources(&mut h, &[]);
    assert_eq!(sorted(&got[&None]), (50..80).collect::<Vec<_>>());
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn a_node_tells_what_its_peers_hold() {
    let mut h = with_peers(
        Config::default(),
        100,
        &[
            (1, PeerClass::Lan, std::iter::once(0..10).collect()),
            (2, PeerClass::Lan, [(5..20), (40..50)].into_iter().collect()),
            (3, PeerClass::Internet, std::iter::once(60..70).collect()),
        ],
    );
    // On the LAN and beyond: what can come through this node.
    let told = h.engine.held_by_peers(ID).to_set();
    assert_eq!(
        told,
        [(0..20), (40..50), (60..70)]
            .into_iter()
            .collect::<RangeSet>()
    );
    // A peer that goes is no longer counted.
    h.input(Input::PeerRemoved { peer: PeerId(2) });
    h.input(Input::PeerRemoved { peer: PeerId(3) });
    assert_eq!(
        h.engine.held_by_peers(ID).to_set(),
        std::iter::once(0..10).collect()
    );
    assert_eq!(h.engine.held_by_peers(DownloadId(9)).count(), 0);
}

#[test]
fn what_a_node_tells_of_its_peers_follows_their_news() {
    let set = |runs: &[(u64, u64)]| runs.iter().map(|&(a, b)| a..b).collect::<RangeSet>();
    let mut h = with_peers(
        Config::default(),
        100,
        &[
            (1, PeerClass::Lan, set(&[(0, 10)])),
            (2, PeerClass::Internet, set(&[(60, 70)])),
        ],
    );
    assert_eq!(
        h.engine.held_by_peers(ID).to_set(),
        set(&[(0, 10), (60, 70)])
    );
    // What a peer gains is told, on the LAN or beyond.
    for (peer, blocks) in [(1, set(&[(20, 25)])), (2, set(&[(80, 90)]))] {
        h.input(Input::PeerGained {
            id: ID,
            peer: PeerId(peer),
            blocks,
        });
    }
    assert_eq!(
        h.engine.held_by_peers(ID).to_set(),
        set(&[(0, 10), (20, 25), (60, 70), (80, 90)])
    );
    // A peer that now says it holds less: only what it holds now is told.
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: set(&[(5, 10)]),
    });
    assert_eq!(
        h.engine.held_by_peers(ID).to_set(),
        set(&[(5, 10), (60, 70), (80, 90)])
    );
    // A new LAN peer's first report adds to it.
    h.add_peer(3, PeerClass::Lan, set(&[(95, 100)]));
    assert_eq!(
        h.engine.held_by_peers(ID).to_set(),
        set(&[(5, 10), (60, 70), (80, 90), (95, 100)])
    );
}

#[test]
fn a_stalled_peer_stays_dropped_when_it_says_again_what_it_holds() {
    // A peer that answers have-polls but never sends blocks must not hold the download
    // hostage: after one stall its holdings are ignored, and the origin brings its blocks.
    let mut h = with_peers(Config::default(), 16, &[(1, PeerClass::Lan, all(16))]);
    h.take();
    h.advance(Duration::from_secs(11));
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: all(16),
    });
    let actions = h.take();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::RequestBlocks { .. })),
        "the stalled peer was asked again: {actions:?}"
    );
    h.pending = actions;
    let got = serve_sources(&mut h, &[]);
    assert_eq!(got[&None].len(), 16, "the origin takes over");
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn the_origin_waits_for_known_peers_to_answer_but_not_without_a_content_id() {
    let config = Config {
        origin_fallback_delay: Duration::from_secs(5),
        ..Config::default()
    };
    // A peer is known but has not said what it holds yet: the origin waits.
    let mut h = Harness::new(config.clone());
    h.start_whole(Some(root()));
    h.input(Input::PeerAdded {
        peer: PeerId(1),
        class: PeerClass::Lan,
    });
    h.answer_stat(Ok(info(16 * BLOCK_SIZE)));
    assert!(h.take().is_empty(), "no origin fetch during the delay");
    h.advance(Duration::from_secs(5));
    assert!(
        h.take().iter().any(|a| matches!(a, Action::Fetch { .. })),
        "the origin after it"
    );
    // Without a content id, peers cannot help: no delay.
    let mut h = Harness::new(config);
    h.start_whole(None);
    h.input(Input::PeerAdded {
        peer: PeerId(1),
        class: PeerClass::Lan,
    });
    h.answer_stat(Ok(info(16 * BLOCK_SIZE)));
    assert!(h.take().iter().any(|a| matches!(a, Action::Fetch { .. })));
}

#[test]
fn the_origin_waits_out_the_fallback_delay_while_peers_offer_the_file() {
    let config = Config {
        origin_fallback_delay: Duration::from_secs(30),
        ..Config::default()
    };
    let some: RangeSet = std::iter::once(0..8).collect();
    let mut h = with_peers(config, 16, &[(1, PeerClass::Lan, some)]);
    let first = h.take();
    assert!(
        first.iter().all(|a| !matches!(a, Action::Fetch { .. })),
        "no origin yet: {first:?}"
    );
    h.pending = first;
    serve_sources(&mut h, &[]);
    assert_ne!(
        h.status().state,
        State::Transferred,
        "blocks 8..16 wait for the origin"
    );
    h.advance(Duration::from_secs(31));
    let got = serve_sources(&mut h, &[]);
    assert_eq!(got[&None].len(), 8);
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn a_passed_fallback_delay_is_no_longer_a_timer() {
    // Peers known, blocks in flight to them: the next timer must lie ahead, else a driver
    // that sleeps until it would spin.
    for delay in [Duration::ZERO, Duration::from_secs(5)] {
        let config = Config {
            origin_fallback_delay: delay,
            ..Config::default()
        };
        let some: RangeSet = std::iter::once(0..8).collect();
        let mut h = with_peers(config, 16, &[(1, PeerClass::Lan, some)]);
        h.advance(delay + Duration::from_secs(1));
        let next = h
            .engine
            .poll_timeout()
            .expect("peer requests have stall timers");
        assert!(next > h.now, "timer {next:?} not after now {:?}", h.now);
    }
}

/// Origin blocks the pending fetches ask for, answering them all (blocks and end).
fn serve_origin(h: &mut Harness) -> Vec<u64> {
    let mut got = Vec::new();
    for action in h.take() {
        if let Action::Fetch { request, range, .. } = action {
            for b in range.blocks() {
                got.push(b);
                h.input(Input::Block {
                    request,
                    block: BlockIndex(b),
                });
            }
            h.input(Input::FetchEnded {
                request,
                result: Ok(()),
            });
        }
    }
    got.sort_unstable();
    got
}

/// Serves origin fetches until none is left; returns the blocks served, in order.
fn serve_origin_all(h: &mut Harness) -> Vec<u64> {
    let mut all = Vec::new();
    loop {
        let got = serve_origin(h);
        if got.is_empty() {
            all.sort_unstable();
            return all;
        }
        all.extend(got);
    }
}

/// Blocks in the co-fetching tests' file (128 MiB).
const SPLIT_BLOCKS: u64 = 2048;

/// Each member's part of a file of `blocks` blocks split among `members` (by key), as the
/// engine splits it: each block goes to the member with the nearest ring point at or before
/// it (wrapping around).
fn parts(members: &[u64], blocks: u64) -> BTreeMap<u64, RangeSet> {
    let points: Vec<(u64, u64)> = members
        .iter()
        .flat_map(|&k| (0..SPLIT_POINTS).map(move |v| (ring_point(k, v, blocks), k)))
        .collect();
    let mut out: BTreeMap<u64, RangeSet> = members.iter().map(|&k| (k, RangeSet::new())).collect();
    for b in 0..blocks {
        let owner = points
            .iter()
            .filter(|&&(p, _)| p <= b)
            .max()
            .or_else(|| points.iter().max())
            .expect("members")
            .1;
        out.get_mut(&owner).expect("a member").insert(b, b + 1);
    }
    out
}

fn blocks_of(set: &RangeSet) -> Vec<u64> {
    set.iter().collect()
}

/// A node with key 5 and a 1 s fallback delay, its whole-file download started.
fn node_five() -> Harness {
    let config = Config {
        node_key: 5,
        origin_fallback_delay: Duration::from_secs(1),
        ..Config::default()
    };
    let mut h = Harness::new(config);
    h.start_whole(Some(root()));
    h
}

/// A download of [`SPLIT_BLOCKS`] blocks started together with peers 1 (key 1) and 2 (key 9);
/// this node's key is 5. Each of the three has pieces of its own.
fn co_fetching() -> Harness {
    let p = parts(&[1, 5, 9], SPLIT_BLOCKS);
    assert!(p.values().all(|part| !part.is_empty()), "{p:?}");
    let mut h = node_five();
    for (peer, key) in [(1, 1), (2, 9)] {
        h.input(Input::PeerAdded {
            peer: PeerId(peer),
            class: PeerClass::Lan,
        });
        h.input(Input::PeerFetching {
            id: ID,
            peer: PeerId(peer),
            key,
        });
    }
    h.answer_stat(Ok(info(SPLIT_BLOCKS * BLOCK_SIZE)));
    h.advance(Duration::from_secs(1));
    h
}

/// Node five with LAN co-fetchers peers 1 and 2 (keys 1 and 9), which hold nothing yet and
/// say what can come through them (`near`: for peers 1 and 2; `None`, nothing said), and peer
/// 3, beyond the LAN, which holds the whole file: what it gets from whom, with a trusted
/// manifest or (`trusted` false) before one.
fn far_sources(near: [Option<RangeSet>; 2], trusted: bool) -> BTreeMap<Option<u64>, Vec<u64>> {
    let mut h = node_five();
    for (peer, class) in [
        (1, PeerClass::Lan),
        (2, PeerClass::Lan),
        (3, PeerClass::Internet),
    ] {
        h.input(Input::PeerAdded {
            peer: PeerId(peer),
            class,
        });
    }
    for (peer, key) in [(1, 1), (2, 9)] {
        h.input(Input::PeerFetching {
            id: ID,
            peer: PeerId(peer),
            key,
        });
    }
    for (peer, near) in [1, 2].into_iter().zip(near) {
        if let Some(blocks) = near {
            h.input(Input::PeerNear {
                id: ID,
                peer: PeerId(peer),
                blocks: BlockBits::from_set(&blocks),
            });
        }
    }
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(3),
        blocks: all(SPLIT_BLOCKS),
    });
    if !trusted {
        h.answer_stat(Ok(info(SPLIT_BLOCKS * BLOCK_SIZE)));
        return serve_unchecked(&mut h);
    }
    h.input(Input::ManifestTrusted {
        id: ID,
        refuted: RangeSet::new(),
        lost: RangeSet::new(),
    });
    h.answer_stat(Ok(info(SPLIT_BLOCKS * BLOCK_SIZE)));
    serve_sources(&mut h, &[])
}

#[test]
fn co_fetchers_on_a_lan_split_what_they_take_from_a_peer_beyond_it() {
    // Both co-fetchers can bring every block across the WAN (peer 3 is their peer too). This
    // node takes from peer 3 its own arcs of the LAN's ring only: the others bring theirs, so
    // each block crosses the WAN once.
    let p = parts(&[1, 5, 9], SPLIT_BLOCKS);
    let got = far_sources([Some(all(SPLIT_BLOCKS)), Some(all(SPLIT_BLOCKS))], true);
    let mut far = got.get(&Some(3)).cloned().unwrap_or_default();
    far.sort_unstable();
    assert_eq!(far, blocks_of(&p[&5]), "{got:?}");
    assert_eq!(got.len(), 1, "nothing from the origin or the LAN: {got:?}");
}

#[test]
fn a_block_a_lan_co_fetcher_cannot_bring_across_goes_to_the_next_that_can() {
    // Peer 2 (key 9) can bring nothing across the WAN: each of its arcs' blocks goes to the
    // member whose point comes next on the ring (peer 1 and this node can bring them all).
    let blocks = SPLIT_BLOCKS;
    let p = parts(&[1, 5, 9], blocks);
    let mut points: Vec<(u64, u64)> = [1u64, 5, 9]
        .iter()
        .flat_map(|&k| (0..SPLIT_POINTS).map(move |v| (ring_point(k, v, blocks), k)))
        .collect();
    points.sort_unstable();
    let next_owner = |b: u64| {
        let at = points
            .iter()
            .rposition(|&(point, _)| point <= b)
            .unwrap_or(points.len() - 1);
        (1..points.len())
            .map(|s| points[(at + s) % points.len()].1)
            .find(|&k| k != 9)
            .expect("another key")
    };
    let mut want = blocks_of(&p[&5]);
    want.extend(p[&9].iter().filter(|&b| next_owner(b) == 5));
    want.sort_unstable();
    assert!(
        want.len() > blocks_of(&p[&5]).len(),
        "some come to this node"
    );
    assert!(want.len() < blocks as usize, "some go to peer 1");
    let got = far_sources([Some(all(blocks)), Some(RangeSet::new())], true);
    let mut far = got.get(&Some(3)).cloned().unwrap_or_default();
    far.sort_unstable();
    assert_eq!(far, want, "{got:?}");
    // Neither co-fetcher said what can come through it: this node brings every block.
    let got = far_sources([None, None], true);
    let mut far = got.get(&Some(3)).cloned().unwrap_or_default();
    far.sort_unstable();
    assert_eq!(far, (0..blocks).collect::<Vec<_>>(), "{got:?}");
    // Before a manifest is trusted, each keeps its own arcs, whoever can bring what.
    let got = far_sources([None, None], false);
    let mut far = got.get(&Some(3)).cloned().unwrap_or_default();
    far.sort_unstable();
    assert_eq!(far, blocks_of(&p[&5]), "{got:?}");
}

#[test]
fn nodes_fetching_a_file_together_split_the_origin_work() {
    let mut h = co_fetching();
    let p = parts(&[1, 5, 9], SPLIT_BLOCKS);
    assert_eq!(
        serve_origin_all(&mut h),
        blocks_of(&p[&5]),
        "its own pieces"
    );
    assert!(h.take().is_empty(), "the others' parts are left to them");
    // The others bring theirs; once the manifest is trusted, the rest comes from them.
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: p[&1].clone(),
    });
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(2),
        blocks: p[&9].clone(),
    });
    // Their parts move before the manifest is trusted, unchecked: not held until it is.
    let got = serve_unchecked(&mut h);
    assert_eq!(
        (got[&Some(1)].len() + got[&Some(2)].len()) as u64,
        p[&1].count() + p[&9].count()
    );
    assert!(!got.contains_key(&None), "nothing more from the origin");
    assert!(
        h.take().is_empty(),
        "nothing asked twice, nothing assembled"
    );
    assert_eq!(h.status().state, State::Transferring);
    h.input(Input::ManifestTrusted {
        id: ID,
        refuted: RangeSet::new(),
        lost: RangeSet::new(),
    });
    let got = serve_sources(&mut h, &[]);
    assert!(got.is_empty(), "nothing fetched again: {:?}", got.keys());
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn co_fetchers_that_peers_report_join_the_split() {
    let mut h = node_five();
    h.input(Input::PeerAdded {
        peer: PeerId(1),
        class: PeerClass::Lan,
    });
    h.input(Input::PeerFetching {
        id: ID,
        peer: PeerId(1),
        key: 1,
    });
    // Peer 1 splits the file with node 7 (its own co-fetcher: 1 hop from it) and node 3 (2
    // hops); this node's own key, 5, and peer 1's are in the report as well, and count once.
    h.input(Input::PeerCoFetchers {
        id: ID,
        peer: PeerId(1),
        keys: vec![(7, 1), (3, 2), (5, 1), (1, 0)],
    });
    h.answer_stat(Ok(info(SPLIT_BLOCKS * BLOCK_SIZE)));
    // Asked by node 9, it tells, of itself (0 hops), its own co-fetcher (1) and node 7 (2;
    // node 3 is 3 hops away: not passed on), whose point comes first after each of node 9's.
    let distance = BTreeMap::from([(1u64, 1u8), (5, 0), (7, 2)]);
    let own_ring: Vec<(u64, u64)> = distance
        .keys()
        .flat_map(|&k| (0..SPLIT_POINTS).map(move |v| (ring_point(k, v, SPLIT_BLOCKS), k)))
        .collect();
    let mut expected: Vec<(u64, u8)> = (0..SPLIT_POINTS)
        .map(|v| {
            let at = (ring_point(9, v, SPLIT_BLOCKS), 9);
            own_ring
                .iter()
                .filter(|&&p| p > at)
                .min()
                .or_else(|| own_ring.iter().min())
                .map(|&(_, k)| (k, distance[&k]))
                .expect("points")
        })
        .collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(h.engine.co_fetchers_for(ID, 9), expected);
    // Nothing moved since: the same split, so the same answer to any asker.
    let version = h.engine.split_version(ID);
    assert!(version.is_some());
    assert_eq!(h.engine.split_version(ID), version);
    assert_eq!(h.engine.split_version(DownloadId(9)), None);
    h.advance(Duration::from_secs(1));
    // The file is split among keys 1, 3, 5 and 7.
    let four = parts(&[1, 3, 5, 7], SPLIT_BLOCKS);
    assert_eq!(serve_origin_all(&mut h), blocks_of(&four[&5]));
    // Peer 1 drops node 3: its arcs go to the points before them, and this node fetches
    // those that are now its own.
    h.input(Input::PeerCoFetchers {
        id: ID,
        peer: PeerId(1),
        keys: vec![(1, 0), (7, 1)],
    });
    // Node 3 was too far to be told of: what this node tells is the same, and so is the
    // version of it, though its own share moved.
    assert_eq!(
        h.engine.split_version(ID),
        version,
        "the same keys are told"
    );
    let three = parts(&[1, 5, 7], SPLIT_BLOCKS);
    let gained = three[&5].difference(&four[&5]);
    assert!(
        !gained.is_empty(),
        "some of node 3's blocks come to this node"
    );
    assert_eq!(serve_origin_all(&mut h), blocks_of(&gained));
    // A key told of comes nearer: what this node tells changes, and its version with it.
    h.input(Input::PeerCoFetchers {
        id: ID,
        peer: PeerId(1),
        keys: vec![(1, 0), (7, 0)],
    });
    assert_ne!(h.engine.split_version(ID), version, "node 7 is nearer now");
}

#[test]
fn blocks_refuted_by_the_manifest_ban_their_sender_and_are_fetched_again() {
    let mut h = co_fetching();
    let p = parts(&[1, 5, 9], SPLIT_BLOCKS);
    serve_origin_all(&mut h);
    for (peer, key) in [(1, 1), (2, 9)] {
        h.input(Input::PeerHas {
            id: ID,
            peer: PeerId(peer),
            blocks: p[&key].clone(),
        });
    }
    let got = serve_unchecked(&mut h);
    assert_eq!(got[&Some(2)].len() as u64, p[&9].count());
    // Two of peer 2's blocks do not match the manifest: blocks of a piece that is this
    // node's once peer 2 is out.
    let two = parts(&[1, 5], SPLIT_BLOCKS);
    let bad = p[&9]
        .intersection(&two[&5])
        .first()
        .expect("a piece of peer 2 that comes to this node");
    h.collect();
    h.input(Input::ManifestTrusted {
        id: ID,
        refuted: std::iter::once(bad..bad + 2).collect(),
        lost: RangeSet::new(),
    });
    h.collect();
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::PeerBanned { peer } if *peer == PeerId(2))),
        "the sender of refuted blocks is banned"
    );
    let got = serve_sources(&mut h, &[]);
    let mut again: Vec<u64> = got.values().flatten().copied().collect();
    again.sort_unstable();
    assert_eq!(again, vec![bad, bad + 1], "only the refuted blocks, again");
    assert!(!got.contains_key(&Some(2)), "never from the banned peer");
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn unchecked_blocks_are_not_held() {
    // Every block arrives unchecked: no assembly until the manifest is trusted, and progress
    // counts only checked bytes.
    let mut h = with_peers_untrusted(16, &[(1, PeerClass::Lan, all(16))]);
    let got = serve_unchecked(&mut h);
    assert_eq!(got[&Some(1)].len(), 16, "{got:?}");
    assert_eq!(h.status().state, State::Transferring);
    assert_eq!(h.status().bytes_transferred, 0);
    h.input(Input::ManifestTrusted {
        id: ID,
        refuted: RangeSet::new(),
        lost: RangeSet::new(),
    });
    assert_eq!(h.status().bytes_transferred, 16 * BLOCK_SIZE);
    let got = serve_sources(&mut h, &[]);
    assert!(got.is_empty());
    assert_eq!(h.status().state, State::Transferred);
}

#[test]
fn a_co_fetcher_that_stops_growing_loses_its_part() {
    let mut h = co_fetching();
    let p = parts(&[1, 5, 9], SPLIT_BLOCKS);
    let two = parts(&[1, 5], SPLIT_BLOCKS);
    serve_origin_all(&mut h);
    // Peer 1 brings its part; peer 2 never brings anything.
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: p[&1].clone(),
    });
    assert_eq!(
        serve_unchecked(&mut h)[&Some(1)].len() as u64,
        p[&1].count(),
        "peer 1's part moves"
    );
    h.advance(Duration::from_secs(5));
    // Peer 1 grows (it holds, say, what is its own once peer 2 is out).
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: two[&1].clone(),
    });
    serve_unchecked(&mut h);
    assert!(h.take().is_empty(), "peer 2 still has time");
    h.advance(Duration::from_secs(6));
    // Peer 2 dropped out: its pieces go to the two others, and this node fetches those that
    // are now its own.
    let gained = two[&5].difference(&p[&5]);
    assert!(
        !gained.is_empty(),
        "some of peer 2's pieces come to this node"
    );
    assert_eq!(serve_origin_all(&mut h), blocks_of(&gained));
    // A co-fetcher that holds its part and stops growing keeps it: peer 1 is not dropped.
    h.advance(Duration::from_secs(20));
    let late = h.take();
    assert!(
        late.is_empty(),
        "peer 1 holds its part; nothing to take over: {late:?}"
    );
}

#[test]
fn a_co_fetcher_left_out_that_grows_again_is_back_in_the_split() {
    let mut h = co_fetching();
    let p = parts(&[1, 5, 9], SPLIT_BLOCKS);
    serve_origin_all(&mut h);
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: p[&1].clone(),
    });
    serve_unchecked(&mut h);
    // Peer 1 (key 1) keeps growing; peer 2 (key 9) brings nothing for the stall timeout and
    // is left out: it is no longer told to peer 1 as the end of its arcs.
    h.advance(Duration::from_secs(5));
    let mut more = p[&1].clone();
    let extra = p[&5].runs().next().expect("a part").start;
    more.insert(extra, extra + 1);
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(1),
        blocks: more,
    });
    h.advance(Duration::from_secs(5));
    let told = |h: &mut Harness| h.engine.co_fetchers_for(ID, 1);
    let keys = told(&mut h);
    assert!(keys.iter().all(|&(k, _)| k != 9), "{keys:?}");
    // Peer 2 grows again, the only co-fetcher that had stalled: it is back in the split.
    h.input(Input::PeerHas {
        id: ID,
        peer: PeerId(2),
        blocks: p[&9].clone(),
    });
    let keys = told(&mut h);
    assert!(keys.iter().any(|&(k, _)| k == 9), "{keys:?}");
}

#[test]
fn while_the_origin_fails_co_fetchers_are_not_cut_out() {
    // The origin fails this node's fetches: its co-fetchers stand still too, so none loses its
    // part (else the whole crowd would ask the origin for everything when it returns), and
    // their stall deadlines are no timers meanwhile.
    let mut h = co_fetching();
    let mine = parts(&[1, 5, 9], SPLIT_BLOCKS)
        .remove(&5)
        .expect("a member");
    let actions = h.take();
    let fetches: Vec<RequestId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { request, .. } => Some(*request),
            _ => None,
        })
        .collect();
    assert!(!fetches.is_empty(), "{actions:?}");
    for request in fetches {
        h.input(Input::FetchEnded {
            request,
            result: Err(Failure::Transient(0x8019_01F7)),
        });
    }
    for _ in 0..6 {
        let next = h.engine.poll_timeout().expect("a retry is due");
        assert!(next > h.now, "a timer in the past");
        h.advance(Duration::from_secs(5));
        for a in h.take() {
            if let Action::Fetch { request, range, .. } = a {
                let blocks = range.blocks();
                assert!(
                    mine.contains_range(blocks.start, blocks.end),
                    "outside this node's part {mine:?}: {range}"
                );
                h.input(Input::FetchEnded {
                    request,
                    result: Err(Failure::Transient(0x8019_01F7)),
                });
            }
        }
    }
}

#[test]
fn an_origin_published_content_id_is_trusted_like_the_callers() {
    let mut h = Harness::new(Config::default());
    h.start_whole(None);
    h.answer_stat(Ok(FileInfo {
        content_id: Some(root()),
        ..info(4 * BLOCK_SIZE)
    }));
    assert_eq!(h.engine.content_id(ID), Some(root()));
    let mut assembled = None;
    for _ in 0..4 {
        for action in h.take() {
            match action {
                Action::Fetch { request, range, .. } => {
                    for b in range.blocks() {
                        h.input(Input::Block {
                            request,
                            block: BlockIndex(b),
                        });
                    }
                    h.input(Input::FetchEnded {
                        request,
                        result: Ok(()),
                    });
                }
                Action::Assemble { content_id, .. } => assembled = Some(content_id),
                _ => {}
            }
        }
    }
    assert_eq!(
        assembled,
        Some(Some(root())),
        "assembly checks the published id"
    );
}

proptest! {
    /// Scheduler invariants: never ask for a held block, never more fetches than connections,
    /// and every needed block arrives, whatever the completion order and cached set.
    #[test]
    fn scheduler_invariants(
        blocks in 1u64..300,
        connections in 1usize..6,
        cached in proptest::collection::vec(0u64..300, 0..40),
        picks in proptest::collection::vec(any::<u16>(), 0..400),
    ) {
        let mut h = Harness::new(Config { origin_connections: connections, min_span_blocks: 4, max_span_blocks: 32, ..Config::default() });
        h.create(None);
        h.command(Command::Start { id: ID, ranges: None }).unwrap();
        let cached: RangeSet = cached.iter().map(|&b| b..b + 1).collect();
        h.answer_stat(Ok(FileInfo { len: blocks * BLOCK_SIZE, accepts_ranges: true, cached: cached.clone(), content_id: None }));
        let mut held: BTreeSet<u64> = cached.iter().filter(|&b| b < blocks).collect();
        let mut open: Vec<(RequestId, Vec<u64>)> = Vec::new();
        let mut picks = picks.into_iter().chain(std::iter::repeat(0));
        for _ in 0..100_000 {
            for a in h.take() {
                match a {
                    Action::Fetch { request, range, .. } => {
                        let bs: Vec<u64> = range.blocks().collect();
                        for b in &bs { prop_assert!(!held.contains(b), "asked again for held block {}", b); }
                        open.push((request, bs));
                    }
                    Action::Assemble { request, .. } => h.input(Input::Assembled { request, result: Ok(Some(root())) }),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert!(open.len() <= connections);
            if open.is_empty() { break; }
            // Deliver one block of a random open fetch.
            let i = picks.next().unwrap() as usize % open.len();
            let request = open[i].0;
            let b = open[i].1.remove(0);
            held.insert(b);
            h.input(Input::Block { request, block: BlockIndex(b) });
            if open[i].1.is_empty() {
                open.remove(i);
                h.input(Input::FetchEnded { request, result: Ok(()) });
            }
        }
        prop_assert_eq!(h.status().state, State::Transferred);
        prop_assert_eq!(held.len() as u64, blocks);
    }

    /// With peers: never ask for a held block, never ask a banned peer, never exceed a peer's
    /// slots, and finish, whatever the holdings, bad peers and completion order.
    #[test]
    fn peer_scheduling_invariants(
        blocks in 1u64..120,
        peers in proptest::collection::vec((0u64..120, 0u64..120, any::<bool>()), 1..5),
        picks in proptest::collection::vec(any::<u16>(), 0..600),
    ) {
        let slots = 2;
        let config = Config { peer_slots: slots, peer_request_blocks: 4, min_span_blocks: 4, max_span_blocks: 16, ..Config::default() };
        let mut h = Harness::new(config);
        h.create(Some(root()));
        h.command(Command::Start { id: ID, ranges: None }).unwrap();
        let mut bad = BTreeSet::new();
        for (i, &(a, b, corrupt)) in peers.iter().enumerate() {
            let peer = PeerId(i as u64);
            h.input(Input::PeerAdded { peer, class: PeerClass::Lan });
            h.input(Input::PeerHas { id: ID, peer, blocks: std::iter::once(a.min(b)..a.max(b) + 1).collect() });
            if corrupt { bad.insert(peer); }
        }
        h.input(Input::ManifestTrusted { id: ID, refuted: RangeSet::new(), lost: RangeSet::new() });
        h.answer_stat(Ok(info(blocks * BLOCK_SIZE)));
        let mut held = BTreeSet::new();
        let mut banned = BTreeSet::new();
        let mut open: Vec<(RequestId, Option<PeerId>, Vec<u64>)> = Vec::new();
        let mut picks = picks.into_iter().chain(std::iter::repeat(0));
        for _ in 0..100_000 {
            for a in h.take() {
                match a {
                    Action::RequestBlocks { request, peer, blocks, .. } => {
                        prop_assert!(!banned.contains(&peer), "asked banned peer {:?}", peer);
                        for b in blocks.clone() { prop_assert!(!held.contains(&b)); }
                        open.push((request, Some(peer), blocks.collect()));
                    }
                    Action::Fetch { request, range, .. } => {
                        for b in range.blocks() { prop_assert!(!held.contains(&b)); }
                        open.push((request, None, range.blocks().collect()));
                    }
                    Action::Cancel { request } => open.retain(|(r, _, _)| *r != request),
                    Action::Assemble { request, .. } => h.input(Input::Assembled { request, result: Ok(Some(root())) }),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            let newly: Vec<PeerId> = h.events.drain(..).filter_map(|e| match e { Event::PeerBanned { peer } => Some(peer), _ => None }).collect();
            banned.extend(newly);
            let mut load: BTreeMap<PeerId, usize> = BTreeMap::new();
            for (_, p, _) in &open { if let Some(p) = p { *load.entry(*p).or_default() += 1; } }
            prop_assert!(load.values().all(|&n| n <= slots), "slots exceeded: {:?}", load);
            if open.is_empty() { break; }
            let i = picks.next().unwrap() as usize % open.len();
            let (request, peer, _) = open[i].clone();
            if let Some(p) = peer.filter(|p| bad.contains(p)) {
                let b = open[i].2[0];
                open.remove(i);
                h.input(Input::BlockCorrupt { request, block: BlockIndex(b) });
                let ban = Event::PeerBanned { peer: p };
                prop_assert!(h.events.contains(&ban), "no ban event");
                continue;
            }
            let b = open[i].2.remove(0);
            held.insert(b);
            h.input(Input::Block { request, block: BlockIndex(b) });
            if open[i].2.is_empty() {
                open.remove(i);
                h.input(Input::FetchEnded { request, result: Ok(()) });
            }
        }
        prop_assert_eq!(h.status().state, State::Transferred);
        prop_assert_eq!(held.len() as u64, blocks);
    }
}

/// A node alone asks the origin for the whole file on one connection; blocks `0..arrived`
/// come, then a co-fetcher (key 8) starts the same file. The harness, the fetch, and this
/// node's part of the file (key 5).
fn joined_while_fetching(arrived: u64) -> (Harness, RequestId, RangeSet) {
    let config = Config {
        node_key: 5,
        origin_connections: 1,
        min_span_blocks: 90,
        max_span_blocks: 90,
        ..Config::default()
    };
    let mut h = Harness::new(config);
    h.start_whole(Some(root()));
    h.answer_stat(Ok(info(90 * BLOCK_SIZE)));
    let first: Vec<(RequestId, ByteRange)> = h
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::Fetch { request, range, .. } => Some((request, range)),
            _ => None,
        })
        .collect();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1.blocks(), 0..90, "alone: the whole file");
    let request = first[0].0;
    for b in 0..arrived {
        h.input(Input::Block {
            request,
            block: BlockIndex(b),
        });
    }
    h.input(Input::PeerAdded {
        peer: PeerId(1),
        class: PeerClass::Lan,
    });
    h.input(Input::PeerFetching {
        id: ID,
        peer: PeerId(1),
        key: 8,
    });
    let mine = parts(&[5, 8], 90).remove(&5).expect("a member");
    (h, request, mine)
}

fn fetched_spans(actions: &[Action]) -> Vec<std::ops::Range<u64>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { range, .. } => Some(range.blocks()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_co_fetcher_that_joins_late_takes_over_its_part_of_the_origin_work() {
    // Alone at first, this node asks the origin for the whole file. When a peer starts the
    // same file while the block in flight is in this node's part, the fetch goes on through
    // that run of its part (the block in flight is not thrown away), then is cancelled, and
    // the rest of its part is asked for again; nothing of the peer's part is fetched.
    // (This node's part: 0..12, 64..75 and 79..90.)
    let mine = parts(&[5, 8], 90).remove(&5).expect("a member");
    let run = mine
        .runs()
        .find(|r| r.start > 0 && r.end < 90)
        .expect("a run of this node's part inside the file");
    let (mut h, request, mine) = joined_while_fetching(run.start);
    let actions = h.take();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Cancel { .. } | Action::Fetch { .. })),
        "the fetch goes on (and holds the only connection): {actions:?}"
    );
    assert_eq!(
        h.engine.downloads[&ID].fetches[&request],
        std::iter::once(run.clone()).collect::<RangeSet>(),
        "it owes the run of this node's part it is in"
    );
    for b in run.clone() {
        h.input(Input::Block {
            request,
            block: BlockIndex(b),
        });
    }
    let actions = h.take();
    assert!(
        actions.contains(&Action::Cancel { request }),
        "the run in, the fetch is cancelled: {actions:?}"
    );
    let mut rest = mine.clone();
    rest.remove(0, run.end);
    assert!(!rest.is_empty());
    assert_eq!(
        fetched_spans(&actions),
        rest.runs().take(1).collect::<Vec<_>>(),
        "the rest of this node's part only, its first run on the one connection"
    );
}

#[test]
fn a_fetch_whose_block_in_flight_left_the_share_is_cancelled_at_once() {
    // The block in flight is in the peer's part: the fetch is cancelled at once (else both
    // would fetch the peer's part), and the rest of this node's part is asked for.
    let mine = parts(&[5, 8], 90).remove(&5).expect("a member");
    let gap = mine
        .runs()
        .map(|r| r.end)
        .find(|&e| e < 90)
        .expect("a block of the peer's part after one of this node's");
    assert!(!mine.contains(gap));
    let (mut h, request, mine) = joined_while_fetching(gap);
    let actions = h.take();
    assert!(
        actions.contains(&Action::Cancel { request }),
        "the fetch is cancelled: {actions:?}"
    );
    let mut rest = mine.clone();
    rest.remove(0, gap);
    assert_eq!(
        fetched_spans(&actions),
        rest.runs().take(1).collect::<Vec<_>>(),
        "the rest of this node's part only"
    );
}

proptest! {
    /// What peers gain, told as it comes (`PeerGained`), leaves the engine knowing what the
    /// whole holdings told each time (`PeerHas`) would: the same holdings, the same counts.
    #[test]
    fn gains_told_one_by_one_add_up_to_the_whole_holdings(
        steps in proptest::collection::vec((1u64..4, 0u64..200, 1u64..40), 1..30),
    ) {
        let peers: Vec<(u64, PeerClass, RangeSet)> =
            (1..4).map(|p| (p, PeerClass::Lan, RangeSet::new())).collect();
        let mut whole = with_peers(Config::default(), 256, &peers);
        let mut gains = with_peers(Config::default(), 256, &peers);
        let mut held: BTreeMap<u64, RangeSet> = BTreeMap::new();
        for (peer, start, len) in steps {
            let set = held.entry(peer).or_default();
            set.insert(start, (start + len).min(256));
            whole.input(Input::PeerHas { id: ID, peer: PeerId(peer), blocks: set.clone() });
            gains.input(Input::PeerGained {
                id: ID,
                peer: PeerId(peer),
                blocks: std::iter::once(start..(start + len).min(256)).collect(),
            });
        }
        let (a, b) = (&whole.engine.downloads[&ID], &gains.engine.downloads[&ID]);
        for (peer, set) in &held {
            let (x, y) = (&a.haves[&PeerId(*peer)], &b.haves[&PeerId(*peer)]);
            prop_assert_eq!(x.count(), set.count());
            prop_assert_eq!(x.iter().collect::<Vec<_>>(), y.iter().collect::<Vec<_>>());
        }
        for block in 0..256 {
            prop_assert_eq!(a.availability(block), b.availability(block));
        }
        prop_assert_eq!(whole.take(), gains.take());
    }
}

proptest! {
    /// A node that knows only its ring neighbours (the first other node after each of its
    /// points) has the arcs it has in the view of the whole swarm.
    #[test]
    fn ring_neighbours_alone_give_a_node_its_arcs_in_the_whole_swarm(
        keys in proptest::collection::btree_set(any::<u64>(), 2..300),
        blocks in 1u64..20_000,
    ) {
        let keys: Vec<u64> = keys.into_iter().collect();
        let whole = ring(&keys, blocks);
        let split = SplitRing::new(&keys, blocks);
        for &own in keys.iter().take(20) {
            let mut seen = split.successors(own, 1);
            prop_assert!(!seen.contains(&own));
            prop_assert!(seen.len() <= SPLIT_POINTS as usize);
            seen.push(own);
            seen.sort_unstable();
            prop_assert_eq!(
                arcs(&ring(&seen, blocks), own, blocks),
                arcs(&whole, own, blocks)
            );
        }
    }
}

#[test]
fn ring_neighbours_are_the_next_keys_after_each_point_and_more_with_a_wider_count() {
    let keys: Vec<u64> = (1..=50).map(|k| k * 0x1234_5678_9abc).collect();
    let blocks = 1 << 14;
    let split = SplitRing::new(&keys, blocks);
    let own = keys[7];
    let one = split.successors(own, 1);
    let three = split.successors(own, 3);
    assert!(!one.is_empty() && one.len() <= 4);
    assert!(
        one.iter().all(|k| three.contains(k)),
        "a wider count keeps the nearest"
    );
    assert!(three.len() > one.len() && three.len() <= 12);
    // A node not on the ring gets its neighbours too; a ring of itself alone gives none.
    assert!(!split.successors(7, 2).is_empty());
    assert!(SplitRing::new(&[own], blocks).successors(own, 2).is_empty());
    assert!(split.successors(own, 0).is_empty());
}
