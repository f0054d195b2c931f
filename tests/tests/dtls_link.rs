//! The DTLS device link (UDP + DTLS 1.2, edge-dtls), against the real bridge process:
//! - `openssl s_client -dtls1_2` and `gnutls-cli --udp` complete a PSK-AES128-CCM8 handshake;
//! - a device proving its id with a PSK, or with a certificate, completes tasks;
//! - a wrong PSK and an unknown identity are dropped within the handshake deadline and leave
//!   no session;
//! - a valid credential for one device with a Hello claiming another is refused;
//! - a device that reboots on the same address and port reconnects;
//! - through a UDP proxy that loses 20 % of the datagrams each way, every task completes;
//! - a flood of 1,000 ClientHellos from many source ports costs no memory and does not stop a
//!   legitimate device.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edge_tests::{
    Bridge, LogLines, Proc, Watcher, last_state, make_link_certificates, start_bridge_with_log,
    start_device_with,
};
use tokio::net::UdpSocket;

const ROOT: &str = "edge/dtlslink";
const WAIT: Duration = Duration::from_secs(30);
const KEY_A: &str = "00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100";

/// Starts a bridge whose only device link is DTLS with PSKs for dev-a and dev-b (and, with
/// `certificates`, device certificates signed by a test CA), `extra` appended to the link.
fn start(dir: &Path, certificates: bool, extra: &str) -> (Bridge, LogLines) {
    let config = dir.join("bridge.toml");
    let mut link = format!(
        "[[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:0\"\n\
         psk = {{ \"dev-a\" = \"{KEY_A}\", \"dev-b\" = \"{KEY_B}\" }}\n{extra}\n"
    );
    if certificates {
        make_certificates(dir);
        let file = |name: &str| dir.join(name).display().to_string();
        link.push_str(&format!(
            "cert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
            file("bridge.pem"),
            file("bridge.key"),
            file("ca.pem")
        ));
    }
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"dtlslink\"\n\
             [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n{link}"
        ),
    )
    .unwrap();
    start_bridge_with_log(&dir.join("data"), &config)
}

/// A CA, the bridge's certificate (ECDSA P-256, for 127.0.0.1) and one for device dev-c.
fn make_certificates(dir: &Path) {
    make_link_certificates(dir, "/CN=test CA", &["dev-c"]);
}

/// `edge-device-sim` over DTLS to `addr` with `extra` (the credential).
fn dtls_device(addr: SocketAddr, id: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--dtls"];
    args.extend_from_slice(extra);
    start_device_with(addr, id, &["echo"], &args)
}

/// Runs an external tool to its end (bounded by `timeout`, the coreutils command) and
/// returns its exit status and both outputs; fails loudly when it is missing.
fn run_tool(program: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("timeout (coreutils) is missing");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(127),
        "{program} is not installed: tests/run.sh installs it (apt-get install {})",
        if program == "gnutls-cli" {
            "gnutls-bin"
        } else {
            program
        }
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_and_gnutls_complete_a_psk_ccm8_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), false, "");
    let port = bridge.devices.port().to_string();
    let addr = bridge.devices.to_string();

    // openssl s_client: the handshake completes on PSK-AES128-CCM8, then Q closes it.
    let (_, out) = run_tool(
        "openssl",
        &[
            "s_client",
            "-dtls1_2",
            "-connect",
            &addr,
            "-psk",
            KEY_A,
            "-psk_identity",
            "dev-a",
            "-cipher",
            "PSK-AES128-CCM8",
        ],
        "Q\n",
    );
    assert!(
        out.contains("Cipher is PSK-AES128-CCM8") && out.contains("DTLSv1.2"),
        "openssl s_client:\n{out}"
    );
    log.wait_for(WAIT, "the s_client session", |l| {
        l.contains("DTLS session established")
            && l.contains("\"dev-a\"")
            && l.contains("PSK-AES128-CCM8")
    })
    .await;

    // The bridge offers no session to resume (a resumed session would prove no identity):
    // the session id it gave s_client is empty.
    let session_id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Session-ID:"))
        .unwrap_or_else(|| panic!("no Session-ID line:\n{out}"));
    assert_eq!(session_id.trim(), "", "a resumable session was offered");

    // gnutls-cli, restricted to AES-128-CCM-8 with PSK key exchange.
    let (_, out) = run_tool(
        "gnutls-cli",
        &[
            "--udp",
            "--port",
            &port,
            "--pskusername",
            "dev-b",
            "--pskkey",
            KEY_B,
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+PSK",
            "127.0.0.1",
        ],
        "",
    );
    assert!(
        out.contains("Handshake was completed") && out.contains("AES-128-CCM-8"),
        "gnutls-cli:\n{out}"
    );
    log.wait_for(WAIT, "the gnutls-cli session", |l| {
        l.contains("DTLS session established")
            && l.contains("\"dev-b\"")
            && l.contains("PSK-AES128-CCM8")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_proving_their_id_by_psk_or_certificate_complete_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), true, "");
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _a = dtls_device(bridge.devices, "dev-a", &["--psk", KEY_A]);
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (ca, pem, key) = (file("ca.pem"), file("dev-c.pem"), file("dev-c.key"));
    let _c = dtls_device(
        bridge.devices,
        "dev-c",
        &[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &pem,
            "--tls-key",
            &key,
            "--tls-server-name",
            "127.0.0.1",
        ],
    );
    w.echo_completes(ROOT, "psk-1", "dev-a").await;
    w.echo_completes(ROOT, "cert-1", "dev-c").await;
    // Each credential on RFC 7925's suite for it.
    for (credential, name, cipher) in [
        ("DTLS PSK identity", "dev-a", "PSK-AES128-CCM8"),
        (
            "DTLS client certificate",
            "dev-c",
            "ECDHE-ECDSA-AES128-CCM8",
        ),
    ] {
        log.wait_for(WAIT, credential, |l| {
            l.contains("DTLS session established")
                && l.contains(credential)
                && l.contains(&format!("\"{name}\""))
                && l.contains(&format!("cipher=\"{cipher}\""))
        })
        .await;
    }
    for device in ["dev-a", "dev-c"] {
        let doc = w
            .seen
            .iter()
            .rev()
            .find(|(t, _)| t.ends_with(&format!("/devices/{device}")))
            .unwrap_or_else(|| panic!("{device}'s device document"));
        assert_eq!(doc.1["online"], true, "{device}");
    }
}

