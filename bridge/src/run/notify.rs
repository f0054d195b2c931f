//! Telling a service manager how the bridge is doing: systemd's notification protocol
//! (`sd_notify(3)`), spoken without libsystemd. With `Type=notify` systemd sets
//! `$NOTIFY_SOCKET`, a datagram socket, and waits for `READY=1` before it counts the service as
//! started; with `WatchdogSec=` it also sets `$WATCHDOG_USEC` and restarts the service when no
//! `WATCHDOG=1` arrives within that time. Without the variables (a terminal, OpenHarmony's
//! init, a container) every call does nothing.
//!
//! The watchdog is kept by the driver's own loop, between two turns, so a wedged turn (a
//! commit that never returns, a loop that never yields) stops the pings and systemd restarts
//! the bridge, which then resumes from the durable queue.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where the notifications go, read once from the environment at start.
#[derive(Debug, Default)]
pub(super) struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: Address,
}

#[derive(Debug)]
enum Address {
    Path(PathBuf),
    /// A Linux abstract socket: `$NOTIFY_SOCKET` starts with '@'.
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A variable that cannot be
    /// used is logged and ignored: the bridge runs without the service manager's help rather
    /// than not at all.
    pub(super) fn from_env() -> Self {
        let vars = |name: &str| std::env::var_os(name);
        Self::from_vars(
            vars("NOTIFY_SOCKET").map(|v| v.into_encoded_bytes()),
            vars("WATCHDOG_USEC").and_then(|v| v.into_string().ok()),
            vars("WATCHDOG_PID").and_then(|v| v.into_string().ok()),
            std::process::id(),
        )
    }

    fn from_vars(
        socket: Option<Vec<u8>>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
        pid: u32,
    ) -> Self {
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return Self::default();
        };
        let address = match socket.strip_prefix(b"@") {
            Some(name) => Address::Abstract(name.to_vec()),
            None => {
                use std::os::unix::ffi::OsStringExt;
                Address::Path(PathBuf::from(std::ffi::OsString::from_vec(socket)))
            }
        };
        let socket = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a socket to notify the service manager");
                return Self::default();
            }
        };
        // The watchdog is ours unless it names another process (a wrapper that exec'd us
        // keeps the pid; a child would not).
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(pid));
        let watchdog = match watchdog_usec.map(|u| u.trim().parse::<u64>()) {
            Some(Ok(usec)) if usec > 0 && ours => Some(Duration::from_micros(usec)),
            Some(Ok(_)) | None => None,
            Some(Err(_)) => {
                tracing::warn!("WATCHDOG_USEC is not a number of microseconds; no watchdog");
                None
            }
        };
        Self {
            target: Some(Target { socket, address }),
            watchdog,
        }
    }

    /// How often to ping the watchdog: half its timeout, as sd_watchdog_enabled(3) advises.
    pub(super) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|t| t / 2)
    }

    /// The bridge is running: its queue is open and its device listeners are bound.
    pub(super) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    /// A one-line status for `systemctl status`.
    pub(super) fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}\n"));
    }

    /// The driver's loop is alive.
    pub(super) fn watchdog(&self) {
        self.send("WATCHDOG=1\n");
    }

    /// A stop was requested; the bridge finishes its turn and says it is offline.
    pub(super) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping\n");
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        let sent = match &target.address {
            Address::Path(path) => target.socket.send_to(message.as_bytes(), path),
            Address::Abstract(name) => send_abstract(&target.socket, message.as_bytes(), name),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(socket: &UnixDatagram, message: &[u8], name: &[u8]) -> std::io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(message, &address)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> (tempfile::TempDir, UnixDatagram, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let bytes = path.into_os_string().into_encoded_bytes();
        (dir, socket, bytes)
    }

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_there_is_no_watchdog() {
        let n = Notifier::from_vars(None, Some("1000000".into()), None, 7);
        assert!(n.target.is_none());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("ok");
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let (_dir, socket, path) = receiver();
        let n = Notifier::from_vars(Some(path), None, None, 7);
        n.ready("listening");
        assert_eq!(received(&socket), "READY=1\nSTATUS=listening\n");
        n.status("MQTT API live");
        assert_eq!(received(&socket), "STATUS=MQTT API live\n");
        n.watchdog();
        assert_eq!(received(&socket), "WATCHDOG=1\n");
        n.stopping();
        assert!(received(&socket).starts_with("STOPPING=1\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("edge-bridge-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_vars(Some(format!("@{name}").into_bytes()), None, None, 7);
        n.watchdog();
        assert_eq!(received(&socket), "WATCHDOG=1\n");
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_timeout_and_only_by_its_process() {
        let (_dir, _socket, path) = receiver();
        let n = Notifier::from_vars(Some(path.clone()), Some("30000000".into()), None, 7);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let n = Notifier::from_vars(
            Some(path.clone()),
            Some("30000000".into()),
            Some("7".into()),
            7,
        );
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let n = Notifier::from_vars(
            Some(path.clone()),
            Some("30000000".into()),
            Some("8".into()),
            7,
        );
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(Some(path), Some("soon".into()), None, 7);
        assert_eq!(n.watchdog_interval(), None);
    }
}
