//! Engine scenarios driven by a fake driver with a virtual clock.

use std::collections::BTreeSet;

use do_content::BLOCK_SIZE;
use proptest::prelude::*;

use super::*;

const ID: DownloadId = DownloadId(1);

/// A scripted driver: a virtual clock and the engine's queued actions.
struct Harness {
    engine: Engine,
    now: Instant,
    pending: Vec<Action>,
}

impl Harness {
    fn new(config: Config) -> Self {
        Self {
            engine: Engine::new(config, [7; 32]),
            // The virtual clock has to start somewhere; only `advance` moves it.
            #[allow(clippy::disallowed_methods)]
            now: Instant::now(),
            pending: Vec::new(),
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

    fn command(&mut self, command: Command) -> Result<(), CommandError> {
        let r = self.engine.handle_command(self.now, command);
        self.collect();
        r
    }

    fn input(&mut self, input: Input) {
        self.engine.handle_input(self.now, input);
        self.collect();
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
        while self.engine.poll_event().is_some() {}
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
    let cached: RangeSet = [0..30, 50..60].into_iter().collect();
    h.answer_stat(Ok(FileInfo {
        len: 64 * BLOCK_SIZE,
        accepts_ranges: true,
        cached,
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(Some(root()));
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
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
    h.create(None);
    h.command(Command::Start {
        id: ID,
        ranges: None,
    })
    .unwrap();
    h.answer_stat(Ok(info(0)));
    h.serve_all(Ok(Some(ContentId::of(&[]))));
    assert_eq!(h.status().state, State::Transferred);
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
        h.answer_stat(Ok(FileInfo { len: blocks * BLOCK_SIZE, accepts_ranges: true, cached: cached.clone() }));
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
}