/// Waits for the log line saying the session from a peer ended for `reason`, with no
/// session left.
async fn ended_with_nothing_left(log: &mut LogLines, reason: &str) -> String {
    log.wait_for(WAIT, reason, |l| {
        l.contains("DTLS session ended")
            && l.contains(reason)
            && l.contains("sessions=0")
            && l.contains("half_open=0")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_psk_or_an_unknown_identity_is_dropped_within_the_handshake_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), false, "handshake_timeout = \"2s\"");
    let addr = bridge.devices.to_string();
    for (identity, key, reason) in [
        // A wrong key: the bridge cannot decrypt the client's Finished and DTLS drops bad
        // records silently, so only the deadline ends it; the log says what was seen.
        (
            "dev-a",
            KEY_B,
            "handshake deadline passed: the peer's Finished failed authentication",
        ),
        // An unknown identity: no key, the handshake fails at once.
        ("nobody", KEY_A, "unknown PSK identity \"nobody\""),
    ] {
        let started = std::time::Instant::now();
        // s_client waits silently for a reply that never comes: killed when done with.
        let _client = Proc {
            child: Command::new("openssl")
                .args([
                    "s_client",
                    "-dtls1_2",
                    "-connect",
                    &addr,
                    "-psk",
                    key,
                    "-psk_identity",
                    identity,
                    "-cipher",
                    "PSK-AES128-CCM8",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl is not installed: tests/run.sh installs it"),
            name: "openssl s_client",
        };
        let line = ended_with_nothing_left(&mut log, reason).await;
        // Within the deadline (2 s) and a margin for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(2 + 8),
            "{identity}: dropped after {:?}: {line}",
            started.elapsed()
        );
        assert!(
            !log.drain()
                .iter()
                .any(|l| l.contains("DTLS session established")),
            "{identity}: a session was established"
        );
        log.seen.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_psk_for_one_device_cannot_speak_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), false, "");
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    w.submit(
        ROOT,
        r#"{"id":"b1","capability":"echo","device":"dev-b","payload":"for b"}"#,
    )
    .await;
    // dev-a's identity and key, a Hello that says dev-b.
    let _impostor = dtls_device(
        bridge.devices,
        "dev-b",
        &["--psk", KEY_A, "--psk-identity", "dev-a"],
    );
    let line = log
        .wait_for(WAIT, "the refused Hello", |l| {
            l.contains("WARN") && l.contains("claimed=dev-b")
        })
        .await;
    assert!(
        line.contains("dev-a") && line.contains("DTLS PSK identity"),
        "{line}"
    );
    // The real dev-a is served meanwhile; nothing was ever published for dev-b.
    let _a = dtls_device(bridge.devices, "dev-a", &["--psk", KEY_A]);
    w.echo_completes(ROOT, "a1", "dev-a").await;
    assert!(
        !w.seen.iter().any(|(t, _)| t.ends_with("/devices/dev-b")),
        "a device document for the unproven id"
    );
    assert!(
        w.states()["b1"].iter().all(|e| e["state"] == "queued"),
        "b1 must stay queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_reboots_on_the_same_port_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), false, "");
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    // A port for the device that stays the same across its reboot.
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port().to_string()
    };
    let args = ["--psk", KEY_A, "--local-port", port.as_str()];
    let mut device = dtls_device(bridge.devices, "dev-a", &args);
    w.echo_completes(ROOT, "before", "dev-a").await;
    // SIGKILL: no close_notify; the bridge still holds the established session.
    device.child.kill().unwrap();
    device.child.wait().unwrap();
    let _device = dtls_device(bridge.devices, "dev-a", &args);
    log.wait_for(WAIT, "the old session replaced", |l| {
        l.contains("the device restarted")
    })
    .await;
    w.echo_completes(ROOT, "after", "dev-a").await;
}

