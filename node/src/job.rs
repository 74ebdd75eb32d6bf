//! `donode job ...`: BITS-compatible jobs in a running daemon.

use std::process::ExitCode;

use anyhow::Context;
use do_api::{FileRange, Job};

use crate::ctl::Daemon;

/// The job commands.
#[derive(clap::Subcommand)]
pub(crate) enum JobCommand {
    /// Create a job (it starts SUSPENDED); prints its id.
    Create {
        #[command(flatten)]
        daemon: Daemon,
        /// The display name (1 to 256 characters).
        name: String,
    },
    /// Add a file to a job.
    Add {
        #[command(flatten)]
        daemon: Daemon,
        /// The job's id.
        id: String,
        /// The remote URL.
        url: String,
        /// The local file (an absolute path is made of a relative one).
        local: std::path::PathBuf,
        /// Only this byte range, `OFFSET:LENGTH` (LENGTH may be `eof`). Repeatable.
        #[arg(long = "range", value_name = "OFFSET:LENGTH")]
        ranges: Vec<String>,
    },
    /// Resume (start) a job.
    Resume(JobId),
    /// Suspend a job.
    Suspend(JobId),
    /// Cancel a job (its temporary files are deleted).
    Cancel(JobId),
    /// Complete a job: its transferred files appear under their local names.
    Complete(JobId),
    /// Print a job's state, progress and times.
    Info(JobId),
    /// List a job's files.
    Files(JobId),
    /// Print a job's error (only in ERROR or TRANSIENT_ERROR).
    Error(JobId),
    /// List every job.
    List {
        #[command(flatten)]
        daemon: Daemon,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's notifications as they happen.
    Watch(JobId),
}

/// A job id, and JSON output for the read commands.
#[derive(clap::Args)]
pub(crate) struct JobId {
    #[command(flatten)]
    daemon: Daemon,
    /// The job's id.
    id: String,
    /// JSON output (read commands).
    #[arg(long)]
    json: bool,
}

impl JobId {
    async fn job(&self) -> anyhow::Result<Job> {
        Ok(self.daemon.connect().await?.job(&self.id))
    }
}

pub(crate) async fn run(command: JobCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobCommand::Create { daemon, name } => {
            let job = daemon.connect().await?.create_job(&name).await?;
            println!("{}", job.id());
        }
        JobCommand::Add {
            daemon,
            id,
            url,
            local,
            ranges,
        } => {
            let local = std::path::absolute(&local).context("local name")?;
            let ranges = if ranges.is_empty() {
                None
            } else {
                Some(
                    ranges
                        .iter()
                        .map(|r| parse_range(r))
                        .collect::<anyhow::Result<Vec<_>>>()?,
                )
            };
            let job = daemon.connect().await?.job(&id);
            let file = job
                .add_file(&url, &local.display().to_string(), ranges)
                .await?;
            println!("{}", file.index());
        }
        JobCommand::Resume(j) => j.job().await?.resume().await?,
        JobCommand::Suspend(j) => j.job().await?.suspend().await?,
        JobCommand::Cancel(j) => j.job().await?.cancel().await?,
        JobCommand::Complete(j) => j.job().await?.complete().await?,
        JobCommand::Info(j) => {
            let info = j.job().await?.info().await?;
            if j.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                let p = info.progress;
                println!(
                    "{} {} {} files {}/{} bytes {}/{}",
                    info.id,
                    info.display_name,
                    info.state,
                    p.files_transferred,
                    p.files_total,
                    p.bytes_transferred,
                    if p.bytes_total == u64::MAX {
                        "?".to_owned()
                    } else {
                        p.bytes_total.to_string()
                    }
                );
            }
        }
        JobCommand::Files(j) => {
            let files = j.job().await?.files().await?;
            if j.json {
                println!("{}", serde_json::to_string(&files)?);
            } else {
                for f in files {
                    let done = if f.progress.completed {
                        "completed"
                    } else {
                        ""
                    };
                    println!(
                        "{} {} -> {} {}/{} {done}",
                        f.index,
                        f.remote_name,
                        f.local_name,
                        f.progress.bytes_transferred,
                        f.progress.bytes_total
                    );
                }
            }
        }
        JobCommand::Error(j) => {
            let e = j.job().await?.error().await?;
            if j.json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                println!(
                    "{:#010x} {} (context {}, file {:?})",
                    e.error_code, e.description, e.context, e.file
                );
            }
        }
        JobCommand::List { daemon, json } => {
            let jobs = daemon.connect().await?.jobs().await?;
            if json {
                println!("{}", serde_json::to_string(&jobs)?);
            } else {
                for j in jobs {
                    println!("{} {} {}", j.id, j.state, j.display_name);
                }
            }
        }
        JobCommand::Watch(j) => {
            let mut events = j.job().await?.events().await?;
            while let Some((kind, data)) = events.next().await? {
                if j.json {
                    println!("{}", serde_json::json!({ "Event": kind, "Data": data }));
                } else {
                    println!("{kind} {}", data["State"].as_str().unwrap_or_default());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_range(s: &str) -> anyhow::Result<FileRange> {
    let (offset, length) = s.split_once(':').context("a range is OFFSET:LENGTH")?;
    let length = match length {
        "eof" => u64::MAX,
        n => n.parse().context("LENGTH is a number or `eof`")?,
    };
    Ok(FileRange {
        initial_offset: offset.parse().context("OFFSET is a number")?,
        length,
    })
}
