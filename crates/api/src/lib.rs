//! The DO download model in donode's terms: properties (`DODownloadProperty` ids 0–25 with
//! their types and access rules), states, the status record, the error codes, and the JSON
//! shapes of the daemon's `/v1` API.
//!
//! Both sides use this crate: the daemon to answer, clients to ask ([`Manager`] and
//! [`Download`] find the daemon through its port file and speak `/v1`). It holds no download
//! logic; the daemon's behaviour lives in `do-agent` and the node.
#![warn(missing_docs)]

mod bits;
mod client;
pub mod hresult;
mod property;

use serde::{Deserialize, Serialize};

pub use bits::{
    File, FileInfo, FileProgress, FileRange, Job, JobError, JobEvents, JobInfo, JobProgress,
    JobTimes,
};
pub use client::{ClientError, DO_E_NO_SERVICE, Download, Events, Listed, Manager, Sources};
pub use property::{Access, Kind, Property};

/// DO's download states (`DODownloadState`, same numbers and names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Created, not started.
    Created,
    /// Bytes are moving.
    Transferring,
    /// Every requested byte is in place.
    Transferred,
    /// Finished for good.
    Finalized,
    /// Cancelled for good.
    Aborted,
    /// Paused on demand or by an error.
    Paused,
}

impl State {
    /// DO's numeric value.
    pub fn value(self) -> u32 {
        match self {
            Self::Created => 0,
            Self::Transferring => 1,
            Self::Transferred => 2,
            Self::Finalized => 3,
            Self::Aborted => 4,
            Self::Paused => 5,
        }
    }
}

/// `DO_DOWNLOAD_STATUS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    /// Bytes to transfer (0 while unknown).
    pub bytes_total: u64,
    /// Bytes transferred and verified.
    pub bytes_transferred: u64,
    /// The state.
    pub state: State,
    /// The fatal error, 0 if none.
    pub error: u32,
    /// The transient error being retried (with `error` 0), or a detail; 0 if none.
    pub extended_error: u32,
}

impl Status {
    /// The SDK's `is_error`: a fatal error is set.
    pub fn is_error(&self) -> bool {
        self.error != 0
    }

    /// The SDK's `is_transient_error`: paused by an error that is being retried.
    pub fn is_transient_error(&self) -> bool {
        self.state == State::Paused && self.error == 0 && self.extended_error != 0
    }
}

/// `DO_DOWNLOAD_RANGE`: `length` may be [`LENGTH_TO_EOF`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Number of bytes, or [`LENGTH_TO_EOF`].
    pub length: u64,
}

/// `DO_LENGTH_TO_EOF`: a range that runs to the end of the file.
pub const LENGTH_TO_EOF: u64 = u64::MAX;

/// Body of `POST /v1/downloads/{id}/start`: `DO_DOWNLOAD_RANGES_INFO`, or none for the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartRequest {
    /// Ranges to fetch; absent for the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<Range>>,
}

/// An error answer of the `/v1` API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    /// The HRESULT.
    pub error_code: u32,
    /// A description for people.
    pub message: String,
}
