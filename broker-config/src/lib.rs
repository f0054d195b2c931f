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
//! - [`QueueConfig`]: the durable queue's bounds and retry policy.
//! - [`StorageConfig`]: how much of the data directory's disk stays free.
//! - [`MetricsConfig`]: the optional Prometheus endpoint.
//! - [`ConfigError`]: what can be wrong, naming the field.
//! - `check`: [`Config::check`], the whole configuration checked before the bridge opens
//!   anything: every invalid value, the files it names, listen addresses that collide, the
//!   data directory; each [`Problem`] names its key and its value.
//! - [`MOSQUITTO_CONF`]: what mosquitto needs as the bridge's external broker;
//!   [`MOSQUITTO_ACL`]: who may do what on it.
//! - [`SYSTEMD_UNIT`] and [`OPENHARMONY_CFG`]: the bridge as a service on a gateway.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use device_core::Priority;
use serde::{Deserialize, Serialize};

mod check;
pub use check::{Checked, Problem, quoted};

/// The commented default configuration file; parsing it gives [`Config::default`].
pub const DEFAULT_CONFIG: &str = include_str!("../default-config.toml");

/// The settings mosquitto needs as the bridge's external broker (lines of `mosquitto.conf`,
/// commented): without them it drops submissions of a burst after acknowledging them.
pub const MOSQUITTO_CONF: &str = include_str!("../mosquitto.conf");

/// Access rules for mosquitto in front of the bridge (an `acl_file`): only the bridge
/// publishes states, device documents and its status; applications submit and cancel;
/// viewers read.
pub const MOSQUITTO_ACL: &str = include_str!("../mosquitto-acl");

/// The systemd unit the Debian package installs: `Type=notify` (the bridge sends READY and
/// pings the watchdog), a dedicated user, the queue in [`DEBIAN_DATA_DIR`], hardened.
pub const SYSTEMD_UNIT: &str = include_str!("../edge-bridge.service");

/// The OpenHarmony init service (`/system/etc/init/edge_bridge.cfg`) the gateway tarball
/// carries: resident (restarted when it exits), its own uid, the queue in
/// [`OPENHARMONY_DATA_DIR`], created by a `post-fs-data` job.
pub const OPENHARMONY_CFG: &str = include_str!("../edge_bridge.cfg");

/// Where the Debian package keeps the queue (systemd's `StateDirectory`).
pub const DEBIAN_DATA_DIR: &str = "/var/lib/edge-bridge";

/// Where the OpenHarmony tarball keeps the queue (a system service's device-level data).
pub const OPENHARMONY_DATA_DIR: &str = "/data/service/el1/public/edge_bridge";

/// [`DEFAULT_CONFIG`] with `data_dir` set to `data_dir`: the file a package installs
/// (`edge-bridge gen-config --data-dir DIR`).
pub fn default_config_with_data_dir(data_dir: &str) -> String {
    let quoted = toml::Value::String(data_dir.to_owned()).to_string();
    DEFAULT_CONFIG.replacen(DEFAULT_DATA_DIR_LINE, &format!("data_dir = {quoted}\n"), 1)
}

/// The line of [`DEFAULT_CONFIG`] that [`default_config_with_data_dir`] replaces.
const DEFAULT_DATA_DIR_LINE: &str = "data_dir = \"edge-bridge-data\"\n";

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
    /// A line of a PSK file (`link.psk_file`) is not `device-id:hexkey`, or repeats an id.
    #[error("link.psk_file: {}: line {line}: {source}", path.display())]
    PskFile {
        path: PathBuf,
        /// Counted from 1.
        line: usize,
        #[source]
        source: PskLineError,
    },
}

/// Why a hex-encoded pre-shared key is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskError {
    /// Empty, or an odd number of characters.
    #[error("a key is an even number of hex digits")]
    OddLength,
    /// A character that is not a hex digit.
    #[error("a key is hex digits only")]
    NotHex,
    /// More than [`MAX_PSK_BYTES`] bytes.
    #[error("a key has at most {MAX_PSK_BYTES} bytes")]
    TooLong,
    /// Fewer than [`MIN_PSK_BYTES`] bytes: whoever records one handshake can try keys
    /// offline, and a short key falls.
    #[error("a key has at least {MIN_PSK_BYTES} bytes ({} hex digits)", 2 * MIN_PSK_BYTES)]
    TooShort,
}

