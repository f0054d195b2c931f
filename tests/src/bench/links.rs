//! The bridge of phases 4 to 6: two device links, plain TCP and DTLS with pre-shared keys,
//! written to a configuration file; its log goes to a file in its directory ([`spawn`], which
//! phase 9 uses too), so the bench can count what the bridge says about sessions and refusals
//! without flooding the terminal.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edge_bridge::link::dtls::client::{self, ClientSettings, Connected, Credential};

use super::BenchError;
use crate::{Bridge, Proc};

/// The only cipher suite of the bench's DTLS link and clients: RFC 7925's mandatory PSK suite.
pub(crate) const CIPHER: &str = "PSK-AES128-CCM8";

/// The DTLS link's limits, set far above anything the bench asks for so that the limiter is
/// never what is measured; the report prints them with the refusals the bridge logged.
#[derive(Clone, Copy, Debug)]
pub struct DtlsLimits {
    pub handshakes_per_second: u32,
    pub max_half_open: usize,
    pub max_sessions: usize,
    /// Each bench client holds many sessions of its one identity (phase 5).
    pub max_sessions_per_identity: usize,
    /// Longer than any phase: an established session is never dropped for idleness.
    pub idle_timeout: Duration,
}

pub(crate) const LIMITS: DtlsLimits = DtlsLimits {
    handshakes_per_second: 1_000_000,
    max_half_open: 100_000,
    max_sessions: 1_000_000,
    max_sessions_per_identity: 1_000_000,
    idle_timeout: Duration::from_secs(3_600),
};

/// A PSK identity and its key (16 random bytes).
#[derive(Clone, Debug)]
pub(crate) struct Psk {
    pub(crate) identity: String,
    pub(crate) key: Vec<u8>,
}

impl Psk {
    pub(crate) fn random(identity: String) -> Result<Self, BenchError> {
        let mut key = vec![0u8; 16];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom")
                .map_err(|e| BenchError::Dtls(e.to_string()))?,
            &mut key,
        )
        .map_err(|e| BenchError::Dtls(e.to_string()))?;
        Ok(Self { identity, key })
    }

    pub(crate) fn hex(&self) -> String {
        self.key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The settings of an in-process client with this key.
    pub(crate) fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            credential: Credential::Psk {
                identity: self.identity.clone(),
                key: self.key.clone(),
            },
            ciphers: CIPHER.to_owned(),
            mtu: 1200,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: LIMITS.idle_timeout,
        }
    }
}

/// An in-process DTLS client of one identity: its configuration is built once and serves
/// every handshake it makes.
#[derive(Debug)]
pub(crate) struct DtlsClient {
    pub(crate) context: std::sync::Arc<edge_dtls::ClientConfig>,
    pub(crate) settings: ClientSettings,
}

impl DtlsClient {
    pub(crate) fn new(psk: &Psk) -> Result<Self, BenchError> {
        let settings = psk.client_settings();
        let context = client::context(&settings).map_err(|e| BenchError::Dtls(e.to_string()))?;
        Ok(Self { context, settings })
    }

