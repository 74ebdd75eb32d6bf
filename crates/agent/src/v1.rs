//! The full DO download model as a JSON API under `/v1/`, beside the agent's `/download/`.
//!
//! | request | DO equivalent |
//! |---|---|
//! | `POST /v1/downloads` (body: `{"Uri": .., "LocalPath": .., <any property>: ..}`) | `IDOManager::CreateDownload` + `SetProperty` |
//! | `GET /v1/downloads[?<Category>=<value>]` (Id, Uri, ContentId, DisplayName, LocalPath) | `IDOManager::EnumDownloads` |
//! | `GET /v1/downloads/{id}` | status, every readable property, bytes by source |
//! | `GET /v1/downloads/{id}/status` | `IDODownload::GetStatus` |
//! | `POST /v1/downloads/{id}/start` (body: `{"Ranges": [{"Offset": o, "Length": l}]}` or none) | `IDODownload::Start` |
//! | `POST /v1/downloads/{id}/pause`, `/abort`, `/finalize` | `Pause`, `Abort`, `Finalize` |
//! | `GET /v1/downloads/{id}/properties/{name or id}` | `GetProperty` |
//! | `PUT /v1/downloads/{id}/properties/{name or id}` (body: `{"Value": v}`) | `SetProperty` |
//! | `GET /v1/downloads/{id}/wait[?TimeoutMs=n]` | `BlockingMode`: returns when settled |
//! | `GET /v1/downloads/{id}/events` | `IDODownloadStatusCallback`: Server-Sent Events |
//!
//! Errors answer `{"ErrorCode": <HRESULT as unsigned number>, "Message": ".."}` with 404 for
//! unknown ids (`E_NOT_SET`) and 400 otherwise.

use std::time::Duration;

use do_api::{ErrorBody, Property, StartRequest, Status as DoStatus, hresult::*};
use do_content::ByteRange;
use do_driver::Progress;
use serde_json::{Value as Json, json};

use crate::{
    manager::{ApiError, Manager},
    wire::{self, Status},
};

