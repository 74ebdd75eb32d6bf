//! The daemon's configuration file (TOML); `docs/donode.toml` documents every key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Where `donode run` looks for its configuration when `--config` is not given.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/donode/donode.toml";

/// The file's contents; every key is optional.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) run_dir: Option<PathBuf>,
    pub(crate) admin_config: Option<PathBuf>,
    pub(crate) ports: Option<String>,
    pub(crate) log: Option<String>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) p2p: Option<bool>,
    pub(crate) download_mode: Option<DownloadMode>,
    pub(crate) p2p_port: Option<u16>,
    pub(crate) bootstrap: Option<Vec<String>>,
    pub(crate) transport: Option<Transport>,
    pub(crate) data_lanes: Option<bool>,
    pub(crate) data_lane_port: Option<u16>,
    pub(crate) poll_peers: Option<usize>,
    pub(crate) ring_peers: Option<usize>,
    #[serde(default)]
    pub(crate) group: Group,
    #[serde(default)]
    pub(crate) cache: Cache,
    #[serde(default)]
    pub(crate) download: Download,
    #[serde(default)]
    pub(crate) upload: Upload,
}

/// `[cache]`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cache {
    pub(crate) quota_bytes: Option<u64>,
    pub(crate) max_age_seconds: Option<u64>,
}

/// `[group]`: Group download mode.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Group {
    pub(crate) id: Option<String>,
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<PathBuf>,
}

/// `[download]`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Download {
    pub(crate) origin_connections: Option<usize>,
    pub(crate) no_progress_timeout_seconds: Option<u64>,
    pub(crate) background_yield_rate: Option<u64>,
    pub(crate) min_background_qos: Option<u64>,
}

/// `[upload]`: serving peers.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upload {
    pub(crate) max_rate: Option<u64>,
    pub(crate) slots: Option<usize>,
}

impl Upload {
    /// Upload slots in `mode`: as configured, or the default for the mode (more on a LAN, see
    /// `do_driver::LAN_UPLOAD_SLOTS`).
    pub(crate) fn slots_in(&self, mode: DownloadMode) -> usize {
        self.slots
            .filter(|&n| n > 0)
            .unwrap_or(if mode == DownloadMode::Lan {
                do_driver::LAN_UPLOAD_SLOTS
            } else {
                do_driver::UPLOAD_SLOTS
            })
    }
}

/// DO's download modes (`DODownloadMode`) that donode has.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DownloadMode {
    /// 0: the origin only.
    HttpOnly,
    /// 1: peers on the LAN (mDNS).
    Lan,
    /// 2: the members of a group (needs a group id and secret).
    Group,
    /// 3: LAN peers first, then peers found through the bootstrap peers and the DHT.
    Internet,
}

/// The transport tried first when dialing a peer.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// TCP with noise and yamux.
    #[default]
    Tcp,
    /// QUIC.
    Quic,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl File {
    /// Reads `path`; a missing file is the defaults unless `required`.
    pub(crate) fn load(path: &Path, required: bool) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_states_the_defaults() {
        let text = include_str!("../../docs/donode.toml");
        let file: File = toml::from_str(text).unwrap();
        let store = do_driver::Config::new(PathBuf::new());
        assert_eq!(file.cache.quota_bytes, Some(store.store.quota_bytes));
        assert_eq!(
            file.cache.max_age_seconds,
            Some(store.store.max_age.as_secs())
        );
        assert_eq!(
            file.download.origin_connections,
            Some(store.engine.origin_connections)
        );
        assert_eq!(
            file.download.no_progress_timeout_seconds,
            Some(store.engine.no_progress_timeout.as_secs())
        );
        assert_eq!(
            file.download.background_yield_rate,
            Some(store.background_yield_rate)
        );
        assert_eq!(
            file.download.min_background_qos,
            Some(store.engine.min_background_qos)
        );
        let p2p = do_driver::P2pConfig::default();
        assert_eq!(file.transport, Some(Transport::Tcp));
        assert_eq!(p2p.dial_first, do_driver::Transport::Tcp);
        assert_eq!(file.upload.max_rate, Some(p2p.upload_max_rate.unwrap_or(0)));
        // The slots' default depends on the mode: the example leaves it commented out.
        assert_eq!(file.upload.slots, None);
        assert_eq!(
            file.run_dir.as_deref(),
            Some(Path::new(crate::DEFAULT_RUN_DIR))
        );
        assert_eq!(file.bootstrap, Some(Vec::new()));
        assert_eq!(file.p2p_port, Some(0));
        assert_eq!(file.data_lanes, Some(p2p.data_lanes));
        assert_eq!(file.data_lane_port, Some(p2p.data_lane_listen.port()));
        assert_eq!(file.poll_peers, Some(p2p.poll_peers));
        assert_eq!(file.ring_peers, Some(p2p.ring_peers));
    }

    #[test]
    fn internet_mode_takes_its_bootstrap_peers() {
        let file: File = toml::from_str(
            "download_mode = \"internet\"\nbootstrap = [\"/ip4/10.0.0.1/tcp/4001/p2p/x\"]",
        )
        .unwrap();
        assert_eq!(file.download_mode, Some(DownloadMode::Internet));
        assert_eq!(file.bootstrap.unwrap().len(), 1);
        assert!(toml::from_str::<File>("download_mode = \"simple\"").is_err());
    }

    #[test]
    fn a_group_takes_one_line() {
        let file: File =
            toml::from_str(r#"group = { id = "lab", secret_file = "/etc/donode/group.secret" }"#)
                .unwrap();
        assert_eq!(file.group.id.as_deref(), Some("lab"));
        assert_eq!(
            file.group.secret_file.as_deref(),
            Some(Path::new("/etc/donode/group.secret"))
        );
        assert_eq!(file.group.secret, None);
    }

    #[test]
    fn upload_slots_default_by_mode_unless_set() {
        let unset = Upload::default();
        assert_eq!(
            unset.slots_in(DownloadMode::Lan),
            do_driver::LAN_UPLOAD_SLOTS
        );
        assert_eq!(unset.slots_in(DownloadMode::Group), do_driver::UPLOAD_SLOTS);
        assert_eq!(
            unset.slots_in(DownloadMode::Internet),
            do_driver::UPLOAD_SLOTS
        );
        let file: File = toml::from_str("[upload]\nslots = 6").unwrap();
        assert_eq!(file.upload.slots_in(DownloadMode::Internet), 6);
        assert_eq!(file.upload.slots_in(DownloadMode::Lan), 6);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<File>("colour = 1").is_err());
        assert!(toml::from_str::<File>("[cache]\nquota = 1").is_err());
    }
}
