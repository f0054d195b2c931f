//! The DTLS device listener against hostile peers (issue 15, points 4 and 9), with the real
//! bridge, real sockets on loopback, `edge-device-sim` as the legitimate device and the rogue
//! device of [`edge_tests::rogue`] (over the bridge's own DTLS client) as the hostile one:
//! handshake budgets per address, a replayed ClientHello that cannot replace the established
//! session, another identity from an established address refused, one session per identity,
//! and a client that survives an error on its socket.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use broker_config::{DtlsLink, LinkConfig};
use edge_tests::rogue::{Rogue, hello};
use edge_tests::{
    Bridge, LogLines, Proc, Watcher, embedded_config, last_state, start_bridge_with_log,
    start_device_with, write_config,
};
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

const ROOT: &str = "edge/dtlslistener";
/// Every wait of these tests is bounded by this, unless it says otherwise.
const WAIT: Duration = Duration::from_secs(30);
const KEY_A: &str = "00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100";

/// 127.0.0.`n`: every 127/8 address is loopback, so a test can be several hosts.
fn host(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

fn key(hex: &str) -> Vec<u8> {
    broker_config::parse_psk(hex).expect("a test key")
}

/// A bridge whose device links are `links` (each on a free port), its log captured.
fn start(dir: &Path, links: Vec<LinkConfig>) -> (Bridge, LogLines) {
    let mut config = embedded_config("dtlslistener");
    config.links = links;
    let file = write_config(dir, &config);
    start_bridge_with_log(&dir.join("data"), &file)
}

/// A DTLS link on a free port with PSKs for dev-a and dev-b, changed by `adjust`.
fn dtls_link(adjust: impl FnOnce(&mut DtlsLink)) -> LinkConfig {
    let mut link = DtlsLink {
        psk: BTreeMap::from([
            ("dev-a".to_owned(), KEY_A.to_owned()),
            ("dev-b".to_owned(), KEY_B.to_owned()),
        ]),
        ..toml::from_str::<DtlsLink>("listen = \"127.0.0.1:0\"").expect("a DTLS link")
    };
    adjust(&mut link);
    LinkConfig::Dtls(link)
}

/// `edge-device-sim` over DTLS to `addr` as `id` with `extra` arguments.
fn dtls_device(addr: SocketAddr, id: &str, capabilities: &[&str], extra: &[&str]) -> Proc {
    let mut args = vec!["--dtls"];
    args.extend_from_slice(extra);
    start_device_with(addr, id, capabilities, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_handshakes_fail_fast_cannot_spend_the_whole_handshake_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(
        dir.path(),
        vec![dtls_link(|l| {
            l.handshakes_per_second = 2;
            l.handshakes_per_second_per_address = 1;
        })],
    );
    let addr = bridge.devices;
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    // 16 clients on 127.0.0.2 handshaking in a loop as an unknown identity: each handshake
    // fails at once (no key), or is given up after 100 ms when the bridge does not go on with
    // it (refused for a limit), and the next starts: far more attempts than the budget.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (stop, attempts) = (stop.clone(), attempts.clone());
        attackers.spawn(async move {
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                attempts.fetch_add(1, Ordering::Relaxed);
                let key = key(KEY_A);
                let attempt = Rogue::dtls(host(2), addr, "nobody", &key);
                if let Ok(connected) =
                    tokio::time::timeout(Duration::from_millis(100), attempt).await
                {
                    assert!(connected.is_err(), "an unknown identity got a session");
                }
            }
        });
    }
    // Let the flood reach the bridge before the device starts: 24 attempts.
    for _ in 0..200 {
        if attempts.load(Ordering::Relaxed) >= 24 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let _device = dtls_device(addr, "dev-a", &["echo"], &["--psk", KEY_A]);
    w.wait_for(
        Duration::from_secs(8),
        "dev-a online during the flood",
        |seen| {
            seen.iter()
                .any(|(t, v)| t.ends_with("/devices/dev-a") && v["online"] == true)
        },
    )
    .await;
    eprintln!(
        "dev-a online {:?} after it started, {} attacking handshakes so far",
        started.elapsed(),
        attempts.load(Ordering::Relaxed)
    );
    w.echo_completes(ROOT, "during-the-flood", "dev-a").await;
    stop.store(true, Ordering::Relaxed);
    attackers.abort_all();
    while attackers.join_next().await.is_some() {}
    // What the flood cost in log lines: the failed handshakes and the refusals, a handful
    // each (two budgets of five lines, and one more per ten seconds), whatever the number of
    // attempts.
    let attempts = attempts.load(Ordering::Relaxed);
    let about_the_flood = log
        .drain()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("127.0.0.2:"))
        .count();
    eprintln!("{about_the_flood} warnings for {attempts} handshakes from 127.0.0.2");
    assert!(
        about_the_flood <= 14,
        "{about_the_flood} warnings for {attempts} handshakes from 127.0.0.2"
    );
}

