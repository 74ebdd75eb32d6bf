//! BITS-compatible jobs: several files, BITS' state machine, priorities, notifications, and
//! persistence (jobs are always non-volatile). `docs/bits.md` is the contract.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use do_content::ByteRange;
use do_driver::{Download, Headers, Layout, Node, Progress, Request};
use do_engine::{DownloadId, State as DlState};
use redb::Database;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, watch};

use crate::state::Records;
use tracing::{info, warn};

/// Unknown job.
pub(crate) const DO_E_JOB_NOT_FOUND: u32 = 0x80D0_2003;
/// Resume without files.
const DO_E_JOB_EMPTY: u32 = 0x80D0_2004;
/// Not allowed in the job's state.
const DO_E_INVALID_STATE: u32 = 0x80D0_2013;
/// No error object (the job is not in ERROR or TRANSIENT_ERROR).
const DO_E_ERROR_INFORMATION_UNAVAILABLE: u32 = 0x80D0_2014;
/// An invalid byte range.
const DO_E_INVALID_RANGE: u32 = 0x80D0_5010;
/// Overlapping byte ranges.
const DO_E_OVERLAPPING_RANGES: u32 = 0x80D0_5012;
/// Bad argument.
const E_INVALIDARG: u32 = 0x8007_0057;
/// Not implemented (unsupported job types, flags and properties).
const E_NOTIMPL: u32 = 0x8000_4001;
/// HTTP 403 from the origin: the one error DO reports with context REMOTE_FILE.
const HTTP_E_STATUS_FORBIDDEN: u32 = 0x8019_0193;
/// `BG_LENGTH_TO_EOF` / `BG_SIZE_UNKNOWN`.
const TO_EOF: u64 = u64::MAX;
/// Jobs are kept at most this long, then cancelled (DO's rule).
const MAX_JOB_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// `BG_JOB_STATE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum JobState {
    Queued = 0,
    Transferring = 2,
    Suspended = 3,
    Error = 4,
    TransientError = 5,
    Transferred = 6,
    Acknowledged = 7,
    Cancelled = 8,
}

impl JobState {
    /// BITS' name (`BG_JOB_STATE_<name>`).
    fn name(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Transferring => "TRANSFERRING",
            Self::Suspended => "SUSPENDED",
            Self::Error => "ERROR",
            Self::TransientError => "TRANSIENT_ERROR",
            Self::Transferred => "TRANSFERRED",
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::Cancelled => "CANCELLED",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, Self::Acknowledged | Self::Cancelled)
    }

    fn is_active(self) -> bool {
        matches!(
            self,
            Self::Queued | Self::Transferring | Self::TransientError
        )
    }
}

/// Notify flags.
const NOTIFY_TRANSFERRED: u32 = 0x01;
const NOTIFY_ERROR: u32 = 0x02;
const NOTIFY_DISABLE: u32 = 0x04;
const NOTIFY_MODIFICATION: u32 = 0x08;
const NOTIFY_FILE_TRANSFERRED: u32 = 0x10;
const NOTIFY_FILE_RANGES_TRANSFERRED: u32 = 0x20;

/// The internal event that closes a job's event streams (never sent to clients).
pub(crate) const END_OF_EVENTS: &str = "End";

/// `BITS_JOB_TRANSFER_POLICY_STANDARD`, the default cost flags.
const COST_STANDARD: u64 = 0x8000_0067;

/// A job's error (`IBackgroundCopyError`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobError {
    code: u32,
    file: Option<usize>,
}

impl JobError {
    fn context(&self) -> (&'static str, u32) {
        if self.code == HTTP_E_STATUS_FORBIDDEN {
            ("REMOTE_FILE", 5)
        } else {
            ("NONE", 0)
        }
    }
}

/// One file of a job (what is saved; the live download is beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FileRecord {
    file_id: String,
    remote: String,
    previous_remote: Option<String>,
    local: PathBuf,
    ranges: Option<Vec<(u64, u64)>>,
    size_hint: Option<u64>,
    bytes_total: Option<u64>,
    bytes_done: u64,
    bytes_from_http: u64,
    /// Verified bytes from LAN peers.
    #[serde(default)]
    bytes_from_peers: u64,
    /// Verified bytes from the group's members.
    #[serde(default)]
    bytes_from_group_peers: u64,
    /// Verified bytes from peers beyond the LAN.
    #[serde(default)]
    bytes_from_internet_peers: u64,
    transferred: bool,
    completed: bool,
    started_unix_ms: u64,
    finished_unix_ms: u64,
}

