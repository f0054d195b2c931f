//! systemd's notification protocol, against the real bridge: with `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC` set (as a `Type=notify` unit with `WatchdogSec=` sets them), the bridge
//! sends READY=1 once its ready line is out, pings the watchdog at half its timeout while it
//! runs, and says STOPPING=1 on SIGTERM. Without the variables it sends nothing (every other
//! test runs so).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use edge_tests::{start_bridge_with, terminate};

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
            .env("WATCHDOG_USEC", "400000");
    });
    // The ready line has been read: READY=1 was sent by then or is on its way.
    let mut seen: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
        let pings = seen.iter().filter(|(_, m)| m == "WATCHDOG=1\n").count();
        if pings >= 6 && seen.iter().any(|(_, m)| m.starts_with("READY=1\n")) {
            break;
        }
    }
    let ready = seen
        .iter()
        .find(|(_, m)| m.starts_with("READY=1\n"))
        .unwrap_or_else(|| panic!("no READY=1: {seen:?}"));
    assert!(
        ready
            .1
            .contains(&format!("STATUS=ready: mqtt={}", bridge.mqtt)),
        "{}",
        ready.1
    );
    let pings: Vec<Instant> = seen
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1\n")
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 6, "watchdog pings: {seen:?}");
    // Half the 400 ms timeout apart: six pings take at least a second (the first is at once).
    let span = *pings.last().unwrap() - pings[0];
    assert!(span >= Duration::from_millis(900), "6 pings in {span:?}");

    assert!(terminate(bridge.proc).success());
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        stopping |= buf[..n].starts_with(b"STOPPING=1\n");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
}
