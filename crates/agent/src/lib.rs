//! The Linux DO agent's local REST API, served by donode.
//!
//! Microsoft's do-client C++ SDK (and what is built on it, such as its APT transport) finds its
//! agent through a `restport.<pid>` file and drives downloads with nine `/download/<op>`
//! requests. This crate serves that contract byte for byte, quirks included (see
//! `wire`), on top of a [`do_driver::Node`], and goes beyond the agent where it was broken or
//! missing: `setproperty` works and `enumerate` lists downloads. Beside it, `/v1/` serves the
//! full DO download model (all 26 properties, ranges, enumeration by category, a wait call and
//! a status event stream); both surfaces share one download table.
//!
//! It owns the listener, the port file and the table of agent downloads (GUID ids, the four
//! agent properties). Downloading, caching and verification are the node's.
#![warn(missing_docs)]

mod jobs;
mod jobs_api;
mod manager;
mod ops;
mod server;
mod state;
mod v1;
pub mod wire;

use std::{
    ops::RangeInclusive,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
};

pub use server::{Error, Server};

/// Agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the `restport.<pid>` file goes. Default `/var/run/deliveryoptimization-agent`,
    /// as the Linux agent.
    pub run_dir: PathBuf,
    /// Ports tried in order for the loopback listener. Default 50000–60999, as the agent.
    pub ports: RangeInclusive<u16>,
    /// Refuse callers whose address is not loopback (admin config
    /// `RestControllerValidateRemoteAddr`, default true). Shared so a reload can flip it.
    pub validate_remote_addr: Arc<AtomicBool>,
    /// Where non-volatile downloads are kept (an embedded database); `None` keeps nothing.
    pub state_path: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/var/run/deliveryoptimization-agent"),
            ports: 50000..=60999,
            validate_remote_addr: Arc::new(AtomicBool::new(true)),
            state_path: None,
        }
    }
}

/// HRESULTs only the agent surface uses (the DO model's are in `do_api::hresult`).
pub(crate) mod hresult {
    pub(crate) use do_api::hresult::*;
    /// Unknown path or wrong method.
    pub(crate) const E_UNSUPPORTED: u32 = 0x8007_0032;
}