/// A job as saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobRecord {
    display_name: String,
    state: JobState,
    priority: u32,
    no_progress_timeout: u64,
    notify_flags: u32,
    cost_flags: u64,
    notify_clsid: String,
    created: u64,
    modified: u64,
    transferred_at: u64,
    files: Vec<FileRecord>,
    error: Option<JobError>,
}

/// A live file: its record and the node's download.
struct File {
    record: FileRecord,
    download: Option<(DownloadId, watch::Receiver<Progress>)>,
    headers: Option<Arc<str>>,
}

struct Job {
    record: JobRecord,
    files: Vec<File>,
    events: broadcast::Sender<(&'static str, String)>,
}

/// An error answer: no such job (404) or refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobsError {
    NotFound,
    Refused(u32),
}

type Result<T> = std::result::Result<T, JobsError>;

/// What to do with the node after the table lock is released.
enum NodeCall {
    Start(String, usize, Box<Request>),
    Pause(DownloadId),
    Resume(DownloadId),
    Abort(DownloadId),
    Finalize(DownloadId),
    Foreground(DownloadId, bool),
    Timeout(DownloadId, u64),
}

/// All jobs.
pub(crate) struct Jobs {
    node: Node,
    /// The node's download mode, as `DOSwarmStats` numbers it.
    download_mode: u32,
    saved: Records,
    /// A std mutex: held for table work only, never across an await.
    jobs: Mutex<HashMap<String, Job>>,
}

impl Jobs {
    pub(crate) fn new(node: Node, db: Option<Arc<Database>>, download_mode: u32) -> Self {
        Self {
            node,
            download_mode,
            saved: Records::new(db, "jobs"),
            jobs: Mutex::default(),
        }
    }

    /// Loads the saved jobs; those that were moving start again (from the cache).
    pub(crate) async fn restore(&self) {
        let saved = self.saved.load::<JobRecord>();
        let mut resume = Vec::new();
        {
            let mut jobs = self.lock();
            for (id, record) in saved {
                if record.state.is_active() {
                    resume.push(id.clone());
                }
                let files = record
                    .files
                    .iter()
                    .map(|f| File {
                        record: f.clone(),
                        download: None,
                        headers: None,
                    })
                    .collect();
                info!(job = %id, state = ?record.state, "restored a job");
                jobs.insert(
                    id,
                    Job {
                        record,
                        files,
                        events: broadcast::channel(64).0,
                    },
                );
            }
        }
        for id in resume {
            if let Err(e) = self.resume_files(&id).await {
                warn!(job = %id, error = ?e, "a restored job did not restart");
            }
        }
    }

    /// `CreateJob`.
    pub(crate) fn create(&self, display_name: &str, job_type: u64) -> Result<String> {
        if display_name.is_empty() || display_name.chars().count() > 256 {
            return Err(JobsError::Refused(E_INVALIDARG));
        }
        if job_type != 0 {
            return Err(JobsError::Refused(E_NOTIMPL));
        }
        let id = crate::manager::new_guid();
        let now = unix_now();
        let record = JobRecord {
            display_name: display_name.to_owned(),
            state: JobState::Suspended,
            priority: 2,
            no_progress_timeout: 1_209_600,
            notify_flags: NOTIFY_TRANSFERRED | NOTIFY_ERROR,
            cost_flags: COST_STANDARD,
            notify_clsid: String::new(),
            created: now,
            modified: now,
            transferred_at: 0,
            files: Vec::new(),
            error: None,
        };
        self.lock().insert(
            id.clone(),
            Job {
                record,
                files: Vec::new(),
                events: broadcast::channel(64).0,
            },
        );
        self.save(&id);
        Ok(id)
    }

    /// `EnumJobs`.
    pub(crate) fn list(&self) -> Vec<Json> {
        let jobs = self.lock();
        let mut list: Vec<_> = jobs.iter().map(|(id, j)| job_json(id, j)).collect();
        list.sort_by(|a, b| a["Id"].as_str().cmp(&b["Id"].as_str()));
        list
    }

    /// `GetJob` and its getters.
    pub(crate) fn info(&self, id: &str) -> Result<Json> {
        let jobs = self.lock();
        let job = jobs.get(id).ok_or(JobsError::NotFound)?;
        Ok(job_json(id, job))
    }

