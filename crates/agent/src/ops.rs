//! The Linux DO agent's nine `/download/<op>` operations, mapped onto the [`Manager`].

use do_api::Property;
use serde_json::{Value as Json, json};

use crate::{
    hresult::*,
    manager::{ApiError, Manager},
    wire::{self, Status},
};

/// The agent's default no-progress timeout (30 checks, 10 s apart).
const DEFAULT_NO_PROGRESS_SECONDS: u64 = 300;

/// A response: status and body.
pub(crate) type Reply = (Status, String);

/// Answers one `/download/<op>` request.
pub(crate) async fn handle(manager: &Manager, op: &str, request: &wire::Request) -> Reply {
    let (method, allowed): (&str, &[&str]) = match op {
        "create" => ("POST", &["Uri", "DownloadFilePath"]),
        "enumerate" => ("GET", &["Uri", "DownloadFilePath"]),
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
    let result = match op {
        "create" => create(manager, param("Uri"), param("DownloadFilePath")),
        "enumerate" => Ok(enumerate(manager, param("Uri"), param("DownloadFilePath"))),
        _ => {
            let Some(id) = param("Id") else {
                return error(Status::BadRequest, E_INVALIDARG);
            };
            let id = id.to_ascii_lowercase();
            if !manager.exists(&id) {
                return error(Status::NotFound, E_NOT_SET);
            }
            match op {
                "start" => manager.start(&id, None).await.map(|()| json!({})),
                "pause" => manager.pause(&id).await.map(|()| json!({})),
                "finalize" => manager.finalize(&id).await.map(|()| json!({})),
                "abort" => manager.abort(&id).await.map(|()| json!({})),
                "getstatus" => status(manager, &id),
                "getproperty" => get_property(manager, &id, param("PropertyKey")),
                _ => set_property(manager, &id, &request.query).await,
            }
        }
    };
    match result {
        Ok(body) => (Status::Ok, body.to_string()),
        Err(ApiError::NotFound) => error(Status::NotFound, E_NOT_SET),
        Err(ApiError::Refused(code)) => error(Status::BadRequest, code),
    }
}

fn create(manager: &Manager, uri: Option<&str>, path: Option<&str>) -> Result<Json, ApiError> {
    let mut props = vec![(
        Property::NoProgressTimeoutSeconds,
        Json::from(DEFAULT_NO_PROGRESS_SECONDS),
    )];
    if let Some(uri) = uri.filter(|u| !u.is_empty()) {
        props.push((Property::Uri, Json::from(uri)));
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        props.push((Property::LocalPath, Json::from(path)));
    }
    manager.create(&props).map(|id| json!({ "Id": id }))
}

fn enumerate(manager: &Manager, uri: Option<&str>, path: Option<&str>) -> Json {
    let list: Vec<Json> = manager
        .enumerate(None)
        .into_iter()
        .map(|(id, props)| {
            let text = |p: Property| {
                props
                    .get(&p)
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            (id, text(Property::Uri), text(Property::LocalPath))
        })
        .filter(|(_, u, p)| uri.is_none_or(|want| want == u) && path.is_none_or(|want| want == p))
        .map(|(id, u, p)| json!({ "Id": id, "Uri": u, "DownloadFilePath": p }))
        .collect();
    json!({ "Downloads": list })
}

fn status(manager: &Manager, id: &str) -> Result<Json, ApiError> {
    let s = manager.status(id)?;
    // The agent's boost ptree writes every value as a string.
    Ok(json!({
        "Status": format!("{:?}", s.state),
        "BytesTotal": s.bytes_total.to_string(),
        "BytesTransferred": s.bytes_transferred.to_string(),
        "ErrorCode": (s.error as i32).to_string(),
        "ExtendedErrorCode": (s.extended_error as i32).to_string(),
    }))
}

fn get_property(manager: &Manager, id: &str, key: Option<&str>) -> Result<Json, ApiError> {
    let key = key.ok_or(ApiError::Refused(E_INVALIDARG))?;
    let value = match key {
        "Id" => Json::from(id),
        "Uri" => manager.get(id, Property::Uri)?,
        "DownloadFilePath" => manager.get(id, Property::LocalPath)?,
        "NoProgressTimeoutSeconds" => Json::from(
            manager
                .get(id, Property::NoProgressTimeoutSeconds)?
                .to_string(),
        ),
        _ => return Err(ApiError::Refused(DO_E_UNKNOWN_PROPERTY_ID)),
    };
    let mut body = serde_json::Map::new();
    body.insert(key.to_owned(), value);
    Ok(Json::Object(body))
}

/// Sets properties. The agent refuses every call (it processes `Id` as a property first);
/// donode applies the intended rules, and validates all values before changing any.
async fn set_property(
    manager: &Manager,
    id: &str,
    query: &[(String, String)],
) -> Result<Json, ApiError> {
    let mut props = Vec::new();
    for (k, v) in query.iter().filter(|(k, _)| k != "Id") {
        let prop = match k.as_str() {
            "Uri" => (Property::Uri, Json::from(v.as_str())),
            "DownloadFilePath" => (Property::LocalPath, Json::from(v.as_str())),
            _ => {
                let secs = v
                    .parse::<u64>()
                    .map_err(|_| ApiError::Refused(E_INVALIDARG))?;
                (Property::NoProgressTimeoutSeconds, Json::from(secs))
            }
        };
        props.push(prop);
    }
    if props.is_empty() {
        return Err(ApiError::Refused(E_INVALIDARG));
    }
    manager.check_all(id, &props)?;
    for (p, v) in props {
        manager.set(id, p, v).await?;
    }
    Ok(json!({}))
}

fn error(status: Status, code: u32) -> Reply {
    (status, wire::error_body(code))
}
