//! HTTP origin client for donode.
//!
//! This crate owns the conversation with origin servers (the CDN or web server a
//! file is published on): learning a resource's size, validators and range
//! support ([`Client::stat`]), fetching the whole resource or a byte range of it
//! ([`Client::get`]) and streaming the body ([`Body::chunk`]). It applies custom
//! request headers (DO's `HttpCustomHeaders`), timeouts, the redirect limit and the
//! HTTPS-to-HTTP redirect rule, and checks that partial answers match what was
//! asked for.
//!
//! It deliberately does **not** retry, back off, schedule, split downloads into
//! pieces, choose between origins and peers, or store anything: retry policy and
//! scheduling belong to the engine. The origin client only *classifies* failures as
//! transient or fatal ([`Error::is_transient`]) and maps them to Delivery
//! Optimization HRESULTs ([`Error::hresult`], [`hresult`]).
//!
//! It is a thin async adapter over `reqwest` and must run inside a Tokio runtime.

mod client;
mod error;
mod headers;
pub mod hresult;

pub use client::{Body, Client, Config, Stat};
pub use error::Error;
pub use headers::{Headers, Validators};
pub use hresult::hresult_for_status;