    /// `AddFileWithRanges`.
    pub(crate) fn add_file(&self, id: &str, body: &Json) -> Result<usize> {
        let text = |k: &str| body.get(k).and_then(Json::as_str).map(str::to_owned);
        let remote = text("RemoteUrl").ok_or(JobsError::Refused(E_INVALIDARG))?;
        let local = PathBuf::from(text("LocalName").unwrap_or_default());
        if !crate::manager::valid_uri(&remote)
            || local.as_os_str().is_empty()
            || !local.is_absolute()
        {
            return Err(JobsError::Refused(E_INVALIDARG));
        }
        let ranges = match body.get("Ranges") {
            None | Some(Json::Null) => None,
            Some(r) => Some(parse_ranges(r)?),
        };
        let mut jobs = self.lock();
        let job = jobs.get_mut(id).ok_or(JobsError::NotFound)?;
        if job.record.state.is_final() {
            return Err(JobsError::Refused(DO_E_INVALID_STATE));
        }
        if job.files.iter().any(|f| f.record.local == local) {
            return Err(JobsError::Refused(E_INVALIDARG));
        }
        let record = FileRecord {
            file_id: text("FileId").unwrap_or_default(),
            remote,
            previous_remote: None,
            local,
            ranges,
            size_hint: body
                .get("FileSize")
                .and_then(Json::as_u64)
                .filter(|&s| s != TO_EOF),
            bytes_total: None,
            bytes_done: 0,
            bytes_from_http: 0,
            bytes_from_peers: 0,
            bytes_from_group_peers: 0,
            bytes_from_internet_peers: 0,
            transferred: false,
            completed: false,
            started_unix_ms: 0,
            finished_unix_ms: 0,
        };
        job.files.push(File {
            record,
            download: None,
            headers: None,
        });
        if job.record.state == JobState::Transferred {
            job.record.state = JobState::Suspended;
        }
        touch(&mut job.record);
        let index = job.files.len() - 1;
        notify_modified(id, job);
        drop(jobs);
        self.save(id);
        Ok(index)
    }

    /// `EnumFiles`, or one file with its response headers and statistics.
    pub(crate) fn files(&self, id: &str, index: Option<usize>) -> Result<Json> {
        let jobs = self.lock();
        let job = jobs.get(id).ok_or(JobsError::NotFound)?;
        match index {
            None => Ok(
                json!({ "Files": job.files.iter().enumerate().map(|(i, f)| file_json(i, f)).collect::<Vec<_>>() }),
            ),
            Some(i) => {
                let f = job.files.get(i).ok_or(JobsError::Refused(E_INVALIDARG))?;
                let mut v = file_json(i, f);
                v["HttpResponseHeaders"] = Json::from(f.headers.as_deref().unwrap_or_default());
                v["Stats"] = stats_json(&job.record, f, self.download_mode);
                Ok(v)
            }
        }
    }

    /// `Resume`.
    pub(crate) async fn resume(&self, id: &str) -> Result<()> {
        {
            let mut jobs = self.lock();
            let job = jobs.get_mut(id).ok_or(JobsError::NotFound)?;
            match job.record.state {
                s if s.is_final() => return Err(JobsError::Refused(DO_E_INVALID_STATE)),
                _ if job.files.is_empty() => return Err(JobsError::Refused(DO_E_JOB_EMPTY)),
                JobState::Queued | JobState::Transferring | JobState::Transferred => return Ok(()),
                _ => {
                    job.record.state = JobState::Queued;
                    job.record.error = None;
                    touch(&mut job.record);
                }
            }
        }
        self.save(id);
        self.resume_files(id).await
    }

    /// `Suspend`.
    pub(crate) async fn suspend(&self, id: &str) -> Result<()> {
        let calls = {
            let mut jobs = self.lock();
            let job = jobs.get_mut(id).ok_or(JobsError::NotFound)?;
            match job.record.state {
                s if s.is_final() => return Err(JobsError::Refused(DO_E_INVALID_STATE)),
                JobState::Suspended | JobState::Transferred => return Ok(()),
                _ => {}
            }
            job.record.state = JobState::Suspended;
            touch(&mut job.record);
            job.files
                .iter()
                .filter(|f| !f.record.transferred)
                .filter_map(|f| f.download.as_ref().map(|(d, _)| NodeCall::Pause(*d)))
                .collect()
        };
        self.run(calls).await;
        self.save(id);
        Ok(())
    }

    /// `Cancel`: temporary files are deleted.
    pub(crate) async fn cancel(&self, id: &str) -> Result<()> {
        self.end(id, JobState::Cancelled).await
    }

    /// `Complete`: transferred files appear under their local names, partial ones are dropped.
    pub(crate) async fn complete(&self, id: &str) -> Result<()> {
        self.end(id, JobState::Acknowledged).await
    }