/// Forwards datagrams between `device_side` (whoever talks to it first is the device) and
/// `bridge`, dropping `loss_percent` of them in each direction with a fixed-seed generator.
/// Returns the address devices should connect to.
async fn lossy_proxy(bridge: SocketAddr, loss_percent: u32) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(bridge).await.unwrap();
    let addr = front.local_addr().unwrap();
    let device: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    // xorshift32: the same losses every run.
    let drop_next = move |state: &mut u32| {
        *state ^= *state << 13;
        *state ^= *state >> 17;
        *state ^= *state << 5;
        *state % 100 < loss_percent
    };
    {
        let (front, back, device) = (front.clone(), back.clone(), device.clone());
        tokio::spawn(async move {
            let mut seed = 0x9e37_79b9u32;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *device.lock().unwrap() = Some(from);
                if !drop_next(&mut seed) {
                    let _ = back.send(&buf[..n]).await;
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut seed = 0x85eb_ca6bu32;
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *device.lock().unwrap();
            if let Some(to) = to {
                if !drop_next(&mut seed) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_completes_through_a_link_losing_a_fifth_of_its_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, _log) = start(dir.path(), false, "");
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let proxy = lossy_proxy(bridge.devices, 20).await;
    let _a = dtls_device(proxy, "dev-a", &["--psk", KEY_A]);
    const TASKS: usize = 30;
    for i in 0..TASKS {
        w.submit(
            ROOT,
            &serde_json::json!({"id": format!("lossy-{i}"), "capability": "echo", "device": "dev-a", "payload": {"i": i}})
                .to_string(),
        )
        .await;
    }
    w.wait_for(Duration::from_secs(120), "every task completed", |seen| {
        (0..TASKS).all(|i| last_state(seen, &format!("lossy-{i}")).as_deref() == Some("completed"))
    })
    .await;
    let states = w.states();
    for i in 0..TASKS {
        let last = states[&format!("lossy-{i}")].last().unwrap().clone();
        assert_eq!(last["result"], serde_json::json!({"i": i}));
    }
}

/// A DTLS client's configuration: PSK `identity` with a key of 16 sevens, CCM-8 only.
fn psk_client(identity: &str) -> std::sync::Arc<edge_dtls::ClientConfig> {
    use edge_bridge::link::dtls::client::{self, ClientSettings, Credential};
    client::context(&ClientSettings {
        credential: Credential::Psk {
            identity: identity.into(),
            key: vec![7; 16],
        },
        ciphers: "PSK-AES128-CCM8".into(),
        mtu: 1200,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    })
    .unwrap()
}

/// The first flight of a DTLS 1.2 client: one ClientHello datagram (no cookie yet).
fn client_hello() -> Vec<u8> {
    let mut c =
        edge_dtls::Connection::connect(psk_client("flood"), std::time::Instant::now()).unwrap();
    let hello = c.poll_datagram().expect("a ClientHello");
    assert_eq!(c.poll_datagram(), None, "one ClientHello datagram");
    hello
}

/// The bridge process's resident memory, in KiB.
fn rss_kib(bridge: &Bridge) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", bridge.proc.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_client_hellos_costs_no_memory_and_stops_no_device() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), false, "");
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let hello = client_hello();
    let before = rss_kib(&bridge);

    // The legitimate device starts first and handshakes while the flood runs.
    let _a = dtls_device(bridge.devices, "dev-a", &["--psk", KEY_A]);

    // 1,000 ClientHellos from 250 source ports, 4 each, sent 50 ports at a time; each window
    // waits for its replies (at most 2 s each) so the flood is not just lost in socket
    // buffers: every ClientHello the bridge reads is answered statelessly.
    const PORTS: usize = 250;
    const EACH: usize = 4;
    let mut sockets = Vec::new();
    for _ in 0..PORTS {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut replies = 0;
    let mut buf = [0u8; 2048];
    for _ in 0..EACH {
        for window in sockets.chunks(50) {
            for s in window {
                s.send_to(&hello, bridge.devices).await.unwrap();
            }
            for s in window {
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf)).await
                {
                    // A HelloVerifyRequest (content type 22, handshake type 3), never a
                    // ServerHello: no session was started for a flooding port.
                    assert!(
                        n > 13 && buf[0] == 22 && buf[13] == 3,
                        "not a HelloVerifyRequest"
                    );
                    replies += 1;
                }
            }
        }
    }
    eprintln!(
        "flood: {replies} HelloVerifyRequests for {} ClientHellos",
        PORTS * EACH
    );
    assert!(
        replies >= PORTS * EACH * 95 / 100,
        "only {replies} ClientHellos answered"
    );
    w.echo_completes(ROOT, "during-flood", "dev-a").await;

    let after = rss_kib(&bridge);
    assert!(
        after < before + 8 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    assert!(
        !log.drain().iter().any(|l| l.contains("limit reached")),
        "no cookie-less ClientHello may take a handshake slot"
    );
    let established = log
        .seen
        .iter()
        .filter(|l| l.contains("DTLS session established"))
        .count();
    assert_eq!(established, 1, "only the device's session");
}

/// A client that returns its cookie and then goes silent after the bridge's first flight: it
/// holds a half-open session until the bridge's handshake deadline. `Some(socket)` once the
/// bridge answered the cookie (kept open so the port stays the client's); `None` when the
/// bridge started no handshake for it.
async fn stall_after_cookie(bridge: SocketAddr, from: &str) -> Option<UdpSocket> {
    let socket = UdpSocket::bind((from, 0)).await.unwrap();
    let mut c =
        edge_dtls::Connection::connect(psk_client("dev-a"), std::time::Instant::now()).unwrap();
    let mut buf = vec![0u8; 4096];
    // ClientHello, HelloVerifyRequest, ClientHello with the cookie.
    for _ in 0..2 {
        assert!(!c.is_established(), "the handshake cannot finish here");
        while let Some(d) = c.poll_datagram() {
            socket.send_to(&d, bridge).await.unwrap();
        }
        let reply = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buf)).await;
        let Ok(Ok(n)) = reply else {
            return None;
        };
        c.handle_datagram(&buf[..n], std::time::Instant::now());
    }
    // The bridge's ServerHello flight arrived: a session holds a half-open slot for us.
    Some(socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_are_capped_and_freed_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(
        dir.path(),
        false,
        "max_half_open = 1\nhandshake_timeout = \"3s\"",
    );
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _first = stall_after_cookie(bridge.devices, "127.0.0.1")
        .await
        .expect("the first stalled client gets a handshake");
    // The only half-open slot is taken: a second client still gets its cookie (stateless) but
    // no handshake, and the refusal is logged.
    assert!(
        stall_after_cookie(bridge.devices, "127.0.0.1")
            .await
            .is_none(),
        "a second half-open session beyond max_half_open = 1"
    );
    log.wait_for(WAIT, "the refusal", |l| {
        l.contains("DTLS handshake refused: limit reached") && l.contains("limit=\"max_half_open\"")
    })
    .await;
    // A real device gets in once the stalled handshake reaches its deadline (its own client
    // retransmits the ClientHello meanwhile), and is served.
    let _a = dtls_device(bridge.devices, "dev-a", &["--psk", KEY_A]);
    log.wait_for(WAIT, "the stalled handshake dropped", |l| {
        l.contains("DTLS session ended") && l.contains("handshake deadline passed")
    })
    .await;
    w.echo_completes(ROOT, "after-the-stall", "dev-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_half_open_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(
        dir.path(),
        false,
        "max_half_open_per_address = 1\nhandshake_timeout = \"10s\"",
    );
    let _first = stall_after_cookie(bridge.devices, "127.0.0.1")
        .await
        .expect("the first stalled client gets a handshake");
    assert!(
        stall_after_cookie(bridge.devices, "127.0.0.1")
            .await
            .is_none(),
        "a second half-open session from the same address"
    );
    log.wait_for(WAIT, "the refusal", |l| {
        l.contains("DTLS handshake refused: limit reached")
            && l.contains("limit=\"max_half_open_per_address\"")
            && l.contains("from=127.0.0.1:")
    })
    .await;
    // Another host (127.0.0.2 is loopback too) still gets in.
    assert!(
        stall_after_cookie(bridge.devices, "127.0.0.2")
            .await
            .is_some(),
        "another address refused"
    );
}