    /// A full handshake from a fresh UDP port.
    pub(crate) async fn connect(&self, bridge: SocketAddr) -> Result<Connected, String> {
        client::connect(&self.context, &self.settings, bridge)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A running bridge with both links.
#[derive(Debug)]
pub(crate) struct LinkedBridge {
    /// `devices` is the plain TCP link.
    pub(crate) bridge: Bridge,
    /// The DTLS link.
    pub(crate) udp: SocketAddr,
    /// The bridge's log (stderr).
    pub(crate) log: PathBuf,
}

impl LinkedBridge {
    /// Starts a bridge in `dir` whose DTLS link knows `keys` (from a key file).
    pub(crate) fn start(dir: &Path, bridge_id: &str, keys: &[&Psk]) -> Result<Self, BenchError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BenchError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // A key file, as operators configure it (`device-id:hexkey`, readable by the owner only).
        let psk_file = dir.join("devices.psk");
        let lines: String = keys
            .iter()
            .map(|k| format!("{}:{}\n", k.identity, k.hex()))
            .collect();
        std::fs::write(&psk_file, lines).map_err(io(&psk_file))?;
        std::fs::set_permissions(&psk_file, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&psk_file))?;
        // Every bench client is on 127.0.0.1: the per-address limits are the totals. Phase 5
        // holds `--dtls-sessions` plain TCP connections too.
        let config = format!(
            "bridge_id = \"{bridge_id}\"\n\
             [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\
             [[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n\
             max_connections = {}\nmax_connections_per_address = {}\n\
             [[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:0\"\nciphers = \"{CIPHER}\"\n\
             idle_timeout = \"{}s\"\nhandshakes_per_second = {}\n\
             handshakes_per_second_per_address = {}\nmax_half_open = {}\n\
             max_half_open_per_address = {}\nmax_sessions = {}\n\
             max_sessions_per_identity = {}\npsk_file = {:?}\n",
            LIMITS.max_sessions,
            LIMITS.max_sessions,
            LIMITS.idle_timeout.as_secs(),
            LIMITS.handshakes_per_second,
            LIMITS.handshakes_per_second,
            LIMITS.max_half_open,
            LIMITS.max_half_open,
            LIMITS.max_sessions,
            LIMITS.max_sessions_per_identity,
            psk_file.display().to_string()
        );
        let config_path = dir.join("bridge.toml");
        std::fs::write(&config_path, config).map_err(io(&config_path))?;
        let (bridge, log) = spawn(dir, &config_path)?;
        // The ready line lists the device links in the order of the file: TCP, then DTLS.
        let [_, udp] = bridge.listeners.as_slice() else {
            return Err(BenchError::Bridge(format!(
                "expected a TCP and a DTLS link, got {:?}; its log: {}",
                bridge.listeners,
                log.display()
            )));
        };
        let udp = *udp;
        Ok(Self { bridge, udp, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.bridge.proc.child.id()
    }

    /// Lines of the log so far that contain `needle`.
    pub(crate) fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Handshakes the DTLS link refused for a limit (`max_sessions`, `max_half_open`,
    /// `handshakes_per_second`, ...). The bridge logs refusals within a budget (a few lines,
    /// then one every ten seconds) with a running count, so this is the largest count logged.
    pub(crate) fn refused(&self) -> u64 {
        self.log_lines("limit reached")
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("refused=")? + "refused=".len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }
}

/// Starts `edge-bridge run` on the configuration file `config` with its data in `dir/data` and
/// its log (stderr, plain lines) in `dir/bridge.log`, and waits for its ready line; returns
/// the bridge (its device links in the file's order) and the log's path.
pub(crate) fn spawn(dir: &Path, config: &Path) -> Result<(Bridge, PathBuf), BenchError> {
    let log = dir.join("bridge.log");
    let log_file = std::fs::File::create(&log).map_err(|source| BenchError::Io {
        path: log.clone(),
        source,
    })?;
    let exe = crate::binary("edge-bridge");
    let mut child = Command::new(&exe)
        .arg("run")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        // Plain lines in the log file, for the bench to match.
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| BenchError::Bridge(format!("{}: {e}", exe.display())))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let proc = Proc {
        child,
        name: "edge-bridge",
    };
    let fail = |why: String| BenchError::Bridge(format!("{why}; its log: {}", log.display()));
    let line = first_line(stdout, Duration::from_secs(30))
        .ok_or_else(|| fail("no ready line within 30 s".into()))?;
    let field = |key: &str| -> Vec<SocketAddr> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(|v| v.split(',').filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default()
    };
    let (mqtt, listeners) = (field("mqtt="), crate::listening_links(&line));
    let (Some(&mqtt), Some(&devices)) = (mqtt.first(), listeners.first()) else {
        return Err(fail(format!("unexpected ready line {line:?}")));
    };
    let bridge = Bridge {
        proc,
        mqtt,
        devices,
        listeners,
        metrics: field("metrics=").first().copied(),
    };
    Ok((bridge, log))
}

/// The first line of `out`, read on a helper thread, or `None` after `within`.
fn first_line(out: impl std::io::Read + Send + 'static, within: Duration) -> Option<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within).ok().filter(|l| !l.is_empty())
}
