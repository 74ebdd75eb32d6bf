//! The nine `/download/<op>` operations over the agent's download table.

use std::{
    collections::HashMap, fs::OpenOptions, io::Read, path::PathBuf, sync::Mutex, time::Duration,
};

use do_driver::{Download, Headers, Node, Request};
use do_engine::State;
use serde_json::json;

use crate::{
    hresult::*,
    wire::{self, Status},
};

/// The smallest no-progress timeout the agent accepts, in seconds.
const MIN_NO_PROGRESS_SECONDS: u64 = 10;
/// The agent's default no-progress timeout (30 checks, 10 s apart).
const DEFAULT_NO_PROGRESS_SECONDS: u64 = 300;

/// One agent download.
struct Entry {
    uri: String,
    path: String,
    no_progress_seconds: u64,
    /// This download created the output file (so abort removes it).
    created_file: bool,
    /// The node's download, once started.
    download: Option<(
        do_engine::DownloadId,
        tokio::sync::watch::Receiver<do_driver::Progress>,
    )>,
}

impl Entry {
    fn state(&self) -> (State, u64, u64, u32, u32) {
        match &self.download {
            None => (State::Created, 0, 0, 0, 0),
            Some((_, rx)) => {
                let s = rx.borrow().status;
                (
                    s.state,
                    s.bytes_total,
                    s.bytes_transferred,
                    s.error,
                    s.extended_error,
                )
            }
        }
    }
}

/// The table of agent downloads, keyed by lowercase GUID.
pub(crate) struct Table {
    node: Node,
    /// A std mutex: held only for map lookups and updates, never across an await.
    entries: Mutex<HashMap<String, Entry>>,
}

type Reply = (Status, String);

impl Table {
    pub(crate) fn new(node: Node) -> Self {
        Self {
            node,
            entries: Mutex::default(),
        }
    }

