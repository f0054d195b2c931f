//! A sans-IO DTLS 1.2 (RFC 6347) for the bridge's device links and device simulators: the
//! PSK and ECDHE suites with AES-CCM-8 (RFC 7925's) and AES-GCM, the server's stateless
//! cookie exchange, the extended master secret; no resumption, no renegotiation.
//!
//! ## Layout
//! - [`connection`]: one connection, either side: handshake, retransmission, records.
//! - [`cookie`]: the server's stateless cookie exchange, before a connection exists.
//! - [`config`]: suites, keys, certificates and trust anchors of each side.
//! - [`messages`]: the handshake messages' bodies.
//! - [`handshake`]: handshake message framing, fragmentation and reassembly.
//! - [`record`]: record headers, AEAD protection of records, the replay window.
//! - [`crypto`]: the cipher suites, the TLS 1.2 PRF and the key schedule.
//! - [`codec`]: reading and writing length-prefixed fields.

pub mod codec;
pub mod config;
pub mod connection;
pub mod cookie;
pub mod crypto;
pub mod handshake;
pub mod messages;
pub mod record;

pub use config::{Certified, ClientConfig, LoadError, PskLookup, Roots, ServerConfig};
pub use connection::{Connection, Error, PeerIdentity};
pub use crypto::Suite;