/// What is wrong with one line of a PSK file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskLineError {
    /// No `:` between the device id and the key.
    #[error("expected device-id:hexkey")]
    NoColon,
    /// A device id of 0 or more than 32 bytes.
    #[error("device ids have 1 to 32 bytes")]
    DeviceId,
    /// The key is not a usable hex key.
    #[error(transparent)]
    Key(#[from] PskError),
    /// The device id was on an earlier line too.
    #[error("{id} is listed twice")]
    Twice { id: String },
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
    pub storage: StorageConfig,
    pub urgent: UrgentConfig,
    pub classes: ClassesConfig,
    pub identity: IdentityConfig,
    pub devices: DevicesConfig,
    pub broker: BrokerConfig,
    /// Device links; plain TCP on 127.0.0.1:7878 by default.
    #[serde(rename = "link")]
    pub links: Vec<LinkConfig>,
    /// Resources shared across devices that submissions may name (`[[resource]]`).
    #[serde(rename = "resource", skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceConfig>,
    pub metrics: MetricsConfig,
}

/// The Prometheus endpoint (`GET /metrics`): off unless `listen` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where the endpoint listens (port 0: a free one). Off by default: a gateway that is
    /// not scraped should not hold a port open, and the figures name its devices.
    pub listen: Option<SocketAddr>,
}

/// QoS classes over priority bands — realtime (P0–P1), guaranteed (P2–P3), besteffort
/// (P4–P5) — each with a quota: the share of the slots of the online devices its tasks may
/// hold at once, so that the classes above always find room. 100 (the default): no quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassesConfig {
    /// Percent of the slots guaranteed tasks may hold.
    pub guaranteed_max_percent: u8,
    /// Percent of the slots besteffort tasks may hold.
    pub besteffort_max_percent: u8,
}

impl Default for ClassesConfig {
    fn default() -> Self {
        Self {
            guaranteed_max_percent: 100,
            besteffort_max_percent: 100,
        }
    }
}

/// What the bridge keeps of devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// A device offline this long has its retained document (`{root}/devices/{id}`) cleared
    /// from the broker, so ids seen once (a renamed board, a typo on a lab link) do not stay
    /// for ever. `0s`: kept for ever.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            forget_after: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Which links may claim which device ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Let a link without credentials (plain TCP, serial) claim a device id that a credential
    /// (TLS certificate, DTLS PSK or certificate) has proven on any link before. Off: such a
    /// claim closes the link, so no local process or serial cable can take a device's tasks.
    pub unproven_claims: bool,
}

/// A resource shared across devices (a conveyor two controllers drive, a power budget, a
/// radio channel): a task that names it is dispatched only while it holds it, one task at a
/// time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// What submissions call it (`"resources": ["conveyor-1"]`): letters, digits, `-`, `_`,
    /// `.`, at most 32 bytes.
    pub name: String,
    /// The priority its holder runs at, at least: a fixed priority (`"P1"`), or `"dynamic"`,
    /// the priority of the most urgent task queued for it. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<Ceiling>,
    /// Whether a more urgent task waiting for it lends its priority to the holder, on the
    /// holder's device (on by default; off only to compare).
    #[serde(default = "yes")]
    pub inheritance: bool,
}

fn yes() -> bool {
    true
}

/// A resource's priority ceiling (`"P0"` to `"P5"`, or `"dynamic"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Ceiling {
    Fixed(Priority),
    Dynamic,
}

impl TryFrom<String> for Ceiling {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == "dynamic" {
            return Ok(Self::Dynamic);
        }
        s.strip_prefix('P')
            .and_then(|l| l.parse::<u8>().ok())
            .and_then(Priority::from_level)
            .map(Self::Fixed)
            .ok_or_else(|| format!("a ceiling is \"P0\" to \"P5\" or \"dynamic\", not {s:?}"))
    }
}

impl From<Ceiling> for String {
    fn from(c: Ceiling) -> Self {
        match c {
            Ceiling::Fixed(p) => format!("P{}", p.level()),
            Ceiling::Dynamic => "dynamic".into(),
        }
    }
}

/// The longest resource name.
pub const MAX_RESOURCE_NAME: usize = 32;