    /// Answers one request.
    pub(crate) async fn handle(&self, request: &wire::Request) -> Reply {
        let op = match request.segments.as_slice() {
            [d, op] if d == "download" => op.as_str(),
            _ => return error(Status::BadRequest, E_UNSUPPORTED),
        };
        let (method, allowed): (&str, &[&str]) = match op {
            "create" | "enumerate" => (
                if op == "create" { "POST" } else { "GET" },
                &["Uri", "DownloadFilePath"],
            ),
            "start" | "pause" | "finalize" | "abort" => ("POST", &["Id"]),
            "getstatus" => ("GET", &["Id"]),
            "getproperty" => ("GET", &["Id", "PropertyKey"]),
            "setproperty" => (
                "POST",
                &["Id", "Uri", "DownloadFilePath", "NoProgressTimeoutSeconds"],
            ),
            _ => return error(Status::BadRequest, E_UNSUPPORTED),
        };
        if !request.method.eq_ignore_ascii_case(method) {
            return error(Status::BadRequest, E_UNSUPPORTED);
        }
        if request
            .query
            .iter()
            .any(|(k, _)| !allowed.contains(&k.as_str()))
        {
            return error(Status::BadRequest, E_INVALIDARG);
        }
        let param = |name: &str| {
            request
                .query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match op {
            "create" => self.create(param("Uri"), param("DownloadFilePath")),
            "enumerate" => self.enumerate(param("Uri"), param("DownloadFilePath")),
            _ => {
                let Some(id) = param("Id") else {
                    return error(Status::BadRequest, E_INVALIDARG);
                };
                let id = id.to_ascii_lowercase();
                if !self.lock().contains_key(&id) {
                    return error(Status::NotFound, E_NOT_SET);
                }
                match op {
                    "start" => self.start(&id).await,
                    "pause" => self.pause(&id).await,
                    "finalize" => self.finalize(&id).await,
                    "abort" => self.abort(&id).await,
                    "getstatus" => self.status(&id),
                    "getproperty" => self.get_property(&id, param("PropertyKey")),
                    _ => self.set_property(&id, &request.query),
                }
            }
        }
    }

    fn create(&self, uri: Option<&str>, path: Option<&str>) -> Reply {
        let uri = uri.unwrap_or_default();
        if !uri.is_empty() && !valid_uri(uri) {
            return error(Status::BadRequest, INET_E_INVALID_URL);
        }
        let id = new_guid();
        self.lock().insert(
            id.clone(),
            Entry {
                uri: uri.to_owned(),
                path: path.unwrap_or_default().to_owned(),
                no_progress_seconds: DEFAULT_NO_PROGRESS_SECONDS,
                created_file: false,
                download: None,
            },
        );
        ok(json!({ "Id": id }).to_string())
    }

    fn enumerate(&self, uri: Option<&str>, path: Option<&str>) -> Reply {
        let entries = self.lock();
        let mut list: Vec<_> = entries
            .iter()
            .filter(|(_, e)| uri.is_none_or(|u| e.uri == u) && path.is_none_or(|p| e.path == p))
            .map(|(id, e)| json!({ "Id": id, "Uri": e.uri, "DownloadFilePath": e.path }))
            .collect();
        list.sort_by(|a, b| a["Id"].as_str().cmp(&b["Id"].as_str()));
        ok(json!({ "Downloads": list }).to_string())
    }

    async fn start(&self, id: &str) -> Reply {
        let (started, state, uri, path, timeout) = {
            let entries = self.lock();
            let e = &entries[id];
            let started = e.download.as_ref().map(|(d, _)| *d);
            (
                started,
                e.state().0,
                e.uri.clone(),
                e.path.clone(),
                e.no_progress_seconds,
            )
        };
        match (started, state) {
            (None, _) => {
                if uri.is_empty() {
                    return error(Status::BadRequest, DO_E_DOWNLOAD_NO_URI);
                }
                if path.is_empty() {
                    return error(Status::BadRequest, DO_E_FILE_DOWNLOADSINK_UNSPECIFIED);
                }
                // The agent creates the output with O_EXCL at start; so do we (it stays empty
                // until the verified file replaces it at once).
                if let Err(e) = OpenOptions::new().write(true).create_new(true).open(&path) {
                    return error(Status::BadRequest, io_hresult(&e));
                }
                let request = Request {
                    url: uri,
                    output: PathBuf::from(&path),
                    ranges: None,
                    layout: do_driver::Layout::AtOffsets,
                    content_id: None,
                    overwrite: true,
                    headers: Headers::default(),
                    no_progress_timeout: Some(Duration::from_secs(timeout)),
                };
                match self.node.download(request).await {
                    Ok(Download { id: did, progress }) => {
                        if let Some(e) = self.lock().get_mut(id) {
                            e.created_file = true;
                            e.download = Some((did, progress));
                        }
                        ok_empty()
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        error(Status::BadRequest, driver_hresult(&e))
                    }
                }
            }
            (Some(did), State::Paused) => {
                if let Err(e) = std::fs::metadata(&path) {
                    return error(Status::BadRequest, io_hresult(&e));
                }
                match self.node.resume(did).await {
                    Ok(()) => ok_empty(),
                    Err(e) => error(Status::BadRequest, driver_hresult(&e)),
                }
            }
            _ => ok_empty(),
        }
    }

    async fn pause(&self, id: &str) -> Reply {
        let (did, state) = {
            let entries = self.lock();
            let e = &entries[id];
            (e.download.as_ref().map(|(d, _)| *d), e.state().0)
        };
        if let (Some(did), State::Transferring | State::Paused) = (did, state) {
            // Pausing an already paused download is a no-op for the agent: ignore its refusal.
            let _ = self.node.pause(did).await;
        }
        ok_empty()
    }

    async fn finalize(&self, id: &str) -> Reply {
        let (did, state) = {
            let entries = self.lock();
            let e = &entries[id];
            (e.download.as_ref().map(|(d, _)| *d), e.state().0)
        };
        match (did, state) {
            (Some(did), State::Transferred) => match self.node.finalize(did).await {
                Ok(()) => {
                    self.lock().remove(id);
                    ok_empty()
                }
                Err(e) => error(Status::BadRequest, driver_hresult(&e)),
            },
            _ => error(Status::BadRequest, DO_E_INVALID_STATE),
        }
    }

    async fn abort(&self, id: &str) -> Reply {
        let Some(entry) = self.lock().remove(id) else {
            return error(Status::NotFound, E_NOT_SET);
        };
        if let Some((did, _)) = entry.download {
            // A download that already ended is simply gone; the table entry is removed anyway.
            let _ = self.node.abort(did).await;
        }
        if entry.created_file {
            let _ = std::fs::remove_file(&entry.path);
        }
        ok_empty()
    }

    fn status(&self, id: &str) -> Reply {
        let (state, total, done, err, ext) = self.lock()[id].state();
        let body = json!({
            "Status": state.to_string(),
            "BytesTotal": total.to_string(),
            "BytesTransferred": done.to_string(),
            "ErrorCode": (err as i32).to_string(),
            "ExtendedErrorCode": (ext as i32).to_string(),
        });
        ok(body.to_string())
    }

    fn get_property(&self, id: &str, key: Option<&str>) -> Reply {
        let Some(key) = key else {
            return error(Status::BadRequest, E_INVALIDARG);
        };
        let entries = self.lock();
        let e = &entries[id];
        let value = match key {
            "Id" => id.to_owned(),
            "Uri" => e.uri.clone(),
            "DownloadFilePath" => e.path.clone(),
            "NoProgressTimeoutSeconds" => e.no_progress_seconds.to_string(),
            _ => return error(Status::BadRequest, DO_E_UNKNOWN_PROPERTY_ID),
        };
        let mut body = serde_json::Map::new();
        body.insert(key.to_owned(), value.into());
        ok(serde_json::Value::Object(body).to_string())
    }

    /// Sets properties. The agent refuses every call (it processes `Id` as a property); donode
    /// applies the intended rules: all three are settable before the download starts.
    fn set_property(&self, id: &str, query: &[(String, String)]) -> Reply {
        let mut entries = self.lock();
        let e = entries.get_mut(id).expect("checked by the caller");
        let props: Vec<_> = query.iter().filter(|(k, _)| k != "Id").collect();
        if props.is_empty() {
            return error(Status::BadRequest, E_INVALIDARG);
        }
        if e.download.is_some() {
            return error(Status::BadRequest, DO_E_INVALID_STATE);
        }
        // Validate everything first, so a refused call changes nothing.
        let mut timeout = None;
        for (k, v) in &props {
            match k.as_str() {
                "Uri" if !valid_uri(v) => return error(Status::BadRequest, INET_E_INVALID_URL),
                "NoProgressTimeoutSeconds" => match v.parse::<u64>() {
                    Ok(s) if s >= MIN_NO_PROGRESS_SECONDS => timeout = Some(s),
                    _ => return error(Status::BadRequest, E_INVALIDARG),
                },
                _ => {}
            }
        }
        for (k, v) in props {
            match k.as_str() {
                "Uri" => e.uri = v.clone(),
                "DownloadFilePath" => e.path = v.clone(),
                _ => {}
            }
        }
        if let Some(t) = timeout {
            e.no_progress_seconds = t;
        }
        ok_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().expect("agent table lock")
    }
}

fn ok(body: String) -> Reply {
    (Status::Ok, body)
}

fn ok_empty() -> Reply {
    (Status::Ok, "{}".to_owned())
}

fn error(status: Status, code: u32) -> Reply {
    (status, wire::error_body(code))
}

fn io_hresult(e: &std::io::Error) -> u32 {
    from_errno(e.raw_os_error().unwrap_or(libc::EIO))
}

fn driver_hresult(e: &do_driver::Error) -> u32 {
    match e {
        do_driver::Error::Command(c) => c.hresult(),
        do_driver::Error::Store(s) => s.hresult(),
        _ => 0x80D0_6802,
    }
}

/// An http or https URL with a non-empty host.
fn valid_uri(uri: &str) -> bool {
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
fn new_guid() -> String {
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
}
