//! This crate against the DTLS peers users have: `openssl s_client` and `gnutls-cli` against
//! its server, its client against `openssl s_server`, over loopback UDP. Each tool must be
//! installed (tests/run.sh installs them); a missing one fails the test.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use edge_dtls::{ClientConfig, Connection, PeerIdentity, ServerConfig, Suite};

const LIMIT: Duration = Duration::from_secs(20);
const PSK_HEX: &str = "30313233343536373839616263646566";

/// What the echo server saw of one session.
#[derive(Debug)]
struct Seen {
    suite: Option<Suite>,
    identity: Option<PeerIdentity>,
}

/// A server on a loopback port, echoing every record back prefixed with `echo: `, until
/// `LIMIT`; reports each established session.
fn echo_server(config: ServerConfig) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let config = Arc::new(config);
    std::thread::spawn(move || {
        let end = Instant::now() + LIMIT;
        let mut sessions: HashMap<SocketAddr, Connection> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end {
            let now = Instant::now();
            let next = sessions
                .values()
                .filter_map(Connection::poll_timeout)
                .min()
                .unwrap_or(now + Duration::from_millis(100));
            let wait = next
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            socket.set_read_timeout(Some(wait)).unwrap();
            let now = Instant::now();
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let d = &buf[..n];
                    let known = sessions.get(&from).is_some_and(|c| !c.is_ended());
                    if known {
                        sessions.get_mut(&from).unwrap().handle_datagram(d, now);
                    } else if let Some(hello) = edge_dtls::cookie::client_hello(d) {
                        if hello.cookie == b"interop cookie" {
                            sessions.insert(from, Connection::accept(config.clone(), d, now));
                        } else {
                            let hvr =
                                edge_dtls::cookie::hello_verify_request(&hello, b"interop cookie");
                            socket.send_to(&hvr, from).unwrap();
                        }
                    }
                    if let Some(c) = sessions.get_mut(&from) {
                        while let Some(app) = c.poll_app() {
                            let mut reply = b"echo: ".to_vec();
                            reply.extend_from_slice(&app);
                            c.send(&reply).unwrap();
                        }
                    }
                }
                Err(_) => {
                    for c in sessions.values_mut() {
                        c.handle_timeout(Instant::now());
                    }
                }
            }
            for (peer, c) in &mut sessions {
                while let Some(d) = c.poll_datagram() {
                    let _ = socket.send_to(&d, peer);
                }
            }
            let established: Vec<SocketAddr> = sessions
                .iter()
                .filter(|(_, c)| c.is_established() && c.peer_identity().is_some())
                .map(|(a, _)| *a)
                .collect();
            for a in established {
                let c = &sessions[&a];
                let seen = Seen {
                    suite: c.suite(),
                    identity: c.peer_identity().cloned(),
                };
                // Each session reported once: a marker of the address reported.
                if REPORTED.with(|r| r.borrow_mut().insert(a)) {
                    let _ = tx.send(seen);
                }
            }
        }
    });
    (addr, rx)
}

thread_local! {
    static REPORTED: std::cell::RefCell<std::collections::HashSet<SocketAddr>> = Default::default();
}

/// Runs a tool with `input` on its stdin (kept open) until a line of its output satisfies
/// `done` or `LIMIT` passes; returns whether it was satisfied and all the output.
fn run_until(
    program: &str,
    args: &[&str],
    dir: &Path,
    input: &str,
    done: impl Fn(&str) -> bool,
) -> (bool, String) {
    run_within(LIMIT, program, args, dir, input, done)
}

