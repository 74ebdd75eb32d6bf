//! Test-support library for donode's integration tests.
//!
//! Everything here binds to loopback or to namespaces it created, creates its state in fresh
//! temporary directories, picks its own free ports and cleans up on drop, so
//! tests using it can run in parallel (and as root).
//!
//! * [`Nginx`] — a private nginx instance serving a directory, with
//!   range/no-range/slow/status locations and a parseable access log.
//! * [`FaultServer`] — a tiny threaded HTTP/1.1 server serving one in-memory
//!   body with injectable faults (truncation, resets, stalls, error statuses,
//!   ignored ranges).
//! * [`http`] — a minimal raw HTTP/1.1 client over `std::net::TcpStream`.
//! * [`DonodeGet`] — runs `donode get` as a child process and returns its
//!   [`Outcome`] (exit code, output, parsed `--json` [`Summary`]).
//! * [`Daemon`] — a `donode run` daemon as a child process.
//! * [`Lan`] — network namespaces bridged into a LAN (for p2p tests; needs root).
//! * [`Fleet`] — an nginx origin and `donode run --p2p` daemons on a [`Lan`].
//! * Helpers: [`donode_bin`], [`write_random_file`], [`random_bytes`],
//!   [`b3sum`], [`temp_dir`], [`free_port`].

mod cli;
mod daemon;
mod fault;
mod fleet;
pub mod http;
mod lan;
mod nginx;
mod util;

pub use cli::{
    DEFAULT_RUN_TIMEOUT, DonodeGet, Outcome, Running, Summary, assert_no_output,
    assert_no_temp_files, donode_temp_files,
};
pub use daemon::Daemon;
pub use fault::{DEFAULT_ETAG, Fault, FaultHandle, FaultServer};
pub use fleet::{Fleet, FleetOptions};
pub use lan::Lan;
pub use nginx::{LogLine, Nginx, NginxOptions};
pub use util::{
    b3sum, donode_bin, fill_random, free_port, random_bytes, temp_dir, write_random_file,
};