/// Whether `name` can name a resource.
pub fn valid_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_RESOURCE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bridge_id: "edge-bridge".into(),
            topic_root: None,
            data_dir: PathBuf::from("edge-bridge-data"),
            stats_interval: Duration::from_secs(10),
            queue: QueueConfig::default(),
            storage: StorageConfig::default(),
            urgent: UrgentConfig::default(),
            classes: ClassesConfig::default(),
            identity: IdentityConfig::default(),
            devices: DevicesConfig::default(),
            broker: BrokerConfig::default(),
            links: vec![LinkConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 7878)))],
            resources: Vec::new(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// The durable queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Tasks held at most (queued or on a device); beyond it submissions are `rejected`.
    pub limit: u64,
    /// Events held at most in the outbox waiting for the broker (while it is down or slower
    /// than the work); beyond it new submissions are `rejected` (`outbox_full`), while the
    /// events of accepted tasks still go in. At least `limit`, so that a burst filling the
    /// queue is never refused for its `queued` events.
    pub outbox_limit: u64,
    /// Attempts per task before it fails (a device disconnecting or failing with a
    /// transient code, 0x8000 and above, starts another attempt).
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long a task that was on a device waits for that device after a link loss or a
    /// bridge restart (the device may still be running it) before it may run elsewhere. A
    /// device that comes back within it keeps its tasks; one that comes back rebooted gives
    /// them up at once.
    #[serde(with = "humantime_serde")]
    pub device_grace: Duration,
    /// The execution lease: how long a task may stay on a device without finishing before it
    /// is taken back (cancelled there) and tried again, so that a hung or hostile device
    /// cannot hold work for ever. A submission's `timeout_ms` overrides it, as does
    /// `[queue.capabilities.NAME] execution_timeout`.
    #[serde(with = "humantime_serde")]
    pub execution_timeout: Duration,
    /// Settings per capability name.
    pub capabilities: BTreeMap<String, CapabilityConfig>,
}

/// A capability's own settings (`[queue.capabilities.NAME]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityConfig {
    /// The execution lease of this capability's tasks (see `queue.execution_timeout`).
    #[serde(with = "humantime_serde")]
    pub execution_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            limit: 100_000,
            outbox_limit: 200_000,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            device_grace: Duration::from_secs(30),
            execution_timeout: Duration::from_secs(30 * 60),
            capabilities: BTreeMap::new(),
        }
    }
}

/// The disk of the data directory: the bridge stops taking new work before it is full, so
/// that the work it accepted can always be recorded to its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Below this many free bytes new submissions are `rejected` (`storage_full`); accepted
    /// work goes on. Taken again by itself once space returns. 0 turns the watermark off.
    pub min_free_bytes: u64,
    /// A file of this many bytes kept in the data directory and given back when the disk
    /// fills (or the bridge starts on a full disk), so accepted work can be recorded even if
    /// something else took the space below the watermark. 0: no reserve.
    pub reserve_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            min_free_bytes: 64 << 20,
            reserve_bytes: 8 << 20,
        }
    }
}

/// Urgent work never waits: which tasks are urgent, and the task slots every device keeps
/// for them so that long low-priority work cannot hold them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UrgentConfig {
    /// Tasks of this priority or more urgent are urgent ("P0" is the most urgent).
    pub urgent_at: Priority,
    /// Task slots per device that only urgent tasks may take. A device always keeps at least
    /// one slot for any task, so a one-slot device reserves none; 0 turns reservation off.
    pub reserve: u8,
    /// `reserve` for particular devices, by device id (e.g. more on a large device, 0 on one
    /// that never runs urgent work).
    pub devices: BTreeMap<String, DeviceUrgentConfig>,
    /// Times one task may be given back by its device to make room for an urgent task (a
    /// device gives back only tasks it has not started); bounded so that low-priority work
    /// always finishes. 0 turns taking back off.
    pub max_preemptions: u32,
}

impl Default for UrgentConfig {
    fn default() -> Self {
        Self {
            urgent_at: Priority::P1,
            reserve: 1,
            devices: BTreeMap::new(),
            max_preemptions: 3,
        }
    }
}

/// A device's own urgency settings (`[urgent.devices.ID]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceUrgentConfig {
    /// Slots of this device that only urgent tasks may take.
    pub reserve: u8,
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
        /// Bytes of submissions (and cancels) the broker holds for the bridge while it
        /// commits earlier ones, counted as rumqttd does (per message: topic, payload and 4;
        /// the memory it takes is a few times that). The broker acknowledges a publisher
        /// before the bridge reads the message, and a burst beyond this is dropped by the
        /// broker; the bridge then reports the count (`submissions_lost` on `{root}/errors`).
        /// At least 16 KiB.
        #[serde(default = "default_api_log_bytes")]
        api_log_bytes: usize,
        /// MQTT users, one `username:password` per line (`#` comments), in a file only its
        /// owner may read. With it every client must log in as one of them; without it the
        /// broker takes anyone (then it must listen on loopback, unless `allow_anonymous`).
        /// The bridge's own client id is reserved to the bridge either way it is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        users_file: Option<PathBuf>,
        /// Take clients without a login on a listener beyond loopback (without `users_file`):
        /// anyone who reaches it can then submit, cancel and impersonate the bridge. Refused
        /// unless set; a warning at every start when set.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_anonymous: bool,
        /// A TLS listener in front of the broker (MQTT over TLS, usually port 8883), besides
        /// `listen`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<EmbeddedTls>,
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

