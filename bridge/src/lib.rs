//! `edge-bridge`: the agent that runs beside an MQTT broker and proxies tasks to devices.
//!
//! # Layout
//! - [`api`]: the MQTT API's JSON contract: submissions in, status events out.
//! - [`broker`]: the embedded MQTT broker (rumqttd).
//! - [`engine`]: the task that owns the queue and the device registry and decides.
//! - [`queue`]: the durable task queue and status outbox (redb).
//! - [`dispatch`]: the dispatch policy (which task to which device, now); no I/O.
//! - [`link`]: device links (plain TCP, TLS with client certificates, serial ports):
//!   transport tasks driving device-core sessions, and the identity rule.
//! - [`mqtt`]: the MQTT client driver (rumqttc): API in, outbox out.
//! - [`run`]: `edge-bridge run`: everything wired together.
//! - [`tls`]: rustls client settings for an external broker, and the PEM readers.
// No unsafe code, but for the few OpenSSL calls the `openssl` crate does not wrap (DTLS
// timer and stateless cookie exchange), in `link::dtls::ffi`.
#![deny(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod broker;
pub mod dispatch;
pub mod engine;
pub mod link;
pub mod mqtt;
pub mod queue;
pub mod run;
pub mod time;
pub mod tls;
