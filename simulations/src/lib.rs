//! `do-sim`: a deterministic, flow-level discrete-event simulator of donode fleets.
//!
//! It drives the very `do_engine::Engine` the real node runs, one per simulated node, with a
//! virtual clock and a flow-level network ([`net`]) whose links share bandwidth max-min
//! fairly. The simulator stands in for the driver: it carries out the engines' actions
//! (origin fetches, peer requests) as flows, polls peers' holdings as the driver does, and
//! models verification (a corrupt peer's blocks come back as `BlockCorrupt`).
//!
//! What it owns: scenario files ([`scenario`]), the event loop ([`sim`]), the lower bound
//! ([`bound`]), the summary ([`report`]) and plots ([`plot`]). What it does not model: TCP
//! or QUIC dynamics, packet loss, disks, libp2p discovery (peers are known from the start,
//! as mDNS finds a LAN at once), and hashing (no bytes exist).
//!
//! Same scenario and seed give the same results, byte for byte: all randomness comes from
//! seeded streams, time is integer nanoseconds, and events are ordered by (time, sequence).

pub mod bound;
pub mod net;
pub mod plot;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod shipped;
pub mod sim;

pub use report::Summary;
pub use scenario::Scenario;

/// Runs `scenario` with `seed` and summarises it.
pub fn run(scenario: &Scenario, seed: u64) -> (Summary, sim::Outcome) {
    let started = std::time::Instant::now();
    let outcome = sim::Sim::new(scenario.clone(), seed).run();
    let wall = started.elapsed().as_secs_f64();
    (report::summarise(scenario, seed, &outcome, wall), outcome)
}
