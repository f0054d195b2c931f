//! `edge-bridge`: the agent that runs beside an MQTT broker and proxies tasks to devices.
//!
//! # Where to start reading
//! [`engine`] first: every decision about a task is there, in a state machine that does no
//! I/O of its own and reads no clock (its unit tests drive it on a simulated clock, and
//! `tests/sim.rs` runs it with real device-core devices over lossy links). Then [`run`], the
//! loop that feeds it; then the two drivers at its edges, [`mqtt`] and [`link`].
//!
//! # Data flow
//! ```text
//!  MQTT clients ── broker ──> mqtt (driver) ──ApiInput──> run loop ──handle_*(now)──> Engine
//!                                                                                       │
//!        PUBACK after commit <── tickets <── Released <── commit (queue: redb) <────────┘
//!                                                │
//!  device <── device-core Session <── link driver <── LinkCommand (Assign, Cancel, Close)
//!  device ──> device-core Session ──> link driver ──LinkEvent──> run loop ──handle_link──> Engine
//!  outbox (committed status events) ──> run loop's pump ──> mqtt driver ──> broker ──> clients
//! ```
//! One turn of the run loop: take what arrived (batched), hand it to the engine with the time,
//! `dispatch`, **commit once**, then release what the commit covers (acknowledgements of MQTT
//! messages and device reports, commands for links) and offer new outbox entries to MQTT.
//!
//! # Layout
//! - [`api`]: the MQTT API's JSON contract: submissions in; status events, device documents,
//!   stats and bridge status out.
//! - [`engine`]: the queue, the device registry and every decision; sans-IO.
//! - [`queue`]: the durable task queue and status outbox (redb).
//! - [`dispatch`]: the dispatch policy (which task to which device, now); a pure function.
//! - [`time`]: [`time::Now`] (passed into the engine) and the run loop's clock.
//! - [`backoff`]: the one backoff policy (task retries, MQTT and device reconnects) and its
//!   seeded jitter source.
//! - [`run`]: `edge-bridge run`: start-up, the run loop, link start-up, the outbox pump,
//!   stop signals, the data directory's free space, the service manager's notifications.
//! - [`mqtt`]: the MQTT client driver (rumqttc): API in, outbox out, PUBACK after commit.
//! - [`link`]: device links (plain TCP, TLS with client certificates, UDP + DTLS, serial
//!   ports): transport tasks driving device-core sessions, and the identity rule.
//! - [`metrics`]: the optional Prometheus endpoint: a snapshot the run loop takes when
//!   scraped, its text format, and a small HTTP/1.1 responder.
//! - [`broker`]: the embedded MQTT broker (rumqttd).
//! - [`client`]: the client commands (`submit`, `watch`, `tasks`): the MQTT API from the
//!   other side, for application developers and operators.
//! - [`tls`]: rustls client settings for an external broker, and the PEM readers.
//! - [`preflight`]: the whole configuration checked before anything opens (certificates and
//!   cipher lists built as at start), and the data directory locked for one bridge.
//! - [`logging`]: log lines on stderr as text (coloured only on a terminal) or JSON.
//! - [`throttle`]: the budget of log lines about remote events (bad frames, failed
//!   handshakes, refused connections), with counts of the lines left out.
// No unsafe code, but for one descriptor borrowed by number (to duplicate it) in
// `broker::nodelay`.
#![deny(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod broker;
pub mod client;
pub mod dispatch;
pub mod engine;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod preflight;
pub mod queue;
pub mod run;
pub mod throttle;
pub mod time;
pub mod tls;