/// 16 MiB: 200,000 submissions of 45 bytes (72 as rumqttd counts them) published at once
/// fit, even if the bridge read none of them before the last arrived.
fn default_api_log_bytes() -> usize {
    16 * 1024 * 1024
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
            api_log_bytes: default_api_log_bytes(),
            users_file: None,
            allow_anonymous: false,
            tls: None,
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

/// The embedded broker's TLS listener: clients connect with TLS, and the bridge passes what
/// they send to the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTls {
    /// Where MQTT over TLS is taken (port 0: a free one).
    pub listen: SocketAddr,
    /// PEM certificate chain of the broker, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// TLS handshakes in progress at most; a connection beyond is closed at once.
    #[serde(default = "default_tls_handshakes")]
    pub max_handshakes: usize,
}

fn default_tls_handshakes() -> usize {
    64
}

/// A way for devices to reach the bridge. A file that lists `[[link]]` tables replaces the
/// default list, so plain TCP exists only where it is listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LinkConfig {
    /// Plain TCP carrying the device framing. No authentication: for labs, simulators and
    /// emulated MCUs.
    Tcp {
        listen: SocketAddr,
        /// Connections open at once at most; one beyond it is closed as soon as it is
        /// accepted (and counted in the log), so a flood cannot take every file descriptor.
        #[serde(default = "default_link_max_connections")]
        max_connections: usize,
        /// Of those, from one IP address (an IPv6 /64) at most, so one host cannot take every
        /// connection.
        #[serde(default = "default_max_connections_per_address")]
        max_connections_per_address: usize,
    },
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
        /// Connections open at once at most, in their handshake or not (as for `tcp`).
        #[serde(default = "default_link_max_connections")]
        max_connections: usize,
        /// Of those, from one IP address (an IPv6 /64) at most.
        #[serde(default = "default_max_connections_per_address")]
        max_connections_per_address: usize,
        /// TLS handshakes in progress at once at most (each costs CPU and buffers); a
        /// connection beyond it waits for a free one, within its `handshake_timeout`.
        #[serde(default = "default_max_handshakes")]
        max_handshakes: usize,
    },
    /// UDP with DTLS 1.2, one device frame per datagram. Devices prove their id with a
    /// pre-shared key (the PSK identity is the device id) or with a client certificate (as for
    /// `tls`); at least one of the two must be configured.
    Dtls(DtlsLink),
    /// A serial port (UART) carrying the device framing, one device per port. A cable is
    /// the credential: any device id is accepted. Reopened with backoff when it goes away.
    Serial {
        /// The port, e.g. `/dev/ttyUSB0`.
        path: PathBuf,
        #[serde(default = "default_baud")]
        baud: u32,
    },
}

/// RFC 7925's mandatory suites (AES-128-CCM-8 with PSK or ECDHE-ECDSA) first, then GCM.
pub const DEFAULT_DTLS_CIPHERS: &str = "PSK-AES128-CCM8:ECDHE-ECDSA-AES128-CCM8:\
PSK-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
PSK-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384";

/// A `kind = "dtls"` link: UDP with DTLS 1.2, one device frame per datagram (see
/// [`LinkConfig::Dtls`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtlsLink {
    pub listen: SocketAddr,
    /// Pre-shared keys inline: device id = hex key. Prefer `psk_file` outside labs.
    #[serde(default)]
    pub psk: BTreeMap<String, String>,
    /// A key file of `device-id:hexkey` lines (`#` starts a comment; the format of
    /// GnuTLS's `psktool`). Must not be readable by other users.
    pub psk_file: Option<PathBuf>,
    /// Certificate mode, all three or none: the bridge's chain, its key, and the CA that
    /// signs device certificates (CN or DNS SAN = device id).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    /// The suites offered, in order of preference, by OpenSSL or IANA name, `:`-separated;
    /// the default is RFC 7925's CCM_8 suites plus GCM (every suite the bridge has).
    #[serde(default = "default_dtls_ciphers")]
    pub ciphers: String,
    /// Largest datagram the bridge sends, in bytes: handshake messages are fragmented
    /// to fit; a device frame (at most 403 bytes, plus up to 37 of DTLS record) is not,
    /// hence at least 512.
    #[serde(default = "default_dtls_mtu")]
    pub mtu: u16,
    /// A handshake unfinished by then is dropped (a wrong PSK makes the peer go silent,
    /// not fail).
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A session that receives nothing for this long is dropped (UDP has no close).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Sessions at most, established or not.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Established sessions of one identity (PSK identity or certificate names) at most.
    /// When a new handshake proving it completes beyond this, the identity's oldest session
    /// is closed: a device that reconnected from a new port replaces its stale session at
    /// once, and one leaked key holds this many sessions, not `max_sessions`.
    #[serde(default = "default_max_sessions_per_identity")]
    pub max_sessions_per_identity: usize,
    /// Sessions still in their handshake at most; a peer must first return a stateless
    /// cookie (HelloVerifyRequest) to start one, so spoofed addresses cost nothing.
    #[serde(default = "default_max_half_open")]
    pub max_half_open: usize,
    /// Of those, from one IP address at most: peers that do return their cookie cannot
    /// take every slot from one host.
    #[serde(default = "default_max_half_open_per_address")]
    pub max_half_open_per_address: usize,
    /// New handshakes started per second at most (burst of the same size).
    #[serde(default = "default_handshake_rate")]
    pub handshakes_per_second: u32,
    /// Of those, from one IP address (an IPv6 /64) at most (burst of the same size): one
    /// host whose handshakes fail fast cannot use the whole budget and lock devices out.
    #[serde(default = "default_handshake_rate_per_address")]
    pub handshakes_per_second_per_address: u32,
}