    /// `SetPriority`.
    pub(crate) async fn set_priority(&self, id: &str, priority: u64) -> Result<()> {
        if priority > 3 {
            return Err(JobsError::Refused(E_INVALIDARG));
        }
        let calls = self.update(id, |job| {
            job.record.priority = priority as u32;
            live(job)
                .map(|d| NodeCall::Foreground(d, priority == 0))
                .collect()
        })?;
        self.run(calls).await;
        Ok(())
    }

    /// `SetNoProgressTimeout`.
    pub(crate) async fn set_no_progress_timeout(&self, id: &str, seconds: u64) -> Result<()> {
        let calls = self.update(id, |job| {
            job.record.no_progress_timeout = seconds;
            live(job).map(|d| NodeCall::Timeout(d, seconds)).collect()
        })?;
        self.run(calls).await;
        Ok(())
    }

    /// `SetNotifyFlags`.
    pub(crate) fn set_notify_flags(&self, id: &str, flags: u64) -> Result<()> {
        if flags & u64::from(NOTIFY_DISABLE | NOTIFY_FILE_RANGES_TRANSFERRED) != 0 {
            return Err(JobsError::Refused(E_NOTIMPL));
        }
        if flags > 0x3F {
            return Err(JobsError::Refused(E_INVALIDARG));
        }
        self.update(id, |job| {
            job.record.notify_flags = flags as u32;
            Vec::new()
        })
        .map(drop)
    }

    /// `Job5::GetProperty`.
    pub(crate) fn property(&self, id: &str, name: &str) -> Result<Json> {
        let which = job5_property(name)?;
        let jobs = self.lock();
        let job = jobs.get(id).ok_or(JobsError::NotFound)?;
        let value = match which {
            1 => Json::from(job.record.cost_flags),
            _ => Json::from(job.record.notify_clsid.clone()),
        };
        let name = if which == 1 {
            "COST_FLAGS"
        } else {
            "NOTIFICATION_CLSID"
        };
        Ok(json!({ "Property": name, "Id": which, "Value": value }))
    }

    /// `Job5::SetProperty`.
    pub(crate) fn set_property(&self, id: &str, name: &str, value: &Json) -> Result<()> {
        let which = job5_property(name)?;
        match which {
            1 => {
                let flags = value
                    .as_u64()
                    .filter(|&v| v <= u64::from(u32::MAX))
                    .ok_or(JobsError::Refused(E_INVALIDARG))?;
                self.update(id, |job| {
                    job.record.cost_flags = flags;
                    Vec::new()
                })
            }
            _ => {
                let clsid = value
                    .as_str()
                    .ok_or(JobsError::Refused(E_INVALIDARG))?
                    .to_owned();
                let null = clsid
                    .trim_matches(['{', '}'])
                    .chars()
                    .all(|c| c == '0' || c == '-');
                self.update(id, |job| {
                    job.record.notify_clsid = if null { String::new() } else { clsid };
                    Vec::new()
                })
            }
        }
        .map(drop)
    }

    /// `GetError`.
    pub(crate) fn error(&self, id: &str) -> Result<Json> {
        let jobs = self.lock();
        let job = jobs.get(id).ok_or(JobsError::NotFound)?;
        let (Some(error), JobState::Error | JobState::TransientError) =
            (&job.record.error, job.record.state)
        else {
            return Err(JobsError::Refused(DO_E_ERROR_INFORMATION_UNAVAILABLE));
        };
        let (context, value) = error.context();
        Ok(json!({
            "Context": context,
            "ContextValue": value,
            "ErrorCode": error.code,
            "File": error.file,
            "Description": crate::v1::describe(error.code),
        }))
    }

    /// `File2::SetRemoteName`: the file continues at the same offset when the new URL serves
    /// the same length and validators (the cache rebinds its blocks), and restarts otherwise.
    pub(crate) async fn set_remote_name(&self, id: &str, index: usize, url: &str) -> Result<()> {
        if !crate::manager::valid_uri(url) || url.len() > 2200 {
            return Err(JobsError::Refused(E_INVALIDARG));
        }
        let (calls, active) = {
            let mut jobs = self.lock();
            let job = jobs.get_mut(id).ok_or(JobsError::NotFound)?;
            if job.record.state.is_final() {
                return Err(JobsError::Refused(DO_E_INVALID_STATE));
            }
            let active = job.record.state.is_active();
            let f = job
                .files
                .get_mut(index)
                .ok_or(JobsError::Refused(E_INVALIDARG))?;
            let calls: Vec<_> = f
                .download
                .take()
                .map(|(d, _)| NodeCall::Abort(d))
                .into_iter()
                .collect();
            f.record.previous_remote =
                Some(std::mem::replace(&mut f.record.remote, url.to_owned()));
            f.record.transferred = false;
            f.record.bytes_done = 0;
            touch(&mut job.record);
            (calls, active)
        };
        self.run(calls).await;
        self.save(id);
        if active {
            self.resume_files(id).await?;
        }
        Ok(())
    }

