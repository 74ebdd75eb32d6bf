//! The Linux DO agent's local REST API, served by donode.
//!
//! Microsoft's do-client C++ SDK (and what is built on it, such as its APT transport) finds its
//! agent through a `restport.<pid>` file and drives downloads with nine `/download/<op>`
//! requests. This crate serves that contract byte for byte, quirks included (see
//! `wire`), on top of a [`do_driver::Node`], and goes beyond the agent where it was broken or
//! missing: `setproperty` works and `enumerate` lists downloads.
//!
//! It owns the listener, the port file and the table of agent downloads (GUID ids, the four
//! agent properties). Downloading, caching and verification are the node's.
#![warn(missing_docs)]

mod ops;
mod server;
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/var/run/deliveryoptimization-agent"),
            ports: 50000..=60999,
            validate_remote_addr: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// HRESULTs the agent answers with.
pub mod hresult {
    /// Unknown download id.
    pub const E_NOT_SET: u32 = 0x8007_0490;
    /// Unknown path or wrong method.
    pub const E_UNSUPPORTED: u32 = 0x8007_0032;
    /// A missing, unknown or malformed parameter.
    pub const E_INVALIDARG: u32 = 0x8007_0057;
    /// The URI is not an http(s) URL with a host.
    pub const INET_E_INVALID_URL: u32 = 0x800C_0002;
    /// Start without a URI.
    pub const DO_E_DOWNLOAD_NO_URI: u32 = 0x80D0_2200;
    /// Start without an output path.
    pub const DO_E_FILE_DOWNLOADSINK_UNSPECIFIED: u32 = 0x80D0_2018;
    /// Not allowed in the current state.
    pub const DO_E_INVALID_STATE: u32 = 0x80D0_2013;
    /// Unknown property name.
    pub const DO_E_UNKNOWN_PROPERTY_ID: u32 = 0x80D0_2011;
    /// Local file errors: `0xC0D00000 | errno`.
    pub const fn from_errno(errno: i32) -> u32 {
        0xC0D0_0000 | (errno as u32 & 0xFFFF)
    }
}
