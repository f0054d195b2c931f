//! Typed, validated configuration of the edge bridge and its MQTT broker.
//!
//! Everything has a working default, so no file is needed to start; a file (TOML) overrides
//! what it names and nothing else. Unknown keys are errors (a typo must not be ignored
//! silently), and [`Config::validate`] names the offending field in every error.
//!
//! # Layout
//! - [`Config`]: the whole configuration; [`DEFAULT_CONFIG`] is its commented default file
//!   (printed by `edge-bridge gen-config`), kept equal to [`Config::default`] by a test.
//! - [`BrokerConfig`]: the embedded broker or an external one.
//! - [`LinkConfig`]: how devices reach the bridge.
//! - [`QueueConfig`]: the durable queue's bound and retry policy.
//! - [`ConfigError`]: what can be wrong, naming the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The commented default configuration file; parsing it gives [`Config::default`].
pub const DEFAULT_CONFIG: &str = include_str!("../default-config.toml");

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type. The message
    /// names the key and the line.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value parsed but is not acceptable.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The bridge's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Names this bridge in topics and in the MQTT client id. Letters, digits, `-`, `_`, `.`.
    pub bridge_id: String,
    /// Prefix of every topic; `None` means `edge/{bridge_id}`.
    pub topic_root: Option<String>,
    /// Where the durable queue lives. Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// How often `{root}/bridge/stats` is published.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    pub queue: QueueConfig,
    pub broker: BrokerConfig,
    /// Device links; plain TCP on 127.0.0.1:7878 by default.
    #[serde(rename = "link")]
    pub links: Vec<LinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bridge_id: "edge-bridge".into(),
            topic_root: None,
            data_dir: PathBuf::from("edge-bridge-data"),
            stats_interval: Duration::from_secs(10),
            queue: QueueConfig::default(),
            broker: BrokerConfig::default(),
            links: vec![LinkConfig::Tcp {
                listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            }],
        }
    }
}

/// The durable queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Tasks held at most (queued or on a device); beyond it submissions are `rejected`.
    pub limit: u64,
    /// Attempts per task before it fails (a device disconnecting or failing with a
    /// transient code, 0x8000 and above, starts another attempt).
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            limit: 100_000,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// Which MQTT broker the bridge uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum BrokerConfig {
    /// rumqttd inside the bridge process.
    Embedded {
        /// The broker's MQTT listener.
        listen: SocketAddr,
        /// Largest MQTT packet accepted, in bytes.
        #[serde(default = "default_max_packet")]
        max_packet_bytes: usize,
        /// Client connections at most.
        #[serde(default = "default_max_connections")]
        max_connections: usize,
    },
    /// Any MQTT 3.1.1 broker.
    External {
        host: String,
        #[serde(default = "default_mqtt_port")]
        port: u16,
        username: Option<String>,
        password: Option<String>,
        /// TLS to the broker (rustls); absent means plain TCP.
        tls: Option<TlsConfig>,
        #[serde(default = "default_max_packet")]
        max_packet_bytes: usize,
    },
}

fn default_max_packet() -> usize {
    256 * 1024
}

fn default_max_connections() -> usize {
    1024
}

fn default_mqtt_port() -> u16 {
    1883
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_bytes: default_max_packet(),
            max_connections: default_max_connections(),
        }
    }
}