fn run_within(
    limit: Duration,
    program: &str,
    args: &[&str],
    dir: &Path,
    input: &str,
    done: impl Fn(&str) -> bool,
) -> (bool, String) {
    let mut child: Child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is not installed ({e}): tests/run.sh installs it"));
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = String::new();
    let end = Instant::now() + limit;
    let mut sent = false;
    let mut ok = false;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if done(&line) {
                    ok = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // The tool reads its stdin once its handshake is done; writing early is fine.
        if !sent {
            let _ = stdin.write_all(input.as_bytes());
            let _ = stdin.flush();
            sent = true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (ok, out)
}

#[test]
fn openssl_s_client_completes_every_psk_suite_and_gets_its_data_echoed() {
    let dir = tempfile::tempdir().unwrap();
    for suite in [
        Suite::PskAes128Ccm8,
        Suite::PskAes128GcmSha256,
        Suite::PskAes256GcmSha384,
    ] {
        let (addr, seen) = echo_server(psk_server(&Suite::ALL));
        let (ok, out) = run_until(
            "openssl",
            &[
                "s_client",
                "-dtls1_2",
                "-connect",
                &addr.to_string(),
                "-psk",
                PSK_HEX,
                "-psk_identity",
                "dev-a",
                "-cipher",
                suite.name(),
            ],
            dir.path(),
            "ping from s_client\n",
            |l| l.contains("echo: ping from s_client"),
        );
        assert!(ok, "{suite:?}: s_client never got its echo:\n{out}");
        assert!(
            out.contains(&format!("Cipher is {}", suite.name())),
            "{out}"
        );
        let s = seen.recv_timeout(LIMIT).unwrap();
        assert_eq!(
            (s.suite, s.identity),
            (Some(suite), Some(PeerIdentity::Psk(b"dev-a".to_vec())))
        );
    }
}

#[test]
fn gnutls_cli_completes_a_psk_ccm8_handshake_and_gets_its_data_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = echo_server(psk_server(&Suite::ALL));
    let (ok, out) = run_until(
        "gnutls-cli",
        &[
            "--udp",
            "--port",
            &addr.port().to_string(),
            "--pskusername",
            "dev-a",
            "--pskkey",
            PSK_HEX,
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+PSK",
            "127.0.0.1",
        ],
        dir.path(),
        "ping from gnutls\n",
        |l| l.contains("echo: ping from gnutls"),
    );
    assert!(ok, "gnutls-cli never got its echo:\n{out}");
    assert!(out.contains("AES-128-CCM-8"), "{out}");
    let s = seen.recv_timeout(LIMIT).unwrap();
    assert_eq!(s.suite, Some(Suite::PskAes128Ccm8));
}

#[test]
fn openssl_s_client_with_a_certificate_completes_the_ecdhe_suites() {
    for (key, suites) in [
        (
            "ec",
            vec![
                Suite::EcdheEcdsaAes128Ccm8,
                Suite::EcdheEcdsaAes128GcmSha256,
                Suite::EcdheEcdsaAes256GcmSha384,
            ],
        ),
        ("rsa:2048", vec![Suite::EcdheRsaAes128GcmSha256]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path(), key);
        for suite in suites {
            let (addr, seen) = echo_server(cert_server(dir.path(), &Suite::ALL));
            let (ok, out) = run_until(
                "openssl",
                &[
                    "s_client",
                    "-dtls1_2",
                    "-connect",
                    &addr.to_string(),
                    "-cipher",
                    suite.name(),
                    "-cert",
                    "client.pem",
                    "-key",
                    "client.key",
                    "-CAfile",
                    "ca.pem",
                    "-verify_return_error",
                ],
                dir.path(),
                "ping with a certificate\n",
                |l| l.contains("echo: ping with a certificate"),
            );
            assert!(ok, "{suite:?}: {out}");
            assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
            let s = seen.recv_timeout(LIMIT).unwrap();
            assert_eq!(s.suite, Some(suite));
            assert!(matches!(s.identity, Some(PeerIdentity::Certificate(_))));
        }
    }
}

#[test]
fn gnutls_cli_with_a_certificate_completes_an_ecdhe_ecdsa_ccm8_handshake() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "ec");
    let (addr, seen) = echo_server(cert_server(dir.path(), &Suite::ALL));
    let (ok, out) = run_until(
        "gnutls-cli",
        &[
            "--udp",
            "--port",
            &addr.port().to_string(),
            "--x509certfile",
            "client.pem",
            "--x509keyfile",
            "client.key",
            "--x509cafile",
            "ca.pem",
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-KX-ALL:+ECDHE-ECDSA",
            "127.0.0.1",
        ],
        dir.path(),
        "ping from gnutls with a certificate\n",
        |l| l.contains("echo: ping from gnutls with a certificate"),
    );
    assert!(ok, "{out}");
    let s = seen.recv_timeout(LIMIT).unwrap();
    assert_eq!(s.suite, Some(Suite::EcdheEcdsaAes128Ccm8));
}

/// `openssl s_server` on a free UDP port with `args`; our client connects with `config`,
/// sends a line and must see s_server print it.
fn against_s_server(dir: &Path, args: &[&str], config: ClientConfig) -> (bool, String) {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_s = port.to_string();
    let mut all = vec!["s_server", "-dtls1_2", "-accept", &port_s[..]];
    all.extend_from_slice(args);
    let config = Arc::new(config);
    let client = std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let end = Instant::now() + LIMIT;
        // s_server may not be listening yet: the ClientHello's retransmissions reach it.
        let mut c = Connection::connect(config, Instant::now()).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut sent = false;
        while Instant::now() < end {
            while let Some(d) = c.poll_datagram() {
                let _ = socket.send_to(&d, server);
            }
            if sent {
                return format!("sent, {:?}", c.suite());
            }
            if c.is_established() {
                c.send(b"line from edge-dtls\n").unwrap();
                sent = true;
                continue;
            }
            if c.is_ended() {
                return format!("{:?}", c.error());
            }
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            match socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    c.handle_datagram(&buf[..n], Instant::now());
                }
                Err(_) => c.handle_timeout(Instant::now()),
            }
        }
        format!("sent {sent}, {:?}", c.suite())
    });
    let (ok, out) = run_until("openssl", &all, dir, "", |l| {
        l.contains("line from edge-dtls")
    });
    let client = client.join().unwrap();
    (ok, format!("{out}\nclient: {client}"))
}

#[test]
fn the_client_completes_psk_and_certificate_handshakes_with_openssl_s_server() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = against_s_server(
        dir.path(),
        &[
            "-nocert",
            "-psk",
            PSK_HEX,
            "-psk_identity",
            "dev-a",
            "-cipher",
            "PSK-AES128-CCM8",
        ],
        psk_client(&[Suite::PskAes128Ccm8], &PSK),
    );
    assert!(ok, "{out}");
    certificates(dir.path(), "ec");
    let (ok, out) = against_s_server(
        dir.path(),
        &[
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-CAfile",
            "ca.pem",
            "-Verify",
            "1",
            "-cipher",
            "ECDHE-ECDSA-AES128-CCM8",
        ],
        cert_client(dir.path(), &[Suite::EcdheEcdsaAes128Ccm8]),
    );
    assert!(ok, "{out}");
}

#[test]
fn a_wrong_psk_from_openssl_never_establishes() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = echo_server(psk_server(&Suite::ALL));
    // s_client retransmits its last flight, silent; the server never establishes.
    let (ok, out) = run_within(
        Duration::from_secs(4),
        "openssl",
        &[
            "s_client",
            "-dtls1_2",
            "-connect",
            &addr.to_string(),
            "-psk",
            "00112233445566778899aabbccddeeff",
            "-psk_identity",
            "dev-a",
            "-cipher",
            "PSK-AES128-CCM8",
        ],
        dir.path(),
        "",
        |l| l.contains("Cipher is"),
    );
    assert!(!ok, "{out}");
    assert!(seen.try_recv().is_err());
}
