//! The BITS-compatible job model, client side: [`Job`], [`File`], [`JobError`] over the
//! daemon's `/v1/jobs` (`docs/bits.md`).

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::client::{ClientError, Manager, Sse};

type Result<T> = std::result::Result<T, ClientError>;

/// `BG_FILE_RANGE`: `length` may be `BG_LENGTH_TO_EOF` (`u64::MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileRange {
    /// First byte.
    pub initial_offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// `BG_JOB_PROGRESS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobProgress {
    /// Bytes of all files, `BG_SIZE_UNKNOWN` (`u64::MAX`) until every size is known.
    pub bytes_total: u64,
    /// Bytes transferred.
    pub bytes_transferred: u64,
    /// Files in the job.
    pub files_total: u64,
    /// Files transferred.
    pub files_transferred: u64,
}

/// `BG_JOB_TIMES`, in seconds since the Unix epoch (0: not yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobTimes {
    /// When the job was created.
    pub creation_time: u64,
    /// When it last changed.
    pub modification_time: u64,
    /// When its last file was transferred.
    pub transfer_completion_time: u64,
}

/// What `GetJob` and the job's getters report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobInfo {
    /// The job's GUID.
    pub id: String,
    /// Its display name.
    pub display_name: String,
    /// `BG_JOB_TYPE` (always 0, DOWNLOAD).
    #[serde(rename = "Type")]
    pub job_type: u32,
    /// `BG_JOB_STATE` name (`TRANSFERRING`, ...).
    pub state: String,
    /// `BG_JOB_STATE` value.
    pub state_value: u32,
    /// `BG_JOB_PRIORITY` (0 FOREGROUND ... 3 LOW).
    pub priority: u32,
    /// Seconds without progress before a transient error becomes an error.
    pub no_progress_timeout: u64,
    /// `BG_NOTIFY_*` flags.
    pub notify_flags: u32,
    /// `GetProgress`.
    pub progress: JobProgress,
    /// `GetTimes`.
    pub times: JobTimes,
}

/// `BG_FILE_PROGRESS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileProgress {
    /// The file's bytes (or the sum of its ranges), `u64::MAX` while unknown.
    pub bytes_total: u64,
    /// Bytes transferred.
    pub bytes_transferred: u64,
    /// True once `Complete` made it visible under its local name.
    pub completed: bool,
}

/// What `IBackgroundCopyFile*` report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileInfo {
    /// Its position in the job.
    pub index: u64,
    /// DO's file id (content id or any caller-unique string).
    pub file_id: String,
    /// `GetRemoteName`.
    pub remote_name: String,
    /// `GetLocalName`.
    pub local_name: String,
    /// `GetFileRanges` (`None`: the whole file).
    pub ranges: Option<Vec<FileRange>>,
    /// `GetProgress`.
    pub progress: FileProgress,
}

/// `IBackgroundCopyError`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobError {
    /// `BG_ERROR_CONTEXT` name (`NONE` or `REMOTE_FILE`).
    pub context: String,
    /// `BG_ERROR_CONTEXT` value.
    pub context_value: u32,
    /// The HRESULT.
    pub error_code: u32,
    /// The file concerned, if any (`GetFile`).
    pub file: Option<u64>,
    /// For people.
    pub description: String,
}

impl Manager {
    /// `CreateJob` (a DOWNLOAD job; it starts SUSPENDED).
    pub async fn create_job(&self, display_name: &str) -> Result<Job> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/jobs",
                Some(json!({ "DisplayName": display_name, "Type": 0 })),
            )
            .await?;
        let id = v["Id"]
            .as_str()
            .ok_or_else(|| ClientError::Transport("no Id".into()))?;
        Ok(self.job(id))
    }

    /// A handle to an existing job (`GetJob`; not checked until used).
    pub fn job(&self, id: &str) -> Job {
        Job {
            manager: self.clone(),
            id: id.to_owned(),
        }
    }

    /// `EnumJobs`.
    pub async fn jobs(&self) -> Result<Vec<JobInfo>> {
        let v = self.call(reqwest::Method::GET, "/jobs", None).await?;
        parse(v["Jobs"].clone())
    }
}

/// `IBackgroundCopyJob` (with Job5 and `IDeliveryOptimizationJob`).
#[derive(Clone, Debug)]
pub struct Job {
    manager: Manager,
    id: String,
}

impl Job {
    /// `GetId`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `GetState`, `GetProgress`, `GetTimes` and the other getters at once.
    pub async fn info(&self) -> Result<JobInfo> {
        parse(self.get("").await?)
    }