fn default_dtls_ciphers() -> String {
    DEFAULT_DTLS_CIPHERS.to_owned()
}

fn default_dtls_mtu() -> u16 {
    1200
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_sessions() -> usize {
    4096
}

fn default_max_half_open() -> usize {
    128
}

fn default_max_half_open_per_address() -> usize {
    16
}

fn default_handshake_rate() -> u32 {
    200
}

fn default_handshake_rate_per_address() -> u32 {
    20
}

fn default_max_sessions_per_identity() -> usize {
    1
}

fn default_link_max_connections() -> usize {
    512
}

fn default_max_connections_per_address() -> usize {
    64
}

fn default_max_handshakes() -> usize {
    64
}

fn default_baud() -> u32 {
    115_200
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl LinkConfig {
    /// A plain TCP link on `listen` with the default caps.
    pub fn tcp(listen: SocketAddr) -> Self {
        Self::Tcp {
            listen,
            max_connections: default_link_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
        }
    }

    /// The address the link listens on; `None` for a serial port.
    pub fn listen(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp { listen, .. }
            | Self::Tls { listen, .. }
            | Self::Dtls(DtlsLink { listen, .. }) => Some(*listen),
            Self::Serial { .. } => None,
        }
    }

    /// The link's `kind` as the file writes it: `tcp`, `tls`, `dtls` or `serial`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tcp { .. } => "tcp",
            Self::Tls { .. } => "tls",
            Self::Dtls(_) => "dtls",
            Self::Serial { .. } => "serial",
        }
    }

    /// What the link occupies, for duplicate checks: TCP and UDP ports are distinct.
    fn endpoint(&self) -> String {
        match self {
            Self::Tcp { listen, .. } | Self::Tls { listen, .. } => format!("tcp {listen}"),
            Self::Dtls(DtlsLink { listen, .. }) => format!("udp {listen}"),
            Self::Serial { path, .. } => format!("serial {}", path.display()),
        }
    }

    /// Checks the values of one link; the error names the field.
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Tcp {
                max_connections,
                max_connections_per_address,
                ..
            } => check_connection_caps(*max_connections, *max_connections_per_address),
            Self::Tls {
                cert_file,
                key_file,
                client_ca_file,
                handshake_timeout,
                max_connections,
                max_connections_per_address,
                max_handshakes,
                ..
            } => {
                check_connection_caps(*max_connections, *max_connections_per_address)?;
                if *max_handshakes == 0 {
                    return Err(invalid("link.max_handshakes", "must be above 0"));
                }
                for (field, path) in [
                    ("link.cert_file", cert_file),
                    ("link.key_file", key_file),
                    ("link.client_ca_file", client_ca_file),
                ] {
                    if path.as_os_str().is_empty() {
                        return Err(invalid(field, "must not be empty"));
                    }
                }
                check_handshake_timeout(*handshake_timeout)
            }
            Self::Dtls(DtlsLink {
                psk,
                psk_file,
                cert_file,
                key_file,
                client_ca_file,
                ciphers,
                mtu,
                handshake_timeout,
                idle_timeout,
                max_sessions,
                max_half_open,
                max_half_open_per_address,
                handshakes_per_second,
                max_sessions_per_identity,
                handshakes_per_second_per_address,
                ..
            }) => {
                for (id, key) in psk {
                    if id.is_empty() || id.len() > 32 {
                        return Err(invalid("link.psk", "device ids of 1 to 32 bytes"));
                    }
                    parse_psk(key).map_err(|why| invalid("link.psk", format!("{id}: {why}")))?;
                }
                let certs = [cert_file, key_file, client_ca_file];
                let named = certs.iter().filter(|c| c.is_some()).count();
                if named != 0 && named != 3 {
                    return Err(invalid(
                        "link.cert_file",
                        "cert_file, key_file and client_ca_file go together",
                    ));
                }
                if psk.is_empty() && psk_file.is_none() && named == 0 {
                    return Err(invalid(
                        "link.psk",
                        "a DTLS link needs psk, psk_file or certificates",
                    ));
                }
                if ciphers.trim().is_empty() {
                    return Err(invalid("link.ciphers", "must not be empty"));
                }
                if !(512..=9000).contains(mtu) {
                    return Err(invalid("link.mtu", "512 to 9000 bytes"));
                }
                check_handshake_timeout(*handshake_timeout)?;
                if *idle_timeout < Duration::from_secs(1) {
                    return Err(invalid("link.idle_timeout", "at least 1s"));
                }
                if *max_sessions == 0
                    || *max_half_open == 0
                    || *max_half_open_per_address == 0
                    || *handshakes_per_second == 0
                {
                    return Err(invalid(
                        "link.max_half_open",
                        "max_sessions, max_half_open, max_half_open_per_address and \
                         handshakes_per_second must be above 0",
                    ));
                }
                if *max_sessions_per_identity == 0 {
                    return Err(invalid("link.max_sessions_per_identity", "must be above 0"));
                }
                if *handshakes_per_second_per_address == 0 {
                    return Err(invalid(
                        "link.handshakes_per_second_per_address",
                        "must be above 0",
                    ));
                }
                Ok(())
            }
            Self::Serial { path, baud } => {
                if path.as_os_str().is_empty() {
                    return Err(invalid("link.path", "must not be empty"));
                }
                if *baud == 0 {
                    return Err(invalid("link.baud", "must be above 0"));
                }
                Ok(())
            }
        }
    }
}

