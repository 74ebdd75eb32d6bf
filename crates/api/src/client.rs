//! A typed client for the daemon's `/v1` API, in DO's vocabulary.

use std::{path::Path, time::Duration};

use serde_json::{Value as Json, json};

use crate::{ErrorBody, Property, Range, StartRequest, Status};

/// `DO_E_NO_SERVICE`: no daemon answers (no port file, or a stale one).
pub const DO_E_NO_SERVICE: u32 = 0x80D0_1001;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon runs (`DO_E_NO_SERVICE`).
    #[error("no donode daemon is running (no live port file in {0})")]
    NoService(String),
    /// The daemon refused the call.
    #[error("{message} (error {code:#010x})")]
    Api {
        /// The HRESULT.
        code: u32,
        /// The daemon's description.
        message: String,
    },
    /// The daemon could not be reached or answered something unreadable.
    #[error("talking to the daemon: {0}")]
    Transport(String),
}

impl ClientError {
    /// The HRESULT of the failure.
    pub fn code(&self) -> u32 {
        match self {
            Self::NoService(_) => DO_E_NO_SERVICE,
            Self::Api { code, .. } => *code,
            Self::Transport(_) => DO_E_NO_SERVICE,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// `IDOManager`: creates and enumerates downloads of one daemon. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Manager {
    base: String,
    http: reqwest::Client,
}

/// One entry of [`Manager::enumerate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The download's id.
    pub id: String,
    /// Its `Uri`, `ContentId`, `DisplayName` and `LocalPath`.
    pub properties: serde_json::Map<String, Json>,
}

/// A download's bytes by source (the `Stats` of `GET /v1/downloads/ID`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// From the HTTP origin (`BytesFromHttp`).
    pub http: u64,
    /// From LAN peers (`BytesFromLanPeers`).
    pub lan_peers: u64,
    /// From the members of the node's group (`BytesFromGroupPeers`).
    pub group_peers: u64,
    /// From peers beyond the LAN (`BytesFromInternetPeers`).
    pub internet_peers: u64,
    /// Already verified in the daemon's cache (`BytesFromCache`).
    pub cache: u64,
}