    /// Subscribes to the job's notifications.
    pub(crate) fn subscribe(
        &self,
        id: &str,
    ) -> Result<(broadcast::Receiver<(&'static str, String)>, Json)> {
        let jobs = self.lock();
        let job = jobs.get(id).ok_or(JobsError::NotFound)?;
        Ok((job.events.subscribe(), job_json(id, job)))
    }

    /// Follows every active job's files: progress, transfers, errors, state changes.
    pub(crate) async fn tick(&self) {
        let mut calls = Vec::new();
        let mut changed = Vec::new();
        {
            let mut jobs = self.lock();
            let now = unix_now();
            for (id, job) in jobs.iter_mut() {
                if !job.record.state.is_final()
                    && now.saturating_sub(job.record.created) > MAX_JOB_AGE.as_secs()
                {
                    warn!(job = %id, "job older than 30 days: cancelled (DO_E_JOB_TOO_OLD)");
                    calls.extend(live(job).map(NodeCall::Abort));
                    for f in &job.files {
                        let _ = std::fs::remove_file(temp_path(&f.record.local, id));
                    }
                    job.record.state = JobState::Cancelled;
                    changed.push(id.clone());
                    continue;
                }
                if !job.record.state.is_active() {
                    continue;
                }
                if observe(id, job, &mut calls) {
                    changed.push(id.clone());
                }
            }
        }
        self.run(calls).await;
        for id in changed {
            self.save(&id);
        }
    }

    /// Starts (or resumes) the download of every file not yet transferred.
    async fn resume_files(&self, id: &str) -> Result<()> {
        let calls = {
            let mut jobs = self.lock();
            let job = jobs.get_mut(id).ok_or(JobsError::NotFound)?;
            if job.record.state != JobState::Queued && job.record.state.is_active() {
                // A restored job goes back to the queue while its downloads start.
                job.record.state = JobState::Queued;
            }
            let (foreground, timeout) = (job.record.priority == 0, job.record.no_progress_timeout);
            let mut calls = Vec::new();
            for (i, f) in job
                .files
                .iter_mut()
                .enumerate()
                .filter(|(_, f)| !f.record.transferred)
            {
                match &f.download {
                    Some((d, rx)) if rx.borrow().status.state == DlState::Paused => {
                        calls.push(NodeCall::Resume(*d))
                    }
                    Some(_) => {}
                    None => {
                        if f.record.started_unix_ms == 0 {
                            f.record.started_unix_ms = unix_now_ms();
                        }
                        let request =
                            Request {
                                url: f.record.remote.clone(),
                                output: temp_path(&f.record.local, id),
                                ranges: f.record.ranges.as_ref().map(|r| {
                                    r.iter().map(|&(s, e)| ByteRange::new(s, e)).collect()
                                }),
                                layout: Layout::Concatenated,
                                content_id: None,
                                overwrite: true,
                                headers: Headers::default(),
                                no_progress_timeout: Some(Duration::from_secs(timeout)),
                                foreground,
                                previous_url: f.record.previous_remote.clone(),
                            };
                        calls.push(NodeCall::Start(id.to_owned(), i, Box::new(request)));
                    }
                }
            }
            calls
        };
        self.run(calls).await;
        Ok(())
    }

    /// Cancel or Complete.
    async fn end(&self, id: &str, state: JobState) -> Result<()> {
        let calls = {
            let mut jobs = self.lock();
            let job = jobs.get_mut(id).ok_or(JobsError::NotFound)?;
            if job.record.state.is_final() {
                return Err(JobsError::Refused(DO_E_INVALID_STATE));
            }
            let mut calls = Vec::new();
            for f in &mut job.files {
                if let Some((d, _)) = f.download.take() {
                    calls.push(if f.record.transferred {
                        NodeCall::Finalize(d)
                    } else {
                        NodeCall::Abort(d)
                    });
                }
                let temp = temp_path(&f.record.local, id);
                if state == JobState::Acknowledged && f.record.transferred {
                    // One rename per file: the local name shows the whole file or nothing.
                    match std::fs::rename(&temp, &f.record.local) {
                        Ok(()) => f.record.completed = true,
                        Err(e) => {
                            warn!(file = %f.record.local.display(), error = %e, "could not complete the file")
                        }
                    }
                } else {
                    let _ = std::fs::remove_file(&temp);
                }
            }
            job.record.state = state;
            touch(&mut job.record);
            notify_modified(id, job);
            // Whatever the flags, event streams of an ended job close.
            let _ = job.events.send((END_OF_EVENTS, String::new()));
            calls
        };
        self.run(calls).await;
        self.save(id);
        Ok(())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Job) -> Vec<NodeCall>) -> Result<Vec<NodeCall>> {
        let calls = {
            let mut jobs = self.lock();
            let job = jobs.get_mut(id).ok_or(JobsError::NotFound)?;
            if job.record.state.is_final() {
                return Err(JobsError::Refused(DO_E_INVALID_STATE));
            }
            let calls = f(job);
            touch(&mut job.record);
            notify_modified(id, job);
            calls
        };
        self.save(id);
        Ok(calls)
    }

