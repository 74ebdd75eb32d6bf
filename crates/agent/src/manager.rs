//! The DO download manager behind both API surfaces: downloads with GUID ids, their 26
//! properties, and the node's download once started. Non-volatile downloads are kept in an
//! embedded database and come back after a restart.

use std::{
    collections::{BTreeMap, HashMap},
    fs::OpenOptions,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use do_api::{Access, Property, State, Status, hresult::*};
use do_content::{ByteRange, ContentId};
use do_driver::{Download, Headers, Layout, Node, Progress, Request};
use do_engine::DownloadId;
use redb::Database;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::state::Records;

/// DO_E_INTEGRITYCHECKINFO_UNAVAILABLE: piece-hash-file integrity info is not supported; a
/// `ContentId` is the way to give donode an integrity check.
const DO_E_INTEGRITYCHECKINFO_UNAVAILABLE: u32 = 0x80D0_2017;
/// DO_E_FATAL_CORE_ERROR.
const DO_E_FATAL_CORE_ERROR: u32 = 0x80D0_6802;

/// An error answer: not found (404) or refused (400), with its HRESULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// No download with this id.
    NotFound,
    /// Refused with this HRESULT.
    Refused(u32),
}

impl ApiError {
    pub(crate) fn code(self) -> u32 {
        match self {
            Self::NotFound => E_NOT_SET,
            Self::Refused(code) => code,
        }
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// One download of the manager.
struct Record {
    props: BTreeMap<Property, Json>,
    /// This download created its output file (abort removes it; a restart reuses it).
    created_file: bool,
    /// The node's download, once started.
    download: Option<(DownloadId, watch::Receiver<Progress>)>,
    /// The state a restored, not yet restarted download was in (Paused).
    restored: Option<State>,
    /// Ranges of the last start, for persistence.
    ranges: Option<Vec<ByteRange>>,
}

impl Record {
    fn new() -> Self {
        Self {
            props: BTreeMap::new(),
            created_file: false,
            download: None,
            restored: None,
            ranges: None,
        }
    }

    fn status(&self) -> Status {
        match &self.download {
            Some((_, rx)) => {
                let s = rx.borrow().status;
                Status {
                    bytes_total: s.bytes_total,
                    bytes_transferred: s.bytes_transferred,
                    state: api_state(s.state),
                    error: s.error,
                    extended_error: s.extended_error,
                }
            }
            None => Status {
                bytes_total: 0,
                bytes_transferred: 0,
                state: self.restored.unwrap_or(State::Created),
                error: 0,
                extended_error: 0,
            },
        }
    }

    fn text(&self, p: Property) -> String {
        self.props
            .get(&p)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    fn flag(&self, p: Property) -> bool {
        self.props.get(&p).and_then(Json::as_bool).unwrap_or(false)
    }
}

/// What a non-volatile download looks like on disk.
#[derive(Serialize, Deserialize)]
struct Saved {
    props: BTreeMap<String, Json>,
    created_file: bool,
    state: State,
    ranges: Option<Vec<(u64, u64)>>,
}

/// The manager. All methods take `&self`; the table is behind a std mutex held only for map
/// work, never across an await.
pub(crate) struct Manager {
    node: Node,
    records: Mutex<HashMap<String, Record>>,
    saved: Records,
}

impl Manager {
    /// A manager over `node`; with `state_path`, non-volatile downloads persist there.
    pub(crate) fn new(node: Node, db: Option<Arc<Database>>) -> Self {
        Self {
            node,
            records: Mutex::default(),
            saved: Records::new(db, "downloads"),
        }
    }

    /// Loads the non-volatile downloads and restarts those that were transferring.
    pub(crate) async fn restore(&self) {
        for (id, saved) in self.saved.load::<Saved>() {
            let mut record = Record::new();
            for (name, value) in saved.props {
                if let Some(p) = Property::parse(&name) {
                    record.props.insert(p, value);
                }
            }
            record.created_file = saved.created_file;
            record.ranges = saved
                .ranges
                .map(|r| r.into_iter().map(|(s, e)| ByteRange::new(s, e)).collect());
            let restart = matches!(saved.state, State::Transferring | State::Transferred);
            if saved.state == State::Paused {
                record.restored = Some(State::Paused);
            }
            let ranges = record.ranges.clone();
            self.lock().insert(id.clone(), record);
            info!(download = %id, state = ?saved.state, "restored a non-volatile download");
            if restart && let Err(e) = self.start(&id, ranges).await {
                warn!(download = %id, code = format_args!("{:#x}", e.code()), "restored download did not restart");
            }
        }
    }

    /// Creates a download with the given initial properties.
    pub(crate) fn create(&self, props: &[(Property, Json)]) -> Result<String> {
        let mut record = Record::new();
        for (p, v) in props {
            check_set(*p, v, State::Created)?;
            record.props.insert(*p, v.clone());
        }
        let id = new_guid();
        record.props.insert(Property::Id, Json::from(id.clone()));
        self.lock().insert(id.clone(), record);
        self.save(&id);
        Ok(id)
    }

    /// True when `id` is a download of this manager.
    pub(crate) fn exists(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// The status of a download.
    pub(crate) fn status(&self, id: &str) -> Result<Status> {
        Ok(self.lock().get(id).ok_or(ApiError::NotFound)?.status())
    }

    /// The live progress of a started download.
    pub(crate) fn progress(&self, id: &str) -> Result<Option<watch::Receiver<Progress>>> {
        let records = self.lock();
        let r = records.get(id).ok_or(ApiError::NotFound)?;
        Ok(r.download.as_ref().map(|(_, rx)| rx.clone()))
    }

    /// Bytes by source of a started download: (BytesFromHttp, BytesFromLanPeers,
    /// BytesFromGroupPeers, BytesFromInternetPeers, BytesFromCache).
    pub(crate) fn stats(&self, id: &str) -> Result<[u64; 5]> {
        let records = self.lock();
        let r = records.get(id).ok_or(ApiError::NotFound)?;
        Ok(r.download.as_ref().map_or([0; 5], |(_, rx)| {
            let p = rx.borrow();
            [
                p.bytes_from_http,
                p.bytes_from_peers,
                p.bytes_from_group_peers,
                p.bytes_from_internet_peers,
                p.bytes_from_cache,
            ]
        }))
    }

    /// Node-wide figures.
    pub(crate) async fn node_stats(&self) -> Result<do_driver::NodeStats> {
        self.node
            .stats()
            .await
            .map_err(|_| ApiError::Refused(E_FAIL))
    }

    /// A property's value.
    pub(crate) fn get(&self, id: &str, p: Property) -> Result<Json> {
        let records = self.lock();
        let r = records.get(id).ok_or(ApiError::NotFound)?;
        match p.access() {
            Access::WriteOnly => Err(ApiError::Refused(DO_E_WRITE_ONLY_PROPERTY)),
            _ if p == Property::ContentId && !r.props.contains_key(&p) => {
                // Once transferred, the content id is known even if the caller never gave it.
                let known = r
                    .download
                    .as_ref()
                    .and_then(|(_, rx)| rx.borrow().content_id);
                Ok(Json::from(known.map(|c| c.to_string()).unwrap_or_default()))
            }
            _ => Ok(r
                .props
                .get(&p)
                .cloned()
                .unwrap_or_else(|| p.default_value())),
        }
    }

    /// Sets a property, with DO's access and state rules.
    pub(crate) async fn set(&self, id: &str, p: Property, value: Json) -> Result<()> {
        let started = {
            let mut records = self.lock();
            let r = records.get_mut(id).ok_or(ApiError::NotFound)?;
            check_set(p, &value, r.status().state)?;
            if p == Property::Uri && r.download.is_some() {
                // Changing the source of a started download is not supported yet.
                return Err(ApiError::Refused(DO_E_INVALID_STATE));
            }
            r.props.insert(p, value.clone());
            r.download.as_ref().map(|(d, _)| *d)
        };
        let applied = match (started, p) {
            (Some(did), Property::NoProgressTimeoutSeconds) => {
                let secs = value.as_u64().unwrap_or(120);
                self.node
                    .set_no_progress_timeout(did, Duration::from_secs(secs))
                    .await
            }
            (Some(did), Property::ForegroundPriority) => {
                self.node
                    .set_foreground(did, value.as_bool().unwrap_or(false))
                    .await
            }
            _ => Ok(()),
        };
        applied.map_err(|e| ApiError::Refused(driver_code(&e)))?;
        self.save(id);
        Ok(())
    }

    /// Checks that every `(property, value)` could be set now, without setting any.
    pub(crate) fn check_all(&self, id: &str, props: &[(Property, Json)]) -> Result<()> {
        let records = self.lock();
        let r = records.get(id).ok_or(ApiError::NotFound)?;
        let state = r.status().state;
        for (p, v) in props {
            check_set(*p, v, state)?;
            if *p == Property::Uri && r.download.is_some() {
                return Err(ApiError::Refused(DO_E_INVALID_STATE));
            }
        }
        Ok(())
    }

    /// Starts or resumes a download, optionally for byte ranges.
    pub(crate) async fn start(&self, id: &str, ranges: Option<Vec<ByteRange>>) -> Result<()> {
        let (started, state, request, created_file, output) = {
            let records = self.lock();
            let r = records.get(id).ok_or(ApiError::NotFound)?;
            let started = r.download.as_ref().map(|(d, _)| *d);
            let output = PathBuf::from(r.text(Property::LocalPath));
            (
                started,
                r.status().state,
                self.request(r, ranges.clone()),
                r.created_file,
                output,
            )
        };
        match (started, state) {
            (None, _) => {
                let request = request?;
                if !created_file {
                    // As the Linux agent: the output is created at start, exclusively.
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&request.output)
                        .map_err(|e| ApiError::Refused(io_code(&e)))?;
                } else if let Err(e) = std::fs::metadata(&request.output) {
                    return Err(ApiError::Refused(io_code(&e)));
                }
                match self.node.download(request).await {
                    Ok(Download { id: did, progress }) => {
                        if let Some(r) = self.lock().get_mut(id) {
                            r.created_file = true;
                            r.restored = None;
                            r.ranges = ranges;
                            r.download = Some((did, progress));
                        }
                    }
                    Err(e) => {
                        if !created_file {
                            let _ = std::fs::remove_file(&output);
                        }
                        return Err(ApiError::Refused(driver_code(&e)));
                    }
                }
            }
            (Some(did), State::Paused | State::Transferred) => {
                if let Err(e) = std::fs::metadata(&output) {
                    return Err(ApiError::Refused(io_code(&e)));
                }
                let r = match ranges.clone() {
                    Some(r) => self.node.start_ranges(did, r).await,
                    None if state == State::Transferred => return Ok(()),
                    None => self.node.resume(did).await,
                };
                r.map_err(|e| ApiError::Refused(driver_code(&e)))?;
                if let Some(rec) = self.lock().get_mut(id)
                    && ranges.is_some()
                {
                    rec.ranges = ranges;
                }
            }
            _ => {}
        }
        self.save_state(id, State::Transferring);
        Ok(())
    }

    /// Pauses a transferring download (a no-op in other states).
    pub(crate) async fn pause(&self, id: &str) -> Result<()> {
        let (did, state) = self.handle(id)?;
        if let (Some(did), State::Transferring | State::Paused) = (did, state) {
            // Pausing what is already paused is a no-op, as for the agent.
            let _ = self.node.pause(did).await;
            self.save_state(id, State::Paused);
        }
        Ok(())
    }

    /// Finalizes a transferred download and forgets it.
    pub(crate) async fn finalize(&self, id: &str) -> Result<()> {
        match self.handle(id)? {
            (Some(did), State::Transferred) => {
                self.node
                    .finalize(did)
                    .await
                    .map_err(|e| ApiError::Refused(driver_code(&e)))?;
                self.forget(id);
                Ok(())
            }
            _ => Err(ApiError::Refused(DO_E_INVALID_STATE)),
        }
    }

    /// Aborts a download, removing the output it created, and forgets it.
    pub(crate) async fn abort(&self, id: &str) -> Result<()> {
        let record = self.lock().remove(id).ok_or(ApiError::NotFound)?;
        self.unsave(id);
        if let Some((did, _)) = record.download {
            // A download that already ended is simply gone.
            let _ = self.node.abort(did).await;
        }
        if record.created_file {
            let _ = std::fs::remove_file(record.text(Property::LocalPath));
        }
        Ok(())
    }

    /// Ids of the downloads whose `category` property equals `value` (all when `None`).
    pub(crate) fn enumerate(
        &self,
        filter: Option<(Property, &str)>,
    ) -> Vec<(String, BTreeMap<Property, Json>)> {
        let records = self.lock();
        let mut out: Vec<_> = records
            .iter()
            .filter(|(_, r)| filter.is_none_or(|(p, v)| r.text(p) == v))
            .map(|(id, r)| (id.clone(), r.props.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Builds the node request from the properties, checking what DO checks at start.
    fn request(&self, r: &Record, ranges: Option<Vec<ByteRange>>) -> Result<Request> {
        let url = r.text(Property::Uri);
        if url.is_empty() {
            return Err(ApiError::Refused(DO_E_DOWNLOAD_NO_URI));
        }
        let output = r.text(Property::LocalPath);
        if output.is_empty() {
            return Err(ApiError::Refused(DO_E_FILE_DOWNLOADSINK_UNSPECIFIED));
        }
        let content_id = match r.text(Property::ContentId) {
            c if c.is_empty() => None,
            c => Some(
                c.parse::<ContentId>()
                    .map_err(|_| ApiError::Refused(DO_E_INVALID_CONTENT_ID))?,
            ),
        };
        if content_id.is_none() && r.flag(Property::IntegrityCheckMandatory) {
            let code = if r.props.contains_key(&Property::IntegrityCheckInfo) {
                DO_E_INTEGRITYCHECKINFO_UNAVAILABLE
            } else {
                DO_E_INTEGRITYCHECKINFO_UNSPECIFIED
            };
            return Err(ApiError::Refused(code));
        }
        let headers = Headers::parse(&r.text(Property::HttpCustomHeaders))
            .map_err(|_| ApiError::Refused(E_INVALIDARG))?;
        let timeout = r
            .props
            .get(&Property::NoProgressTimeoutSeconds)
            .and_then(Json::as_u64)
            .map(Duration::from_secs);
        Ok(Request {
            url,
            output: PathBuf::from(output),
            ranges,
            layout: Layout::AtOffsets,
            content_id,
            overwrite: true,
            headers,
            no_progress_timeout: timeout,
            foreground: r.flag(Property::ForegroundPriority),
            previous_url: None,
        })
    }

    fn handle(&self, id: &str) -> Result<(Option<DownloadId>, State)> {
        let records = self.lock();
        let r = records.get(id).ok_or(ApiError::NotFound)?;
        Ok((r.download.as_ref().map(|(d, _)| *d), r.status().state))
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
        self.unsave(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().expect("download table lock")
    }

    fn save_state(&self, id: &str, state: State) {
        self.persist(id, Some(state));
    }

    fn save(&self, id: &str) {
        self.persist(id, None);
    }

    /// Writes a non-volatile download's record (or removes it once it is volatile again).
    fn persist(&self, id: &str, state: Option<State>) {
        let saved = {
            let records = self.lock();
            let Some(r) = records.get(id) else { return };
            r.flag(Property::NonVolatile).then(|| Saved {
                props: r
                    .props
                    .iter()
                    .map(|(p, v)| (p.name().to_owned(), v.clone()))
                    .collect(),
                created_file: r.created_file,
                state: state.unwrap_or_else(|| r.status().state),
                ranges: r
                    .ranges
                    .as_ref()
                    .map(|v| v.iter().map(|b| (b.start, b.end)).collect()),
            })
        };
        match saved {
            Some(s) => self.saved.put(id, &s),
            None => self.saved.remove(id),
        }
    }

    fn unsave(&self, id: &str) {
        self.saved.remove(id);
    }
}

/// DO's rules for setting `p` to `value` in `state`.
fn check_set(p: Property, value: &Json, state: State) -> Result<()> {
    if p.access() == Access::ReadOnly {
        return Err(ApiError::Refused(DO_E_READ_ONLY_PROPERTY));
    }
    let value = p.check_value(value).map_err(ApiError::Refused)?;
    if p == Property::Uri && !valid_uri(value.as_str().unwrap_or_default()) {
        return Err(ApiError::Refused(INET_E_INVALID_URL));
    }
    if p == Property::ContentId
        && let Some(c) = value.as_str()
        && !c.is_empty()
        && c.parse::<ContentId>().is_err()
    {
        return Err(ApiError::Refused(DO_E_INVALID_CONTENT_ID));
    }
    if !p.settable_in(state) {
        return Err(ApiError::Refused(DO_E_INVALID_STATE));
    }
    Ok(())
}

pub(crate) fn api_state(s: do_engine::State) -> State {
    match s {
        do_engine::State::Created => State::Created,
        do_engine::State::Transferring => State::Transferring,
        do_engine::State::Transferred => State::Transferred,
        do_engine::State::Finalized => State::Finalized,
        do_engine::State::Aborted => State::Aborted,
        do_engine::State::Paused => State::Paused,
    }
}

fn io_code(e: &std::io::Error) -> u32 {
    from_errno(e.raw_os_error().unwrap_or(libc::EIO))
}

fn driver_code(e: &do_driver::Error) -> u32 {
    match e {
        do_driver::Error::Command(c) => c.hresult(),
        do_driver::Error::Store(s) => s.hresult(),
        _ => DO_E_FATAL_CORE_ERROR,
    }
}

/// An http or https URL with a non-empty host.
pub(crate) fn valid_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && !host.is_empty()
        && !host.starts_with(':')
}

/// A random (version 4) GUID, lowercase, as the agent's ids.
pub(crate) fn new_guid() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // Without the kernel's randomness, fall back to time and a counter: still unique.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        b[8..].copy_from_slice(
            &COUNTER
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
    }
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_must_be_http_with_a_host() {
        for good in ["http://h/x", "HTTPS://h:8080/x?y", "http://u@h/"] {
            assert!(valid_uri(good), "{good}");
        }
        for bad in [
            "",
            "ftp://h/x",
            "http://",
            "http:///x",
            "h/x",
            "http://:80/x",
        ] {
            assert!(!valid_uri(bad), "{bad}");
        }
    }

    #[test]
    fn guids_are_lowercase_v4_and_distinct() {
        let a = new_guid();
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert_eq!(a, a.to_ascii_lowercase());
        assert_ne!(a, new_guid());
    }

    #[test]
    fn set_rules() {
        let v = Json::from("x");
        assert_eq!(
            check_set(Property::Id, &v, State::Created),
            Err(ApiError::Refused(DO_E_READ_ONLY_PROPERTY))
        );
        assert_eq!(
            check_set(Property::LocalPath, &v, State::Transferring),
            Err(ApiError::Refused(DO_E_INVALID_STATE))
        );
        assert_eq!(
            check_set(Property::Uri, &v, State::Created),
            Err(ApiError::Refused(INET_E_INVALID_URL))
        );
        assert_eq!(
            check_set(Property::ContentId, &v, State::Created),
            Err(ApiError::Refused(DO_E_INVALID_CONTENT_ID))
        );
        assert_eq!(
            check_set(Property::DisplayName, &Json::from(1), State::Created),
            Err(ApiError::Refused(E_INVALIDARG))
        );
        assert!(
            check_set(
                Property::ForegroundPriority,
                &Json::from(true),
                State::Transferring
            )
            .is_ok()
        );
    }
}