/// The connection caps of a `tcp` or `tls` link: both above 0 (a cap of 0 would refuse
/// every device).
fn check_connection_caps(total: usize, per_address: usize) -> Result<(), ConfigError> {
    if total == 0 {
        return Err(invalid("link.max_connections", "must be above 0"));
    }
    if per_address == 0 {
        return Err(invalid(
            "link.max_connections_per_address",
            "must be above 0",
        ));
    }
    Ok(())
}

fn check_handshake_timeout(t: Duration) -> Result<(), ConfigError> {
    if t < Duration::from_millis(100) || t > MAX_HANDSHAKE {
        return Err(invalid("link.handshake_timeout", "100ms to 5m"));
    }
    Ok(())
}

/// Longest pre-shared key accepted, in bytes (OpenSSL's limit, kept so that a key works with
/// every DTLS peer).
pub const MAX_PSK_BYTES: usize = 256;

/// The shortest pre-shared key accepted: 16 bytes, 128 bits.
pub const MIN_PSK_BYTES: usize = 16;

/// Decodes a hex-encoded pre-shared key ([`MIN_PSK_BYTES`] to [`MAX_PSK_BYTES`] bytes).
pub fn parse_psk(hex: &str) -> Result<Vec<u8>, PskError> {
    let hex = hex.trim();
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(PskError::OddLength);
    }
    let key: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| PskError::NotHex)?;
    if key.len() > MAX_PSK_BYTES {
        return Err(PskError::TooLong);
    }
    if key.len() < MIN_PSK_BYTES {
        return Err(PskError::TooShort);
    }
    Ok(key)
}

