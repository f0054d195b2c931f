//! systemd's notification protocol, against the real bridge: with `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC` set (as a `Type=notify` unit with `WatchdogSec=` sets them), the bridge
//! sends READY=1 once its queue is open and its listeners bound, a STATUS line once the MQTT
//! API is live, pings the watchdog at half its timeout while it runs, and says STOPPING=1 on
//! SIGTERM. Without the variables it sends nothing (every other test runs so).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use edge_tests::{start_bridge_with, terminate};

/// The watchdog's timeout given to the bridge: it pings every 500 ms.
const WATCHDOG: Duration = Duration::from_secs(1);

#[test]
fn the_bridge_tells_systemd_it_is_ready_pings_the_watchdog_and_says_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let bridge = start_bridge_with(&dir.path().join("data"), &[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string());
    });
    // Messages as they arrive, with when: the ready line has been read, so READY=1 and
    // the first pings are already queued on the socket.
    let mut seen: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(30);
    let late_pings = |seen: &[(Instant, String)]| -> Vec<Instant> {
        // Pings received over a second after the first message: not a backlog read at once.
        let start = seen[0].0 + Duration::from_secs(1);
        seen.iter()
            .filter(|(t, m)| m == "WATCHDOG=1\n" && *t > start)
            .map(|(t, _)| *t)
            .collect()
    };
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
        if !seen.is_empty() && late_pings(&seen).len() >= 9 {
            break;
        }
    }
    let messages: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    let ready = messages
        .iter()
        .position(|m| m.starts_with("READY=1\n"))
        .unwrap_or_else(|| panic!("no READY=1: {messages:?}"));
    let live = messages
        .iter()
        .position(|m| m.starts_with("STATUS=running; MQTT API live on edge/edge-bridge"))
        .unwrap_or_else(|| panic!("no STATUS of a live MQTT API: {messages:?}"));
    assert!(ready < live, "{messages:?}");

    // Half the timeout apart: the median gap, so that one late wake-up on a loaded machine
    // does not decide; pinging at the whole timeout, or in bursts, fails.
    let pings = late_pings(&seen);
    assert!(pings.len() >= 9, "watchdog pings: {messages:?}");
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= WATCHDOG * 3 / 10 && median <= WATCHDOG * 7 / 10,
        "median gap between pings {median:?} for a {WATCHDOG:?} watchdog: {gaps:?}"
    );

    assert!(terminate(bridge.proc).success());
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        stopping |= buf[..n].starts_with(b"STOPPING=1\n");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
}
