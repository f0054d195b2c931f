//! Stream device listeners (plain TCP, TLS) against hostile peers (issue 15, points 4 and 9),
//! with the real bridge, real sockets on loopback, `edge-device-sim` as the legitimate device
//! and the rogue device of [`edge_tests::rogue`] as the hostile one: connection caps (in total
//! and per address), a cap on concurrent TLS handshakes, a file-descriptor limit a flood cannot
//! exhaust, keepalive and user timeout on device sockets, a deadline for the `Hello`, logs of
//! bad frames and refusals within a budget. (`dtls_listener.rs`: the same for DTLS.)

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use broker_config::LinkConfig;
use edge_tests::rogue::{Rogue, hello};
use edge_tests::{
    Bridge, LogLines, Proc, Watcher, embedded_config, make_link_certificates,
    start_bridge_with_log, start_device, start_device_with, write_config,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const ROOT: &str = "edge/listeners";
/// Every wait of these tests is bounded by this, unless it says otherwise.
const WAIT: Duration = Duration::from_secs(30);

/// 127.0.0.`n`: every 127/8 address is loopback, so a test can be several hosts.
fn host(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A bridge whose device links are `links` (each on a free port), its log captured.
fn start(dir: &Path, links: Vec<LinkConfig>) -> (Bridge, LogLines) {
    let mut config = embedded_config("listeners");
    config.links = links;
    let file = write_config(dir, &config);
    start_bridge_with_log(&dir.join("data"), &file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_a_cap_are_closed_at_once_counted_and_logged_within_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(
        dir.path(),
        vec![LinkConfig::Tcp {
            listen: any_port(),
            max_connections: 4,
            max_connections_per_address: 2,
        }],
    );
    let addr = bridge.devices;
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = start_device(addr, "dev-1", &["echo"]);
    w.wait_device_online("dev-1").await;

    // 127.0.0.2 takes its share: two devices with sessions.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut r = Rogue::tcp_from(host(2), addr).await.unwrap();
        r.open(hello(&format!("rogue-{i}"), 1), WAIT).await.unwrap();
        held.push(r);
    }
    // A third connection from it is closed at once, before it says anything.
    let mut third = Rogue::tcp_from(host(2), addr).await.unwrap();
    let closed = third
        .closed_within(Duration::from_secs(5))
        .await
        .expect("the per-address cap closes the third connection from 127.0.0.2");
    assert_eq!(closed.bytes, 0);
    // Another host fills the total (dev-1, two from 127.0.0.2, this one)...
    let mut fourth = Rogue::tcp_from(host(3), addr).await.unwrap();
    fourth.open(hello("rogue-3", 1), WAIT).await.unwrap();
    // ... and everyone after is closed at once, twenty times over.
    for _ in 0..20 {
        let mut r = Rogue::tcp_from(host(4), addr).await.unwrap();
        r.closed_within(Duration::from_secs(5))
            .await
            .expect("the total cap closes a fifth connection");
    }
    // dev-1 is served meanwhile.
    w.echo_completes(ROOT, "during-the-refusals", "dev-1").await;

    // Every refusal was logged or counted before its connection closed. Closing rogue-3's
    // link now logs a line after all of them.
    drop(fourth);
    log.wait_for(WAIT, "rogue-3's link closed", |l| {
        l.contains("device link closed") && l.contains("peer=127.0.0.3:")
    })
    .await;
    let refusals: Vec<&String> = log
        .seen
        .iter()
        .filter(|l| l.contains("device connection refused: limit reached"))
        .collect();
    assert!(
        refusals.iter().any(|l| l.contains("peer=127.0.0.2:")
            && l.contains("limit=\"max_connections_per_address\"")),
        "{refusals:#?}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("peer=127.0.0.4:") && l.contains("limit=\"max_connections\"")),
        "{refusals:#?}"
    );
    // 21 refusals, 5 lines (the budget's burst); the next line will carry the count.
    assert_eq!(refusals.len(), 5, "{refusals:#?}");
    assert!(refusals.iter().all(|l| l.contains("WARN")), "{refusals:#?}");
}

/// The certificates of a TLS link: a CA, the bridge's certificate for 127.0.0.1 and one for
/// device `dev-a`.
fn make_certificates(dir: &Path) {
    make_link_certificates(dir, "/CN=listeners CA", &["dev-a"]);
}