    /// Carries out node calls (never under the table lock).
    async fn run(&self, calls: Vec<NodeCall>) {
        for call in calls {
            let result = match call {
                NodeCall::Start(id, index, request) => match self.node.download(*request).await {
                    Ok(Download { id: did, progress }) => {
                        if let Some(f) = self
                            .lock()
                            .get_mut(&id)
                            .and_then(|j| j.files.get_mut(index))
                        {
                            f.download = Some((did, progress));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                NodeCall::Pause(d) => self.node.pause(d).await,
                NodeCall::Resume(d) => self.node.resume(d).await,
                NodeCall::Abort(d) => self.node.abort(d).await,
                NodeCall::Finalize(d) => self.node.finalize(d).await,
                NodeCall::Foreground(d, fg) => self.node.set_foreground(d, fg).await,
                NodeCall::Timeout(d, s) => {
                    self.node
                        .set_no_progress_timeout(d, Duration::from_secs(s))
                        .await
                }
            };
            if let Err(e) = result {
                // Calls race with downloads ending on their own; the next tick sees the truth.
                tracing::debug!(error = %e, "node call refused");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().expect("job table lock")
    }

    fn save(&self, id: &str) {
        let record = self.lock().get(id).map(|j| {
            let mut r = j.record.clone();
            r.files = j.files.iter().map(|f| f.record.clone()).collect();
            r
        });
        if let Some(record) = record {
            self.saved.put(id, &record);
        }
    }
}

/// Reads a job's file downloads and moves the job along; true when it changed.
fn observe(id: &str, job: &mut Job, calls: &mut Vec<NodeCall>) -> bool {
    let before = (job.record.state, job.record.error.clone(), progress_of(job));
    let mut fatal = None;
    let mut transient = None;
    let mut moving = false;
    for (i, f) in job.files.iter_mut().enumerate() {
        let Some((did, rx)) = &f.download else {
            continue;
        };
        let p = rx.borrow().clone();
        f.headers = p.response_headers.clone();
        f.record.bytes_from_http = p.bytes_from_http;
        f.record.bytes_from_peers = p.bytes_from_peers;
        f.record.bytes_from_group_peers = p.bytes_from_group_peers;
        f.record.bytes_from_internet_peers = p.bytes_from_internet_peers;
        if p.status.bytes_total > 0 || p.status.state == DlState::Transferred {
            f.record.bytes_total = Some(p.status.bytes_total);
        }
        f.record.bytes_done = p.status.bytes_transferred;
        match p.status.state {
            DlState::Transferred if !f.record.transferred => {
                f.record.transferred = true;
                f.record.finished_unix_ms = unix_now_ms();
                calls.push(NodeCall::Finalize(*did));
                let data = file_json(i, f).to_string();
                emit_to(
                    &job.events,
                    job.record.notify_flags,
                    NOTIFY_FILE_TRANSFERRED,
                    "FileTransferred",
                    data,
                );
            }
            DlState::Paused if p.status.error != 0 => {
                fatal = fatal.or(Some(JobError {
                    code: p.status.error,
                    file: Some(i),
                }))
            }
            DlState::Paused if p.status.extended_error != 0 => {
                transient = transient.or(Some(JobError {
                    code: p.status.extended_error,
                    file: Some(i),
                }))
            }
            DlState::Transferring => moving = true,
            _ => {}
        }
    }
    for f in job.files.iter_mut().filter(|f| f.record.transferred) {
        f.download = None;
    }
    if let Some(error) = fatal {
        // One fatal error stops the job: the other files pause with it.
        calls.extend(live(job).map(NodeCall::Pause));
        job.record.state = JobState::Error;
        job.record.error = Some(error);
    } else if job.files.iter().all(|f| f.record.transferred) {
        job.record.state = JobState::Transferred;
        job.record.transferred_at = unix_now();
    } else if let Some(error) = transient.clone().filter(|_| !moving) {
        job.record.state = JobState::TransientError;
        job.record.error = Some(error);
    } else if moving || job.record.state == JobState::TransientError && transient.is_none() {
        job.record.state = JobState::Transferring;
        job.record.error = None;
    }
    let after = (job.record.state, job.record.error.clone(), progress_of(job));
    if before == after {
        return false;
    }
    touch(&mut job.record);
    let data = job_json(id, job).to_string();
    if before.0 != after.0 {
        match after.0 {
            JobState::Transferred => emit(job, NOTIFY_TRANSFERRED, "JobTransferred", data.clone()),
            JobState::Error => emit(job, NOTIFY_ERROR, "JobError", data.clone()),
            _ => {}
        }
    }
    emit(job, NOTIFY_MODIFICATION, "JobModification", data);
    true
}

/// The live downloads of a job's unfinished files.
fn live(job: &Job) -> impl Iterator<Item = DownloadId> + '_ {
    job.files
        .iter()
        .filter(|f| !f.record.transferred)
        .filter_map(|f| f.download.as_ref().map(|(d, _)| *d))
}

/// `JobModification`, with the job as it is now.
fn notify_modified(id: &str, job: &Job) {
    emit(
        job,
        NOTIFY_MODIFICATION,
        "JobModification",
        job_json(id, job).to_string(),
    );
}

fn emit(job: &Job, flag: u32, kind: &'static str, data: String) {
    emit_to(&job.events, job.record.notify_flags, flag, kind, data);
}

fn emit_to(
    events: &broadcast::Sender<(&'static str, String)>,
    flags: u32,
    flag: u32,
    kind: &'static str,
    data: String,
) {
    if flags & flag != 0 {
        // No subscriber is fine: a client that missed events re-reads the job.
        let _ = events.send((kind, data));
    }
}

fn progress_of(job: &Job) -> (u64, u64, usize) {
    let total = job
        .files
        .iter()
        .try_fold(0u64, |acc, f| f.record.bytes_total.map(|t| acc + t));
    let done = job.files.iter().map(|f| f.record.bytes_done).sum();
    let files = job.files.iter().filter(|f| f.record.transferred).count();
    (total.unwrap_or(TO_EOF), done, files)
}

fn job_json(id: &str, job: &Job) -> Json {
    let r = &job.record;
    let (total, done, files) = progress_of(job);
    json!({
        "Id": id,
        "DisplayName": r.display_name,
        "Type": 0,
        "State": r.state.name(),
        "StateValue": r.state as u32,
        "Priority": r.priority,
        "NoProgressTimeout": r.no_progress_timeout,
        "NotifyFlags": r.notify_flags,
        "Progress": { "BytesTotal": total, "BytesTransferred": done, "FilesTotal": job.files.len(), "FilesTransferred": files },
        "Times": { "CreationTime": r.created, "ModificationTime": r.modified, "TransferCompletionTime": r.transferred_at },
    })
}

fn file_json(index: usize, f: &File) -> Json {
    let r = &f.record;
    json!({
        "Index": index,
        "FileId": r.file_id,
        "RemoteName": r.remote,
        "LocalName": r.local,
        "Ranges": r.ranges.as_ref().map(|v| v.iter().map(|&(s, e)| json!({ "InitialOffset": s, "Length": if e == TO_EOF { TO_EOF } else { e - s } })).collect::<Vec<_>>()),
        "Progress": { "BytesTotal": r.bytes_total.or(r.size_hint).unwrap_or(TO_EOF), "BytesTransferred": r.bytes_done, "Completed": r.completed },
    })
}

/// `DOSwarmStats`. Bytes served to peers are counted node-wide (`/v1/stats`), not per file.
/// `DownloadMode` is the node's (0 HTTP only, 1 LAN, 2 Group, 3 Internet).
fn stats_json(job: &JobRecord, f: &File, download_mode: u32) -> Json {
    let r = &f.record;
    let end = if r.finished_unix_ms > 0 {
        r.finished_unix_ms
    } else {
        unix_now_ms()
    };
    let status = match (r.transferred, job.state) {
        (true, _) => "Complete",
        (false, JobState::Transferring | JobState::Queued) => "Downloading",
        _ => "Paused",
    };
    json!({
        "FileId": r.file_id,
        "SourceUrl": r.remote,
        "FileSize": r.bytes_total.unwrap_or(TO_EOF),
        "TotalBytesDownloaded": r.bytes_done,
        "BytesFromHttp": r.bytes_from_http,
        "BytesFromLanPeers": r.bytes_from_peers, "BytesFromGroupPeers": r.bytes_from_group_peers, "BytesFromInternetPeers": r.bytes_from_internet_peers,
        "BytesToLanPeers": 0, "BytesToGroupPeers": 0, "BytesToInternetPeers": 0,
        "HttpConnectionCount": u32::from(r.started_unix_ms > 0),
        "LanConnectionCount": 0, "GroupConnectionCount": 0, "InternetConnectionCount": 0,
        "DownloadDuration": if r.started_unix_ms > 0 { end.saturating_sub(r.started_unix_ms) } else { 0 },
        "DownloadMode": download_mode,
        "Status": status,
        "IsBackground": job.priority != 0,
    })
}

/// BITS ranges (`InitialOffset`, `Length`) to sorted, checked `[start, end)` pairs.
fn parse_ranges(v: &Json) -> Result<Vec<(u64, u64)>> {
    let list = v.as_array().ok_or(JobsError::Refused(E_INVALIDARG))?;
    let mut out = Vec::new();
    for r in list {
        let offset = r
            .get("InitialOffset")
            .and_then(Json::as_u64)
            .ok_or(JobsError::Refused(E_INVALIDARG))?;
        let length = r
            .get("Length")
            .and_then(Json::as_u64)
            .ok_or(JobsError::Refused(E_INVALIDARG))?;
        if length == 0 || offset == TO_EOF {
            return Err(JobsError::Refused(DO_E_INVALID_RANGE));
        }
        out.push((offset, offset.saturating_add(length)));
    }
    let mut sorted = out.clone();
    sorted.sort();
    if sorted.windows(2).any(|w| w[0].1 > w[1].0) || out.is_empty() {
        return Err(JobsError::Refused(if out.is_empty() {
            E_INVALIDARG
        } else {
            DO_E_OVERLAPPING_RANGES
        }));
    }
    Ok(out)
}

fn job5_property(name: &str) -> Result<u32> {
    match name.to_ascii_uppercase().as_str() {
        "1" | "COST_FLAGS" => Ok(1),
        "2" | "NOTIFICATION_CLSID" => Ok(2),
        "3"
        | "4"
        | "5"
        | "7"
        | "9"
        | "10"
        | "DYNAMIC_CONTENT"
        | "HIGH_PERFORMANCE"
        | "MAX_DOWNLOAD_SIZE"
        | "USE_STORED_CREDENTIALS"
        | "MINIMUM_NOTIFICATION_INTERVAL_MS"
        | "ON_DEMAND_MODE" => Err(JobsError::Refused(E_NOTIMPL)),
        _ => Err(JobsError::Refused(E_INVALIDARG)),
    }
}

/// Where a job's file is built before `complete`.
fn temp_path(local: &Path, job: &str) -> PathBuf {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    local.with_file_name(format!(".{name}.donode-job-{job}.tmp"))
}

fn touch(record: &mut JobRecord) {
    record.modified = unix_now();
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_ranges_are_checked() {
        assert_eq!(
            parse_ranges(&json!([{ "InitialOffset": 5, "Length": 0 }])),
            Err(JobsError::Refused(DO_E_INVALID_RANGE))
        );
        assert_eq!(
            parse_ranges(&json!([{ "InitialOffset": TO_EOF, "Length": 1 }])),
            Err(JobsError::Refused(DO_E_INVALID_RANGE))
        );
        assert_eq!(
            parse_ranges(
                &json!([{ "InitialOffset": 0, "Length": 10 }, { "InitialOffset": 5, "Length": 1 }])
            ),
            Err(JobsError::Refused(DO_E_OVERLAPPING_RANGES))
        );
        assert_eq!(
            parse_ranges(&json!([{ "InitialOffset": 100, "Length": TO_EOF }])),
            Ok(vec![(100, TO_EOF)])
        );
    }

    #[test]
    fn only_a_403_is_a_remote_file_error() {
        assert_eq!(
            JobError {
                code: HTTP_E_STATUS_FORBIDDEN,
                file: None
            }
            .context(),
            ("REMOTE_FILE", 5)
        );
        assert_eq!(
            JobError {
                code: 0x8019_0194,
                file: None
            }
            .context(),
            ("NONE", 0)
        );
    }

    #[test]
    fn job5_properties() {
        assert_eq!(job5_property("cost_flags"), Ok(1));
        assert_eq!(job5_property("2"), Ok(2));
        assert_eq!(job5_property("3"), Err(JobsError::Refused(E_NOTIMPL)));
        assert_eq!(job5_property("99"), Err(JobsError::Refused(E_INVALIDARG)));
    }
}