/// A UDP proxy between one device and a DTLS listener that keeps the first ClientHello
/// carrying a cookie the device sent, to replay it later from the proxy's own address (which
/// is the device's address as the bridge sees it).
struct ReplayProxy {
    /// Where the device connects.
    addr: SocketAddr,
    /// The bridge's side of the proxy.
    back: Arc<UdpSocket>,
    recorded: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

/// The cookie's length in a DTLS ClientHello (`None` if `d` is not one, or a fragment).
fn cookie_length(d: &[u8]) -> Option<usize> {
    // Record header (13), handshake header (12: type 1, length, message sequence, fragment
    // offset, fragment length), then version (2) and random (32), session id, cookie.
    let is_hello = d.len() > 60 && d[0] == 22 && d[13] == 1 && d[19..22] == [0, 0, 0];
    if !is_hello {
        return None;
    }
    let session_id = usize::from(d[59]);
    d.get(60 + session_id).map(|&n| usize::from(n))
}

impl ReplayProxy {
    async fn start(bridge: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(bridge).await.unwrap();
        let addr = front.local_addr().unwrap();
        let recorded: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let device: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, device, recorded) = (
                front.clone(),
                back.clone(),
                device.clone(),
                recorded.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *device.lock().unwrap() = Some(from);
                    let d = &buf[..n];
                    if cookie_length(d).is_some_and(|c| c > 0) {
                        recorded.lock().unwrap().get_or_insert_with(|| d.to_vec());
                    }
                    let _ = back.send(d).await;
                }
            });
        }
        {
            let back = back.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = back.recv(&mut buf).await {
                    let to = *device.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        Self {
            addr,
            back,
            recorded,
        }
    }

    /// Sends the recorded ClientHello again, from the proxy's address.
    async fn replay(&self) {
        let hello = self
            .recorded
            .lock()
            .unwrap()
            .clone()
            .expect("a ClientHello with a cookie went through the proxy");
        self.back.send(&hello).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_client_hello_does_not_replace_the_established_session() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(
        dir.path(),
        vec![dtls_link(|l| l.handshake_timeout = Duration::from_secs(2))],
    );
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let proxy = ReplayProxy::start(bridge.devices).await;
    let _device = dtls_device(proxy.addr, "dev-a", &["sleep"], &["--psk", KEY_A]);
    w.wait_device_online("dev-a").await;
    w.submit(
        ROOT,
        r#"{"id":"long","capability":"sleep","device":"dev-a","payload":{"ms":4000}}"#,
    )
    .await;
    w.wait_for(WAIT, "the long task running", |seen| {
        last_state(seen, "long").as_deref() == Some("running")
    })
    .await;
    // Someone who recorded the device's ClientHello (its cookie is still valid) sends it
    // again from the device's address: a new handshake starts beside the session, and ends
    // at its deadline, the device never answering it.
    proxy.replay().await;
    let from = format!("from={}", proxy.back.local_addr().unwrap());
    let line = log
        .wait_for(WAIT, "the replayed handshake's end", |l| {
            let ended = l.contains("DTLS session ended without proving a device");
            (ended && l.contains(&from)) || l.contains("replacing it")
        })
        .await;
    assert!(
        line.contains("handshake deadline passed"),
        "the established session was replaced: {line}"
    );
    // The session went on all along: the task completes in its first attempt.
    w.wait_for(WAIT, "the long task completed", |seen| {
        last_state(seen, "long").as_deref() == Some("completed")
    })
    .await;
    let events = &w.states()["long"];
    let dispatched = events.iter().filter(|e| e["state"] == "dispatched").count();
    assert_eq!(dispatched, 1, "the task was dispatched again: {events:#?}");
    assert!(!w.saw_offline("dev-a"), "dev-a went offline");
    assert!(
        !log.drain().iter().any(|l| l.contains("replacing it")),
        "the session was replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identity_from_an_established_address_cannot_replace_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), vec![dtls_link(|_| {})]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    // dev-a on a port of its own; killed without a close_notify, so the bridge still holds
    // its session.
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut device = dtls_device(
        bridge.devices,
        "dev-a",
        &["echo"],
        &["--psk", KEY_A, "--local-port", &port.to_string()],
    );
    w.wait_device_online("dev-a").await;
    device.child.kill().unwrap();
    device.child.wait().unwrap();
    // From that very address, a full handshake with dev-b's key.
    let socket = UdpSocket::bind(("127.0.0.1", port)).await.unwrap();
    let (_impostor, relay) = Rogue::dtls_on(socket, bridge.devices, "dev-b", &key(KEY_B))
        .await
        .expect("the DTLS handshake itself completes");
    let line = log
        .wait_for(WAIT, "the impostor's end", |l| {
            let ended = l.contains("DTLS session ended without proving a device");
            (ended && l.contains(&format!("from=127.0.0.1:{port}"))) || l.contains("replacing it")
        })
        .await;
    assert!(
        line.contains("the established session is kept") && line.contains("dev-b"),
        "the established session was replaced: {line}"
    );
    let why = tokio::time::timeout(WAIT, relay)
        .await
        .expect("the bridge closed the impostor's session")
        .unwrap();
    assert!(why.contains("close_notify"), "{why}");
    // dev-a's session was never replaced: no device document changed.
    assert!(!w.saw_offline("dev-a"), "dev-a went offline");
    assert!(
        !w.seen.iter().any(|(t, _)| t.ends_with("/devices/dev-b")),
        "dev-b got a device document"
    );
    assert!(!log.drain().iter().any(|l| l.contains("replacing it")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_of_an_identity_closes_its_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), vec![dtls_link(|_| {})]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    // Someone with dev-a's key holds a session from 127.0.0.2 (no Hello).
    let (_rogue, relay) = Rogue::dtls(host(2), bridge.devices, "dev-a", &key(KEY_A))
        .await
        .unwrap();
    // The device itself connects: its session takes the identity's only place.
    let _device = dtls_device(bridge.devices, "dev-a", &["echo"], &["--psk", KEY_A]);
    w.wait_device_online("dev-a").await;
    let online = Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("the older session was closed when the newer one was established")
        .unwrap();
    assert!(why.contains("close_notify"), "{why}");
    eprintln!(
        "the older session closed {:?} after dev-a was online",
        online.elapsed()
    );
    let line = log
        .wait_for(WAIT, "the older session's end", |l| {
            l.contains("DTLS session ended") && l.contains("from=127.0.0.2:")
        })
        .await;
    assert!(line.contains("max_sessions_per_identity = 1"), "{line}");
    w.echo_completes(ROOT, "the-newest", "dev-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtls_client_survives_an_error_on_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, _log) = start(dir.path(), vec![dtls_link(|_| {})]);
    // IP_RECVERR: an ICMP error about any datagram this socket sent comes back from its next
    // receive (as Windows always does with WSAECONNRESET).
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)
        .expect("IP_RECVERR");
    socket.set_nonblocking(true).unwrap();
    let prodder = socket.try_clone().unwrap();
    let socket = UdpSocket::from_std(socket).unwrap();
    let (mut device, relay) = Rogue::dtls_on(socket, bridge.devices, "dev-a", &key(KEY_A))
        .await
        .unwrap();
    device.open(hello("dev-a", 1), WAIT).await.unwrap();
    // A datagram to a closed port: the ICMP port unreachable makes the client's next
    // receive fail with "connection refused".
    let closed_port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    prodder.send_to(b"anyone there?", closed_port).unwrap();
    // The session goes on: the bridge's heartbeats (every 2 s) keep coming through it.
    let mut buf = [0u8; 512];
    // Two of them: the rogue sends nothing more, and the bridge closes its link at 7 s.
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(5), device.stream_mut().read(&mut buf))
            .await
            .expect("a heartbeat from the bridge within 5 s")
            .unwrap();
        assert!(n > 0, "the session ended");
    }
    assert!(!relay.is_finished(), "the client's relay ended");
}