/// What a `/v1` request answers.
pub(crate) enum Reply {
    /// A complete response.
    Full(Status, String),
    /// A stream of status events.
    Events(Events),
    /// A stream of job notifications, and the job as it is now.
    JobEvents(
        tokio::sync::broadcast::Receiver<(&'static str, String)>,
        Json,
    ),
}

/// A status event stream: every state change at once, progress at the requested frequency.
pub(crate) struct Events {
    /// The download.
    pub(crate) id: String,
    /// The status when the stream starts.
    pub(crate) first: DoStatus,
    /// `CallbackFreqSeconds`: at most one progress event per this many seconds.
    pub(crate) every: Duration,
    /// `CallbackFreqPercent`: also an event when progress moves this many percent (0: off).
    pub(crate) percent: u64,
}

/// Answers one `/v1/...` request; `rest` are the path segments after `v1`.
pub(crate) async fn handle(
    manager: &Manager,
    jobs: &crate::jobs::Jobs,
    rest: &[String],
    request: &wire::Request,
    body: &[u8],
) -> Reply {
    if let Some((first, tail)) = rest.split_first()
        && first == "jobs"
    {
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        return crate::jobs_api::handle(jobs, &tail, request, body).await;
    }
    match route(manager, rest, request, body).await {
        Ok(reply) => reply,
        Err(e) => error(e),
    }
}

async fn route(
    manager: &Manager,
    rest: &[String],
    request: &wire::Request,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let method = request.method.to_ascii_uppercase();
    let param = |name: &str| {
        request
            .query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let segments: Vec<&str> = rest.iter().map(String::as_str).collect();
    let ok = |v: Json| Ok(Reply::Full(Status::Ok, v.to_string()));
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["downloads"]) => {
            let props = parse_props(body)?;
            ok(json!({ "Id": manager.create(&props)? }))
        }
        ("GET", ["downloads"]) => {
            let filter = match request.query.as_slice() {
                [] => None,
                [(k, v)] => {
                    let p = Property::parse(k).filter(|p| {
                        matches!(
                            p,
                            Property::Id
                                | Property::Uri
                                | Property::ContentId
                                | Property::DisplayName
                                | Property::LocalPath
                        )
                    });
                    Some((p.ok_or(ApiError::Refused(E_INVALIDARG))?, v.as_str()))
                }
                _ => return Err(ApiError::Refused(E_INVALIDARG)),
            };
            let list: Vec<Json> = manager
                .enumerate(filter)
                .into_iter()
                .map(|(id, props)| {
                    let mut item = serde_json::Map::new();
                    item.insert("Id".into(), Json::from(id));
                    for p in [
                        Property::Uri,
                        Property::ContentId,
                        Property::DisplayName,
                        Property::LocalPath,
                    ] {
                        item.insert(
                            p.name().into(),
                            props.get(&p).cloned().unwrap_or_else(|| p.default_value()),
                        );
                    }
                    Json::Object(item)
                })
                .collect();
            ok(json!({ "Downloads": list }))
        }
        ("GET", ["downloads", id]) => {
            let status = manager.status(id)?;
            let mut props = serde_json::Map::new();
            for p in Property::ALL {
                if let Ok(v) = manager.get(id, p) {
                    props.insert(p.name().into(), v);
                }
            }
            let [http, peers, group, internet, cache] = manager.stats(id)?;
            let stats = json!({
                "BytesFromHttp": http,
                "BytesFromLanPeers": peers,
                "BytesFromGroupPeers": group,
                "BytesFromInternetPeers": internet,
                "BytesFromCache": cache,
            });
            ok(json!({ "Id": id, "Status": status, "Properties": props, "Stats": stats }))
        }
        ("GET", ["stats"]) => {
            let s = manager.node_stats().await?;
            let peers: Vec<Json> = s
                .peers
                .iter()
                .map(|(id, addr, class)| json!({ "PeerId": id, "Address": addr, "Class": class }))
                .collect();
            ok(json!({
                "PeerId": s.peer_id,
                "GroupId": s.group,
                "DownloadMode": s.mode,
                "NumPeers": s.peers.len(),
                "Peers": peers,
                "BytesFromHttp": s.bytes_from_http,
                "BytesFromLanPeers": s.bytes_from_lan_peers,
                "BytesFromGroupPeers": s.bytes_from_group_peers,
                "BytesFromInternetPeers": s.bytes_from_internet_peers,
                "BytesToLanPeers": s.bytes_to_lan_peers,
                "BytesToGroupPeers": s.bytes_to_group_peers,
                "BytesToInternetPeers": s.bytes_to_internet_peers,
                "PeersBanned": s.peers_banned,
                "DataLanes": {
                    "Opened": s.data_lanes_opened,
                    "BytesIn": s.data_lane_bytes_in,
                    "BytesOut": s.data_lane_bytes_out,
                },
            }))
        }
        ("GET", ["downloads", id, "status"]) => ok(json!(manager.status(id)?)),
        ("POST", ["downloads", id, "start"]) => {
            let ranges = parse_ranges(body)?;
            manager.start(id, ranges).await?;
            ok(json!({}))
        }
        ("POST", ["downloads", id, "pause"]) => {
            manager.pause(id).await?;
            ok(json!({}))
        }
        ("POST", ["downloads", id, "abort"]) => {
            manager.abort(id).await?;
            ok(json!({}))
        }
        ("POST", ["downloads", id, "finalize"]) => {
            manager.finalize(id).await?;
            ok(json!({}))
        }
        ("GET", ["downloads", id, "properties", name]) => {
            let p = Property::parse(name).ok_or(ApiError::Refused(DO_E_UNKNOWN_PROPERTY_ID))?;
            let value = manager.get(id, p)?;
            ok(json!({ "Property": p.name(), "Id": p.id(), "Value": value }))
        }
        ("PUT" | "POST", ["downloads", id, "properties", name]) => {
            let p = Property::parse(name).ok_or(ApiError::Refused(DO_E_UNKNOWN_PROPERTY_ID))?;
            let value = serde_json::from_slice::<Json>(body)
                .ok()
                .and_then(|b| b.get("Value").cloned())
                .ok_or(ApiError::Refused(E_INVALIDARG))?;
            manager.set(id, p, value).await?;
            ok(json!({}))
        }
        ("GET", ["downloads", id, "wait"]) => {
            let timeout = match param("TimeoutMs") {
                Some(t) => {
                    Duration::from_millis(t.parse().map_err(|_| ApiError::Refused(E_INVALIDARG))?)
                }
                None => Duration::from_secs(24 * 3600),
            };
            if let Some(mut rx) = manager.progress(id)? {
                // Ends when settled, when the download goes away, or at the timeout.
                let _ = tokio::time::timeout(timeout, rx.wait_for(Progress::is_settled)).await;
            }
            let status = manager.status(id).unwrap_or(DoStatus {
                bytes_total: 0,
                bytes_transferred: 0,
                state: do_api::State::Finalized,
                error: 0,
                extended_error: 0,
            });
            ok(json!(status))
        }
        ("GET", ["downloads", id, "events"]) => {
            let seconds = manager
                .get(id, Property::CallbackFreqSeconds)?
                .as_u64()
                .unwrap_or(1);
            let percent = manager
                .get(id, Property::CallbackFreqPercent)?
                .as_u64()
                .unwrap_or(0);
            Ok(Reply::Events(Events {
                id: (*id).to_owned(),
                first: manager.status(id)?,
                every: Duration::from_secs(seconds.max(1)),
                percent,
            }))
        }
        (_, ["downloads", ..]) => Err(ApiError::Refused(E_UNSUPPORTED_V1)),
        _ => Err(ApiError::Refused(E_UNSUPPORTED_V1)),
    }
}