/// A TLS link on a free port with the certificates of [`make_certificates`].
fn tls_link(dir: &Path, handshake_timeout: Duration, max_handshakes: usize) -> LinkConfig {
    LinkConfig::Tls {
        listen: any_port(),
        cert_file: dir.join("bridge.pem"),
        key_file: dir.join("bridge.key"),
        client_ca_file: dir.join("ca.pem"),
        handshake_timeout,
        max_connections: 64,
        max_connections_per_address: 16,
        max_handshakes,
    }
}

/// `edge-device-sim` as `dev-a` over TLS.
fn tls_device(bridge: &Bridge, dir: &Path) -> Proc {
    let file = |name: &str| dir.join(name).display().to_string();
    start_device_with(
        bridge.devices,
        "dev-a",
        &["echo"],
        &[
            "--tls-ca",
            &file("ca.pem"),
            "--tls-cert",
            &file("dev-a.pem"),
            "--tls-key",
            &file("dev-a.key"),
        ],
    )
}

/// The file descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_tls_connections_cannot_take_a_small_file_limit_from_a_device() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (bridge, _log) = start(
        dir.path(),
        vec![tls_link(dir.path(), Duration::from_secs(10), 64)],
    );
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    // The bridge may open 40 more files than it has now (a gateway whose limit is nearly
    // used up by its fleet).
    let pid = bridge.proc.child.id();
    let limit = (open_fds(pid) + 40) as u64;
    let target = rustix::process::Pid::from_raw(pid as i32).expect("a process id");
    let nofile = rustix::process::Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    rustix::process::prlimit(Some(target), rustix::process::Resource::Nofile, nofile)
        .expect("prlimit on the bridge");

    // 200 connections from 127.0.0.2 that never start a handshake, all held open: with no
    // caps they take every file the bridge may open for the 10 s of their handshake
    // deadline, and the device's connection waits in the accept queue behind the rest.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(host(2), 0)).unwrap();
        idle.push(socket.connect(bridge.devices).await.unwrap());
    }
    let started = Instant::now();
    let _device = tls_device(&bridge, dir.path());
    w.wait_for(
        Duration::from_secs(8),
        "dev-a online despite the flood",
        |seen| {
            seen.iter()
                .any(|(t, v)| t.ends_with("/devices/dev-a") && v["online"] == true)
        },
    )
    .await;
    eprintln!("dev-a online {:?} after it started", started.elapsed());
    w.echo_completes(ROOT, "behind-the-flood", "dev-a").await;
    drop(idle);
}

/// The first flight of a TLS client (a ClientHello), made by rustls in memory.
fn tls_client_hello() -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut hello).unwrap();
    }
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_beyond_max_handshakes_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (bridge, _log) = start(
        dir.path(),
        vec![tls_link(dir.path(), Duration::from_secs(3), 2)],
    );
    let addr = bridge.devices;
    let hello_from = |n: u8| async move {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(host(n), 0)).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        tcp.write_all(&tls_client_hello()).await.unwrap();
        tcp
    };
    let mut reply = [0u8; 4096];
    // Two clients whose ClientHello was answered, and who never send their next flight, hold
    // both handshake slots.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tcp = hello_from(2).await;
        let n = tokio::time::timeout(WAIT, tcp.read(&mut reply))
            .await
            .expect("a ServerHello while a slot is free")
            .unwrap();
        assert!(n > 0);
        stalled.push(Rogue::new(tcp));
    }
    // A third one's ClientHello is not answered while they hold them...
    let mut first = hello_from(3).await;
    let early = tokio::time::timeout(Duration::from_secs(1), first.read(&mut reply)).await;
    assert!(
        early.is_err(),
        "a third handshake ran beside two that hold both slots: {early:?}"
    );
    // ... nor a fourth's, opened a second later (so that its own deadline leaves it time once
    // the stalled ones are gone) ...
    let mut waiting = hello_from(4).await;
    // ... until the stalled ones reach their deadline and are dropped: then it gets its
    // ServerHello.
    for s in &mut stalled {
        s.closed_within(WAIT)
            .await
            .expect("a stalled handshake is dropped at its deadline");
    }
    let n = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut reply))
        .await
        .expect("the waiting handshake goes on once a slot is free")
        .unwrap();
    assert!(
        n > 5 && reply[0] == 22,
        "a TLS handshake record (22), got {:?}",
        &reply[..n]
    );
    drop(first);
    drop(waiting);
    // A device gets in as usual.
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = tls_device(&bridge, dir.path());
    w.echo_completes(ROOT, "after-the-wait", "dev-a").await;
}