/// Reads an MQTT users file (`broker.users_file`): `username:password` per line, `#` comments
/// and blank lines ignored; the password is the rest of the line after the first `:`. Refuses
/// a file other users may read (checked on the file opened, not on its name) and repeated or
/// empty names. Errors name the file and the line, never a password.
pub fn load_users_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(read_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(invalid(
                "broker.users_file",
                format!(
                    "{}: readable by other users (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    let mut users = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_error = |what: &str| {
            invalid(
                "broker.users_file",
                format!("{}: line {}: {what}", path.display(), n + 1),
            )
        };
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (name, password) = line
            .split_once(':')
            .ok_or_else(|| line_error("not username:password"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(line_error("an empty username"));
        }
        if password.is_empty() {
            return Err(line_error("an empty password"));
        }
        if users.insert(name.to_owned(), password.to_owned()).is_some() {
            return Err(line_error(&format!("user {name:?} again")));
        }
    }
    if users.is_empty() {
        return Err(invalid(
            "broker.users_file",
            format!("{}: no users", path.display()),
        ));
    }
    Ok(users)
}

/// Reads a PSK file: `device-id:hexkey` per line, `#` comments and blank lines ignored.
/// Refuses a file other users may read. Errors name the file and the line.
pub fn load_psk_file(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    // The mode is checked on the file opened, then read from it: no window in which the
    // name could be pointed at another file between the check and the read.
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = file.metadata().map_err(read_error)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(invalid(
                "link.psk_file",
                format!(
                    "{}: readable by other users (mode {:o}); chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ),
            ));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    let mut keys = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_error = |source: PskLineError| ConfigError::PskFile {
            path: path.to_owned(),
            line: n + 1,
            source,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, key) = line
            .split_once(':')
            .ok_or_else(|| line_error(PskLineError::NoColon))?;
        let id = id.trim();
        if id.is_empty() || id.len() > 32 {
            return Err(line_error(PskLineError::DeviceId));
        }
        let key = parse_psk(key).map_err(|e| line_error(e.into()))?;
        if keys.insert(id.to_owned(), key).is_some() {
            return Err(line_error(PskLineError::Twice { id: id.to_owned() }));
        }
    }
    Ok(keys)
}

/// Longest TLS handshake deadline accepted: beyond it the deadline no longer protects anything.
const MAX_HANDSHAKE: Duration = Duration::from_secs(300);

impl Config {
    /// Parses TOML (`origin` names the source in errors) and validates it.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config = Self::parse(text, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML without validating it (`origin` names the source in errors): for
    /// [`Config::check`], which reports every invalid value, not only the first.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a file without validating it (see [`Config::parse`]).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The topic prefix: `topic_root`, or `edge/{bridge_id}`.
    pub fn root(&self) -> String {
        self.topic_root
            .clone()
            .unwrap_or_else(|| format!("edge/{}", self.bridge_id))
    }

    /// Checks every value; the error names the first field that is wrong
    /// ([`Config::check`] reports them all, and the files the configuration names).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let InvalidValues { found, in_links } = self.invalid_values();
        match found
            .into_iter()
            .chain(in_links.into_iter().map(|(_, e)| e))
            .next()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every value that is wrong, in the order [`Config::validate`] looks at them; a link
    /// reports its first.
    fn invalid_values(&self) -> InvalidValues {
        let mut found = Vec::new();
        let mut in_links = Vec::new();
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.bridge_id.is_empty()
            || self.bridge_id.len() > 64
            || !self.bridge_id.chars().all(id_ok)
        {
            found.push(invalid(
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
                found.push(invalid(
                    "topic_root",
                    "a topic prefix without wildcards, empty levels or leading/trailing '/'",
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            found.push(invalid("data_dir", "must not be empty"));
        }
        if self.stats_interval < Duration::from_millis(100) {
            found.push(invalid("stats_interval", "at least 100ms"));
        }
        let q = &self.queue;
        if q.limit == 0 {
            found.push(invalid("queue.limit", "at least 1"));
        }
        if q.outbox_limit == 0 {
            found.push(invalid("queue.outbox_limit", "at least 1"));
        } else if q.outbox_limit < q.limit {
            found.push(invalid(
                "queue.outbox_limit",
                "at least queue.limit (a burst that fills the queue makes as many queued events)",
            ));
        }
        if q.max_attempts == 0 {
            found.push(invalid("queue.max_attempts", "at least 1"));
        }
        if q.retry_initial.is_zero() {
            found.push(invalid("queue.retry_initial", "more than 0"));
        }
        if q.retry_max < q.retry_initial {
            found.push(invalid("queue.retry_max", "at least queue.retry_initial"));
        }
        if q.execution_timeout < Duration::from_millis(100) {
            found.push(invalid("queue.execution_timeout", "at least 100ms"));
        }
        for (name, c) in &q.capabilities {
            if c.execution_timeout < Duration::from_millis(100) {
                found.push(invalid(
                    "queue.capabilities",
                    format!("{name:?}: execution_timeout of at least 100ms"),
                ));
            }
        }
        for (field, p) in [
            (
                "classes.guaranteed_max_percent",
                self.classes.guaranteed_max_percent,
            ),
            (
                "classes.besteffort_max_percent",
                self.classes.besteffort_max_percent,
            ),
        ] {
            if !(1..=100).contains(&p) {
                found.push(invalid(field, "1 to 100"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.resources {
            if !valid_resource_name(&r.name) {
                found.push(invalid(
                    "resource.name",
                    format!(
                        "{:?}: letters, digits, '-', '_' and '.', 1 to {MAX_RESOURCE_NAME} bytes",
                        r.name
                    ),
                ));
            }
            if !names.insert(r.name.as_str()) {
                found.push(invalid(
                    "resource.name",
                    format!("{:?} is declared twice", r.name),
                ));
            }
        }
        for id in self.urgent.devices.keys() {
            if id.is_empty() || id.len() > device_core::proto::MAX_DEVICE_ID {
                found.push(invalid(
                    "urgent.devices",
                    format!(
                        "{id:?}: device ids of 1 to {} bytes",
                        device_core::proto::MAX_DEVICE_ID
                    ),
                ));
            }
        }
        match &self.broker {
            BrokerConfig::Embedded {
                max_packet_bytes,
                max_connections,
                api_log_bytes,
                listen,
                users_file,
                allow_anonymous,
                tls,
            } => {
                if *max_packet_bytes < 1024 {
                    found.push(invalid("broker.max_packet_bytes", "at least 1024"));
                }
                if tls.as_ref().is_some_and(|t| t.max_handshakes == 0) {
                    found.push(invalid("broker.tls.max_handshakes", "at least 1"));
                }
                let exposed = [
                    Some(("broker.listen", *listen)),
                    tls.as_ref().map(|t| ("broker.tls.listen", t.listen)),
                ]
                .into_iter()
                .flatten()
                .find(|(_, addr)| !addr.ip().is_loopback());
                if let Some((field, listen)) =
                    exposed.filter(|_| users_file.is_none() && !*allow_anonymous)
                {
                    found.push(invalid(
                        field,
                        format!(
                            "{listen} is beyond loopback and the broker has no users: anyone who \
                             reaches it could submit, cancel and impersonate the bridge. Set \
                             broker.users_file (or allow_anonymous = true to accept that)"
                        ),
                    ));
                }
                if *max_connections == 0 {
                    found.push(invalid("broker.max_connections", "at least 1"));
                }
                if *api_log_bytes < 16 * 1024 {
                    found.push(invalid("broker.api_log_bytes", "at least 16384"));
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
                    found.push(invalid("broker.host", "must not be empty"));
                }
                if *port == 0 {
                    found.push(invalid("broker.port", "1 to 65535"));
                }
                if password.is_some() && username.is_none() {
                    found.push(invalid("broker.password", "needs broker.username"));
                }
                if *max_packet_bytes < 1024 {
                    found.push(invalid("broker.max_packet_bytes", "at least 1024"));
                }
                if let Some(t) = tls {
                    if t.client_cert.is_some() != t.client_key.is_some() {
                        found.push(invalid(
                            "broker.tls.client_key",
                            "client_cert and client_key go together",
                        ));
                    }
                }
            }
        }
        if self.links.is_empty() {
            found.push(invalid("link", "at least one device link"));
        }
        let mut seen = Vec::new();
        for (i, link) in self.links.iter().enumerate() {
            let endpoint = link.endpoint();
            // Port 0 asks for any free port: two of them never collide.
            let any_port = link.listen().is_some_and(|l| l.port() == 0);
            if !any_port && seen.contains(&endpoint) {
                in_links.push((
                    i,
                    invalid("link.listen", format!("{endpoint} is configured twice")),
                ));
            }
            seen.push(endpoint);
            if let Err(e) = link.validate() {
                in_links.push((i, e));
            }
        }
        if let Err(e) = self.validate_metrics() {
            found.push(e);
        }
        InvalidValues { found, in_links }
    }

    /// The metrics endpoint must not take a TCP port the broker or a device link listens on
    /// (the bridge would fail to start, naming the wrong listener).
    fn validate_metrics(&self) -> Result<(), ConfigError> {
        let Some(listen) = self.metrics.listen.filter(|l| l.port() != 0) else {
            return Ok(());
        };
        let broker = match &self.broker {
            BrokerConfig::Embedded { listen, tls, .. } => {
                vec![Some(*listen), tls.as_ref().map(|t| t.listen)]
            }
            BrokerConfig::External { .. } => Vec::new(),
        };
        let links = self.links.iter().map(|l| match l {
            LinkConfig::Tcp { listen, .. } | LinkConfig::Tls { listen, .. } => Some(*listen),
            // UDP (DTLS) and serial ports take no TCP port.
            LinkConfig::Dtls(_) | LinkConfig::Serial { .. } => None,
        });
        // A wildcard address takes the port on every address.
        let clash = |a: SocketAddr| {
            a.port() == listen.port()
                && (a.ip() == listen.ip()
                    || a.ip().is_unspecified()
                    || listen.ip().is_unspecified())
        };
        if broker.into_iter().chain(links).flatten().any(clash) {
            return Err(invalid(
                "metrics.listen",
                format!("{listen} is taken by the broker or a device link"),
            ));
        }
        Ok(())
    }
}

/// What [`Config::invalid_values`] found: errors outside the links, and errors of links by
/// their index in `links`.
#[derive(Debug)]
struct InvalidValues {
    found: Vec<ConfigError>,
    in_links: Vec<(usize, ConfigError)>,
}

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
