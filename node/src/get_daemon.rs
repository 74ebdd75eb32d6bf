//! `donode get` through a running daemon (its `/v1` API).

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use do_api::{Manager, Property, Sources, State, Status};
use serde_json::Value as Json;

use crate::{get::Args, hresult::describe};

/// Creates the download in the daemon, shows its progress, finalizes it; on failure or Ctrl-C
/// aborts it (the daemon removes the output; verified blocks stay in its cache).
pub(crate) async fn run(args: &Args, manager: &Manager) -> anyhow::Result<ExitCode> {
    let output = std::path::absolute(&args.output).context("output path")?;
    if args.force && output.is_file() {
        // The daemon creates its output exclusively, as the DO agent does.
        std::fs::remove_file(&output)
            .with_context(|| format!("{}: cannot replace it", output.display()))?;
    }
    let mut props = vec![
        (Property::Uri, Json::from(args.url.as_str())),
        (
            Property::LocalPath,
            Json::from(output.display().to_string()),
        ),
        (
            Property::NoProgressTimeoutSeconds,
            Json::from(args.no_progress_timeout.max(10)),
        ),
    ];
    if let Some(c) = args.content_id {
        props.push((Property::ContentId, Json::from(c.to_string())));
    }
    if !args.headers.is_empty() {
        let block: String = args.headers.iter().map(|h| format!("{h}\r\n")).collect();
        props.push((Property::HttpCustomHeaders, Json::from(block)));
    }
    let started = Instant::now();
    let download = manager.create(&props).await?;
    if let Err(e) = download.start(None).await {
        let _ = download.abort().await;
        return Err(e.into());
    }
    let mut events = download.events().await?;
    let bar = crate::get::progress_bar();
    let interrupt = crate::get::interrupted();
    tokio::pin!(interrupt);
    let outcome: Option<Status> = loop {
        tokio::select! {
            event = events.next() => match event? {
                Some(s) => {
                    bar.set_length(s.bytes_total);
                    bar.set_position(s.bytes_transferred);
                    if s.state == State::Transferred || s.error != 0 {
                        break Some(s);
                    }
                }
                None => break Some(download.status().await?),
            },
            () = &mut interrupt => break None,
        }
    };
    bar.finish_and_clear();
    match outcome {
        None => {
            download.abort().await?;
            eprintln!(
                "donode: interrupted; verified blocks stay in the daemon's cache and the next run resumes"
            );
            Ok(ExitCode::from(130))
        }
        Some(s) if s.state == State::Transferred => {
            let content_id = download.property(Property::ContentId).await?;
            let sources = download.sources().await?;
            download.finalize().await?;
            report(args, &s, content_id, sources, started.elapsed());
            Ok(ExitCode::SUCCESS)
        }
        Some(s) => {
            let _ = download.abort().await;
            eprintln!(
                "donode: {}: {} (error {:#010x})",
                args.url,
                describe(s.error),
                s.error
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn report(args: &Args, s: &Status, content_id: Json, sources: Sources, elapsed: Duration) {
    let Sources {
        http,
        lan_peers,
        group_peers,
        internet_peers,
        cache,
    } = sources;
    if args.json {
        let summary = serde_json::json!({
            "url": args.url,
            "output": args.output,
            "content_id": content_id,
            "bytes_total": s.bytes_total,
            "BytesFromHttp": http,
            "BytesFromLanPeers": lan_peers,
            "BytesFromGroupPeers": group_peers,
            "BytesFromInternetPeers": internet_peers,
            "BytesFromCache": cache,
            "seconds": elapsed.as_secs_f64(),
            "daemon": true,
        });
        println!("{summary}");
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "{}  {} bytes in {:.2} s through the daemon (from origin {http}, from LAN peers {lan_peers}, from group peers {group_peers}, from Internet peers {internet_peers}, from cache {cache})",
            content_id.as_str().unwrap_or_default(),
            s.bytes_total,
            elapsed.as_secs_f64(),
        );
    }
}