/// TLS towards an external broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for brokers that require them.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A way for devices to reach the bridge. A file that lists `[[link]]` tables replaces the
/// default list, so plain TCP exists only where it is listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LinkConfig {
    /// Plain TCP carrying the device framing. No authentication: for labs, simulators and
    /// emulated MCUs.
    Tcp { listen: SocketAddr },
    /// TLS over TCP carrying the device framing, with a client certificate required: the
    /// device id in a device's `Hello` must be the certificate's subject CN or one of its DNS
    /// subject alternative names, or the link is closed.
    Tls {
        listen: SocketAddr,
        /// PEM: the bridge's certificate chain, its own certificate first.
        cert_file: PathBuf,
        /// PEM: the private key of `cert_file` (PKCS#8, SEC1 or PKCS#1).
        key_file: PathBuf,
        /// PEM: the CA certificate(s) that sign device certificates; a device must present a
        /// certificate chaining to one of them.
        client_ca_file: PathBuf,
        /// A connection whose handshake has not finished by then is dropped, so a stalled or
        /// malicious peer cannot hold a socket and a task forever.
        #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
        handshake_timeout: Duration,
    },
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl LinkConfig {
    /// The address the link listens on.
    pub fn listen(&self) -> SocketAddr {
        match self {
            Self::Tcp { listen } | Self::Tls { listen, .. } => *listen,
        }
    }

    /// Checks the values of one link; the error names the field.
    fn validate(&self) -> Result<(), ConfigError> {
        let Self::Tls {
            cert_file,
            key_file,
            client_ca_file,
            handshake_timeout,
            ..
        } = self
        else {
            return Ok(());
        };
        for (field, path) in [
            ("link.cert_file", cert_file),
            ("link.key_file", key_file),
            ("link.client_ca_file", client_ca_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        if *handshake_timeout < Duration::from_millis(100) || *handshake_timeout > MAX_HANDSHAKE {
            return Err(invalid("link.handshake_timeout", "100ms to 5m"));
        }
        Ok(())
    }
}

/// Longest TLS handshake deadline accepted: beyond it the deadline no longer protects anything.
const MAX_HANDSHAKE: Duration = Duration::from_secs(300);

impl Config {
    /// Parses TOML (`origin` names the source in errors) and validates it.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The topic prefix: `topic_root`, or `edge/{bridge_id}`.
    pub fn root(&self) -> String {
        self.topic_root
            .clone()
            .unwrap_or_else(|| format!("edge/{}", self.bridge_id))
    }

    /// Checks every value; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.bridge_id.is_empty()
            || self.bridge_id.len() > 64
            || !self.bridge_id.chars().all(id_ok)
        {
            return Err(invalid(
                "bridge_id",
                "1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if let Some(root) = &self.topic_root {
            let bad = root.is_empty()
                || root.starts_with('/')
                || root.ends_with('/')
                || root.contains(['+', '#', '\0'])
                || root.split('/').any(str::is_empty);
            if bad {
                return Err(invalid(
                    "topic_root",
                    "a topic prefix without wildcards, empty levels or leading/trailing '/'",
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.stats_interval < Duration::from_millis(100) {
            return Err(invalid("stats_interval", "at least 100ms"));
        }
        let q = &self.queue;
        if q.limit == 0 {
            return Err(invalid("queue.limit", "at least 1"));
        }
        if q.max_attempts == 0 {
            return Err(invalid("queue.max_attempts", "at least 1"));
        }
        if q.retry_initial.is_zero() {
            return Err(invalid("queue.retry_initial", "more than 0"));
        }
        if q.retry_max < q.retry_initial {
            return Err(invalid("queue.retry_max", "at least queue.retry_initial"));
        }
        match &self.broker {
            BrokerConfig::Embedded {
                max_packet_bytes,
                max_connections,
                ..
            } => {
                if *max_packet_bytes < 1024 {
                    return Err(invalid("broker.max_packet_bytes", "at least 1024"));
                }
                if *max_connections == 0 {
                    return Err(invalid("broker.max_connections", "at least 1"));
                }
            }
            BrokerConfig::External {
                host,
                port,
                username,
                password,
                max_packet_bytes,
                tls,
            } => {
                if host.trim().is_empty() {
                    return Err(invalid("broker.host", "must not be empty"));
                }
                if *port == 0 {
                    return Err(invalid("broker.port", "1 to 65535"));
                }
                if password.is_some() && username.is_none() {
                    return Err(invalid("broker.password", "needs broker.username"));
                }
                if *max_packet_bytes < 1024 {
                    return Err(invalid("broker.max_packet_bytes", "at least 1024"));
                }
                if let Some(t) = tls {
                    if t.client_cert.is_some() != t.client_key.is_some() {
                        return Err(invalid(
                            "broker.tls.client_key",
                            "client_cert and client_key go together",
                        ));
                    }
                }
            }
        }
        if self.links.is_empty() {
            return Err(invalid("link", "at least one device link"));
        }
        let mut seen = Vec::new();
        for link in &self.links {
            let listen = link.listen();
            // Port 0 asks for any free port: two of them never collide.
            if listen.port() != 0 && seen.contains(&listen) {
                return Err(invalid(
                    "link.listen",
                    format!("{listen} is configured twice"),
                ));
            }
            seen.push(listen);
            link.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