impl Manager {
    /// Finds the daemon through the newest `restport*` file in `run_dir` (as the DO SDK does)
    /// and checks that it answers.
    pub async fn connect(run_dir: &Path) -> Result<Self> {
        let no_service = || ClientError::NoService(run_dir.display().to_string());
        let newest = std::fs::read_dir(run_dir)
            .map_err(|_| no_service())?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("restport"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .max()
            .ok_or_else(no_service)?
            .1;
        let port: u16 = std::fs::read_to_string(&newest)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .ok_or_else(no_service)?;
        let manager = Self::at_port(port);
        manager.enumerate(None).await.map_err(|_| no_service())?;
        Ok(manager)
    }

    /// A manager for the daemon listening on 127.0.0.1:`port`.
    pub fn at_port(port: u16) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            base: format!("http://127.0.0.1:{port}/v1"),
            http,
        }
    }

    /// `CreateDownload` with initial properties (name → value).
    pub async fn create(&self, properties: &[(Property, Json)]) -> Result<Download> {
        let body: serde_json::Map<String, Json> = properties
            .iter()
            .map(|(p, v)| (p.name().to_owned(), v.clone()))
            .collect();
        let answer = self
            .call(
                reqwest::Method::POST,
                "/downloads",
                Some(Json::Object(body)),
            )
            .await?;
        let id = answer["Id"]
            .as_str()
            .ok_or_else(|| ClientError::Transport("create answered without an Id".into()))?;
        Ok(self.download(id))
    }

    /// A handle to an existing download (not checked until used).
    pub fn download(&self, id: &str) -> Download {
        Download {
            manager: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Node-wide figures (`GET /v1/stats`): the peer id, connected peers and bytes by source
    /// and destination, with DO's names (`NumPeers`, `BytesFromHttp`, `BytesFromLanPeers`,
    /// `BytesToLanPeers`, ...).
    pub async fn node_stats(&self) -> Result<Json> {
        self.call(reqwest::Method::GET, "/stats", None).await
    }

    /// `EnumDownloads`, optionally filtered by one category (Id, Uri, ContentId, DisplayName,
    /// LocalPath).
    pub async fn enumerate(&self, filter: Option<(Property, &str)>) -> Result<Vec<Listed>> {
        let path = match filter {
            Some((p, v)) => format!("/downloads?{}={}", p.name(), encode(v)),
            None => "/downloads".to_owned(),
        };
        let answer = self.call(reqwest::Method::GET, &path, None).await?;
        let list = answer["Downloads"].as_array().cloned().unwrap_or_default();
        Ok(list
            .into_iter()
            .filter_map(|item| {
                let Json::Object(mut map) = item else {
                    return None;
                };
                let id = map.remove("Id")?.as_str()?.to_owned();
                Some(Listed {
                    id,
                    properties: map,
                })
            })
            .collect())
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<Json> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let ok = response.status().is_success();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if ok {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Transport(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api {
                code: e.error_code,
                message: e.message,
            }),
            Err(_) => Err(ClientError::Transport(
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
        }
    }
}

/// `IDODownload`: one download of the daemon.
#[derive(Clone, Debug)]
pub struct Download {
    manager: Manager,
    id: String,
}

impl Download {
    /// The download's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `Start`: the whole file, or the given ranges.
    pub async fn start(&self, ranges: Option<Vec<Range>>) -> Result<()> {
        let body = serde_json::to_value(StartRequest { ranges }).expect("start requests serialise");
        self.post("start", Some(body)).await
    }

    /// `Pause`.
    pub async fn pause(&self) -> Result<()> {
        self.post("pause", None).await
    }

    /// Resumes a paused download (`Start` without ranges).
    pub async fn resume(&self) -> Result<()> {
        self.post("start", None).await
    }

    /// `Abort`.
    pub async fn abort(&self) -> Result<()> {
        self.post("abort", None).await
    }

    /// `Finalize`.
    pub async fn finalize(&self) -> Result<()> {
        self.post("finalize", None).await
    }

    /// `GetStatus`.
    pub async fn status(&self) -> Result<Status> {
        let v = self.get("status").await?;
        serde_json::from_value(v).map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Bytes by source so far: `(BytesFromHttp, BytesFromCache)`.
    pub async fn stats(&self) -> Result<(u64, u64)> {
        let s = self.sources().await?;
        Ok((s.http, s.cache))
    }

    /// Bytes by source so far.
    pub async fn sources(&self) -> Result<Sources> {
        let v = self
            .manager
            .call(
                reqwest::Method::GET,
                &format!("/downloads/{}", self.id),
                None,
            )
            .await?;
        let n = |k: &str| v["Stats"][k].as_u64().unwrap_or(0);
        Ok(Sources {
            http: n("BytesFromHttp"),
            lan_peers: n("BytesFromLanPeers"),
            group_peers: n("BytesFromGroupPeers"),
            internet_peers: n("BytesFromInternetPeers"),
            cache: n("BytesFromCache"),
        })
    }

    /// `GetProperty`.
    pub async fn property(&self, p: Property) -> Result<Json> {
        Ok(self.get(&format!("properties/{}", p.name())).await?["Value"].take())
    }

    /// `SetProperty`.
    pub async fn set_property(&self, p: Property, value: Json) -> Result<()> {
        let path = format!("/downloads/{}/properties/{}", self.id, p.name());
        self.manager
            .call(reqwest::Method::PUT, &path, Some(json!({ "Value": value })))
            .await
            .map(drop)
    }

    /// Waits until the download is transferred, failed or gone, or `timeout` passes
    /// (`BlockingMode`); returns the status then.
    pub async fn wait(&self, timeout: Duration) -> Result<Status> {
        let v = self
            .get(&format!("wait?TimeoutMs={}", timeout.as_millis()))
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// `IDODownloadStatusCallback`: the status event stream.
    pub async fn events(&self) -> Result<Events> {
        let sse = Sse::open(&self.manager, &format!("/downloads/{}/events", self.id)).await?;
        Ok(Events { sse })
    }

    async fn get(&self, what: &str) -> Result<Json> {
        let path = format!("/downloads/{}/{what}", self.id);
        self.manager.call(reqwest::Method::GET, &path, None).await
    }

    async fn post(&self, what: &str, body: Option<Json>) -> Result<()> {
        let path = format!("/downloads/{}/{what}", self.id);
        self.manager
            .call(reqwest::Method::POST, &path, body)
            .await
            .map(drop)
    }
}

/// A stream of status events (Server-Sent Events).
pub struct Events {
    sse: Sse,
}

impl Events {
    /// The next status, or `None` when the stream ends (the download is gone).
    pub async fn next(&mut self) -> Result<Option<Status>> {
        match self.sse.next().await? {
            Some((_, data)) => serde_json::from_str(&data)
                .map(Some)
                .map_err(|e| ClientError::Transport(e.to_string())),
            None => Ok(None),
        }
    }
}

/// A Server-Sent Events reader: `(event, data)` pairs.
pub(crate) struct Sse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Sse {
    pub(crate) async fn open(manager: &Manager, path: &str) -> Result<Self> {
        let response = manager
            .http
            .get(format!("{}{path}", manager.base))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !response.status().is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            return Err(api_error(&bytes));
        }
        Ok(Self {
            response,
            buffer: Vec::new(),
        })
    }

    pub(crate) async fn next(&mut self) -> Result<Option<(String, String)>> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("message");
                if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Ok(Some((name.to_owned(), data.to_owned())));
                }
                continue;
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(ClientError::Transport(e.to_string())),
            }
        }
    }
}

fn api_error(bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Api {
            code: e.error_code,
            message: e.message,
        },
        Err(_) => ClientError::Transport(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