    /// `AddFileWithRanges` (`ranges: None` for the whole file).
    pub async fn add_file(
        &self,
        remote_url: &str,
        local_name: &str,
        ranges: Option<Vec<FileRange>>,
    ) -> Result<File> {
        let body = json!({ "RemoteUrl": remote_url, "LocalName": local_name, "Ranges": ranges });
        let v = self.post("/files", Some(body)).await?;
        let index = v["Index"]
            .as_u64()
            .ok_or_else(|| ClientError::Transport("no Index".into()))?;
        Ok(File {
            job: self.clone(),
            index,
        })
    }

    /// `EnumFiles`.
    pub async fn files(&self) -> Result<Vec<FileInfo>> {
        parse(self.get("/files").await?["Files"].take())
    }

    /// `Resume`.
    pub async fn resume(&self) -> Result<()> {
        self.post("/resume", None).await.map(drop)
    }

    /// `Suspend`.
    pub async fn suspend(&self) -> Result<()> {
        self.post("/suspend", None).await.map(drop)
    }

    /// `Cancel`.
    pub async fn cancel(&self) -> Result<()> {
        self.post("/cancel", None).await.map(drop)
    }

    /// `Complete`.
    pub async fn complete(&self) -> Result<()> {
        self.post("/complete", None).await.map(drop)
    }

    /// `GetError`.
    pub async fn error(&self) -> Result<JobError> {
        parse(self.get("/error").await?)
    }

    /// `SetPriority` (0 FOREGROUND, 1 HIGH, 2 NORMAL, 3 LOW).
    pub async fn set_priority(&self, priority: u32) -> Result<()> {
        self.put("/priority", json!({ "Priority": priority })).await
    }

    /// `SetNoProgressTimeout`.
    pub async fn set_no_progress_timeout(&self, seconds: u64) -> Result<()> {
        self.put("/no-progress-timeout", json!({ "Seconds": seconds }))
            .await
    }

    /// `SetNotifyFlags`.
    pub async fn set_notify_flags(&self, flags: u32) -> Result<()> {
        self.put("/notify-flags", json!({ "Flags": flags })).await
    }

    /// `IBackgroundCopyCallback`: the job's notifications, as `(event, JSON)` pairs.
    pub async fn events(&self) -> Result<JobEvents> {
        let sse = Sse::open(&self.manager, &format!("/jobs/{}/events", self.id)).await?;
        Ok(JobEvents { sse })
    }

    async fn get(&self, path: &str) -> Result<Json> {
        self.manager
            .call(
                reqwest::Method::GET,
                &format!("/jobs/{}{path}", self.id),
                None,
            )
            .await
    }

    async fn post(&self, path: &str, body: Option<Json>) -> Result<Json> {
        self.manager
            .call(
                reqwest::Method::POST,
                &format!("/jobs/{}{path}", self.id),
                body,
            )
            .await
    }

    async fn put(&self, path: &str, body: Json) -> Result<()> {
        let path = format!("/jobs/{}{path}", self.id);
        self.manager
            .call(reqwest::Method::PUT, &path, Some(body))
            .await
            .map(drop)
    }
}

/// `IBackgroundCopyFile` (with File2 and File5).
#[derive(Clone, Debug)]
pub struct File {
    job: Job,
    index: u64,
}

impl File {
    /// The file's position in its job.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Names, ranges and progress.
    pub async fn info(&self) -> Result<FileInfo> {
        parse(self.job.get(&format!("/files/{}", self.index)).await?)
    }

    /// `File5::GetProperty(HTTP_RESPONSE_HEADERS)`.
    pub async fn http_response_headers(&self) -> Result<String> {
        let v = self.job.get(&format!("/files/{}", self.index)).await?;
        Ok(v["HttpResponseHeaders"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// `File2::SetRemoteName`.
    pub async fn set_remote_name(&self, url: &str) -> Result<()> {
        self.job
            .put(
                &format!("/files/{}/remote-name", self.index),
                json!({ "RemoteName": url }),
            )
            .await
    }
}

/// A job's notifications.
pub struct JobEvents {
    sse: Sse,
}

impl JobEvents {
    /// The next `(event, JSON)`: `JobTransferred`, `JobError`, `JobModification` (the job) or
    /// `FileTransferred` (the file); `None` when the job ended.
    pub async fn next(&mut self) -> Result<Option<(String, Json)>> {
        match self.sse.next().await? {
            Some((name, data)) => {
                let v = serde_json::from_str(&data)
                    .map_err(|e| ClientError::Transport(e.to_string()))?;
                Ok(Some((name, v)))
            }
            None => Ok(None),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Json) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ClientError::Transport(e.to_string()))
}