/// The socket `pid` holds whose peer is `peer`, duplicated into this process.
fn socket_of(pid: u32, peer: SocketAddr) -> std::os::fd::OwnedFd {
    let target = rustix::process::Pid::from_raw(pid as i32).expect("a process id");
    let pidfd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty())
        .expect("pidfd_open (Linux 5.3 or later)");
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let Ok(dup) =
            rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        else {
            continue;
        };
        let theirs = socket2::SockRef::from(&dup)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        if theirs == Some(peer) {
            return dup;
        }
    }
    panic!("the bridge holds no socket connected to {peer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_sockets_get_tcp_keepalive_and_a_user_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, _log) = start(dir.path(), vec![LinkConfig::tcp(any_port())]);
    let mut device = Rogue::tcp(bridge.devices).await.unwrap();
    // Welcomed: the bridge accepted the connection and set its options long before.
    device.open(hello("kept-alive", 1), WAIT).await.unwrap();
    let socket = socket_of(bridge.proc.child.id(), device.local_addr());
    let socket = socket2::SockRef::from(&socket);
    assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE");
    assert_eq!(
        socket.tcp_keepalive_time().unwrap(),
        Duration::from_secs(10)
    );
    assert_eq!(
        socket.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(5)
    );
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
    assert_eq!(
        socket.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(21)),
        "TCP_USER_TIMEOUT"
    );
    assert!(socket.tcp_nodelay().unwrap(), "TCP_NODELAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_hello_is_closed_however_many_heartbeats_it_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), vec![LinkConfig::tcp(any_port())]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = start_device(bridge.devices, "dev-1", &["echo"]);
    w.wait_device_online("dev-1").await;
    let mut rogue = Rogue::tcp(bridge.devices).await.unwrap();
    let local = rogue.local_addr();
    let started = Instant::now();
    // A valid heartbeat every second, and never a Hello: each is answered with NoSession.
    let mut closed = None;
    for _ in 0..15 {
        if rogue.heartbeat().await.is_err() {
            break;
        }
        if let Ok(c) = rogue.closed_within(Duration::from_secs(1)).await {
            closed = Some(c);
            break;
        }
    }
    let closed = closed.expect("the link was still open after 15 heartbeats");
    let after = started.elapsed();
    assert!(closed.bytes > 0, "the heartbeats were answered (NoSession)");
    // The liveness timeout (7 s) from the connection, plus a margin for a loaded machine.
    assert!(
        after >= Duration::from_millis(6_500) && after < Duration::from_secs(12),
        "closed after {after:?}"
    );
    let line = log
        .wait_for(WAIT, "the link closed for want of a Hello", |l| {
            l.contains("device link closed") && l.contains(&format!("peer={local}"))
        })
        .await;
    assert!(line.contains("no Hello within 7000 ms"), "{line}");
    // The device with a session is served all along.
    w.echo_completes(ROOT, "beside-the-heartbeats", "dev-1")
        .await;
    assert!(!w.saw_offline("dev-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_bad_frames_cost_a_handful_of_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), vec![LinkConfig::tcp(any_port())]);
    let mut rogue = Rogue::tcp(bridge.devices).await.unwrap();
    // 5,000 bad frames ("a", then the delimiter), then a proper session: once it is welcomed,
    // the bridge has read every one of them.
    rogue.send_raw(&b"a\0".repeat(5_000)).await.unwrap();
    rogue.open(hello("noisy", 1), WAIT).await.unwrap();
    log.wait_for(WAIT, "the noisy device connected", |l| {
        l.contains("device connected") && l.contains("device=noisy")
    })
    .await;
    let bad: Vec<&String> = log
        .seen
        .iter()
        .filter(|l| l.contains("dropped a bad frame"))
        .collect();
    assert!(
        !bad.is_empty() && bad.len() <= 5,
        "{} lines about bad frames",
        bad.len()
    );
    assert!(bad[0].contains("bad_frames=1"), "{}", bad[0]);
}
