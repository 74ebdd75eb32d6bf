//! `/v1/jobs`: the BITS-compatible job API over [`Jobs`] (`docs/bits.md`).

use serde_json::{Value as Json, json};

use crate::{
    jobs::{DO_E_JOB_NOT_FOUND, Jobs, JobsError},
    v1::{self, Reply},
    wire::{self, Status},
};

/// `E_INVALIDARG`.
const E_INVALIDARG: u32 = 0x8007_0057;
/// `E_UNSUPPORTED`: unknown path or method.
const E_UNSUPPORTED: u32 = 0x8007_0032;

/// Answers `/v1/jobs...`; `rest` are the segments after `jobs`.
pub(crate) async fn handle(
    jobs: &Jobs,
    rest: &[&str],
    request: &wire::Request,
    body: &[u8],
) -> Reply {
    let body: Json = if body.iter().all(u8::is_ascii_whitespace) {
        Json::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => return error(JobsError::Refused(E_INVALIDARG)),
        }
    };
    let method = request.method.to_ascii_uppercase();
    let ok = |v: Json| Reply::Full(Status::Ok, v.to_string());
    let done = |r: Result<(), JobsError>| r.map_or_else(error, |()| ok(json!({})));
    let number = |k: &str| body.get(k).and_then(Json::as_u64);
    match (method.as_str(), rest) {
        ("POST", []) => {
            let name = body
                .get("DisplayName")
                .and_then(Json::as_str)
                .unwrap_or_default();
            let job_type = body.get("Type").and_then(Json::as_u64).unwrap_or(0);
            jobs.create(name, job_type)
                .map_or_else(error, |id| ok(json!({ "Id": id })))
        }
        ("GET", []) => ok(json!({ "Jobs": jobs.list() })),
        ("GET", [id]) => jobs.info(id).map_or_else(error, ok),
        ("POST", [id, "files"]) => jobs
            .add_file(id, &body)
            .map_or_else(error, |i| ok(json!({ "Index": i }))),
        ("GET", [id, "files"]) => jobs.files(id, None).map_or_else(error, ok),
        ("GET", [id, "files", index]) => match index.parse() {
            Ok(i) => jobs.files(id, Some(i)).map_or_else(error, ok),
            Err(_) => error(JobsError::Refused(E_INVALIDARG)),
        },
        ("PUT" | "POST", [id, "files", index, "remote-name"]) => {
            let url = body
                .get("RemoteName")
                .and_then(Json::as_str)
                .unwrap_or_default();
            match index.parse() {
                Ok(i) => done(jobs.set_remote_name(id, i, url).await),
                Err(_) => error(JobsError::Refused(E_INVALIDARG)),
            }
        }
        ("POST", [id, "resume"]) => done(jobs.resume(id).await),
        ("POST", [id, "suspend"]) => done(jobs.suspend(id).await),
        ("POST", [id, "cancel"]) => done(jobs.cancel(id).await),
        ("POST", [id, "complete"]) => done(jobs.complete(id).await),
        ("PUT" | "POST", [id, "priority"]) => match number("Priority") {
            Some(p) => done(jobs.set_priority(id, p).await),
            None => error(JobsError::Refused(E_INVALIDARG)),
        },
        ("PUT" | "POST", [id, "no-progress-timeout"]) => match number("Seconds") {
            Some(s) => done(jobs.set_no_progress_timeout(id, s).await),
            None => error(JobsError::Refused(E_INVALIDARG)),
        },
        ("PUT" | "POST", [id, "notify-flags"]) => match number("Flags") {
            Some(f) => done(jobs.set_notify_flags(id, f)),
            None => error(JobsError::Refused(E_INVALIDARG)),
        },
        ("GET", [id, "properties", name]) => jobs.property(id, name).map_or_else(error, ok),
        ("PUT" | "POST", [id, "properties", name]) => {
            let value = body.get("Value").cloned().unwrap_or(Json::Null);
            done(jobs.set_property(id, name, &value))
        }
        ("GET", [id, "error"]) => jobs.error(id).map_or_else(error, ok),
        ("GET", [id, "events"]) => match jobs.subscribe(id) {
            Ok((events, first)) => Reply::JobEvents(events, first),
            Err(e) => error(e),
        },
        _ => error(JobsError::Refused(E_UNSUPPORTED)),
    }
}

fn error(e: JobsError) -> Reply {
    let (status, code) = match e {
        JobsError::NotFound => (Status::NotFound, DO_E_JOB_NOT_FOUND),
        JobsError::Refused(code) => (Status::BadRequest, code),
    };
    let body = json!({ "ErrorCode": code, "Message": v1::describe(code) });
    Reply::Full(status, body.to_string())
}