/// `E_UNSUPPORTED` for unknown paths and methods, as the agent answers them.
const E_UNSUPPORTED_V1: u32 = 0x8007_0032;

fn parse_props(body: &[u8]) -> Result<Vec<(Property, Json)>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let Json::Object(map) =
        serde_json::from_slice::<Json>(body).map_err(|_| ApiError::Refused(E_INVALIDARG))?
    else {
        return Err(ApiError::Refused(E_INVALIDARG));
    };
    map.into_iter()
        .map(|(k, v)| {
            let p = Property::parse(&k).ok_or(ApiError::Refused(DO_E_UNKNOWN_PROPERTY_ID))?;
            Ok((p, v))
        })
        .collect()
}

fn parse_ranges(body: &[u8]) -> Result<Option<Vec<ByteRange>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let request: StartRequest =
        serde_json::from_slice(body).map_err(|_| ApiError::Refused(E_INVALIDARG))?;
    Ok(request.ranges.map(|ranges| {
        ranges
            .into_iter()
            .map(|r| ByteRange::from_offset_len(r.offset, r.length))
            .collect()
    }))
}

fn error(e: ApiError) -> Reply {
    let status = match e {
        ApiError::NotFound => Status::NotFound,
        ApiError::Refused(_) => Status::BadRequest,
    };
    let body = ErrorBody {
        error_code: e.code(),
        message: describe(e.code()).to_owned(),
    };
    Reply::Full(
        status,
        serde_json::to_string(&body).expect("error bodies serialise"),
    )
}

/// A description of an HRESULT for people.
pub(crate) fn describe(code: u32) -> &'static str {
    match code {
        0x80D0_2003 => "no such job",
        0x80D0_2004 => "the job has no files",
        0x80D0_2014 => "no error information: the job is not in ERROR or TRANSIENT_ERROR",
        0x80D0_2002 => "no progress within the no-progress timeout",
        0x8019_019C => "the origin's file kept changing",
        0x8019_0000..=0x8019_FFFF => "the origin answered with an HTTP error status",
        0x8007_2EE2 => "the origin timed out",
        0x8007_2EFD => "cannot connect to the origin",
        0x8007_2EFE => "the connection to the origin failed",
        0x80D0_5001 => "the origin sent a different number of bytes than asked for",
        0x80D0_6806 => "the bytes do not hash to the expected content id",
        E_NOT_SET => "no such download",
        E_INVALIDARG => "invalid argument",
        E_NOTIMPL => {
            "not implemented: interface pointers cannot cross the API (use the event stream)"
        }
        INET_E_INVALID_URL => "the URI is not an http(s) URL with a host",
        DO_E_UNKNOWN_PROPERTY_ID => "unknown property",
        DO_E_READ_ONLY_PROPERTY => "the property is read-only",
        DO_E_WRITE_ONLY_PROPERTY => "the property is write-only",
        DO_E_INVALID_STATE => "not allowed in the download's current state",
        DO_E_DOWNLOAD_NO_URI => "no Uri set",
        DO_E_FILE_DOWNLOADSINK_UNSPECIFIED => "no LocalPath set",
        DO_E_INVALID_CONTENT_ID => "the content id is not 64 hex digits",
        DO_E_INTEGRITYCHECKINFO_UNSPECIFIED => "IntegrityCheckMandatory without a ContentId",
        DO_E_INVALID_RANGE => "invalid byte range",
        DO_E_OVERLAPPING_RANGES => "byte ranges overlap",
        E_UNSUPPORTED_V1 => "unknown path or method",
        c if c & 0xFFFF_0000 == 0xC0D0_0000 => "local file error (errno in the low bits)",
        _ => "error",
    }
}

/// Converts a node progress snapshot to DO's status record.
pub(crate) fn do_status(p: &Progress) -> DoStatus {
    let s = p.status;
    DoStatus {
        bytes_total: s.bytes_total,
        bytes_transferred: s.bytes_transferred,
        state: crate::manager::api_state(s.state),
        error: s.error,
        extended_error: s.extended_error,
    }
}
