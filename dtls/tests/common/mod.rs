//! What the crate's tests share: configurations, certificates made with the `openssl` command,
//! and a pair of connections joined in memory.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_dtls::{Certified, ClientConfig, Connection, Roots, ServerConfig, Suite};

pub const PSK_ID: &[u8] = b"dev-a";
pub const PSK: [u8; 16] = *b"0123456789abcdef";

pub fn psk_server(suites: &[Suite]) -> ServerConfig {
    ServerConfig {
        suites: suites.to_vec(),
        psk: Some(Arc::new(|id: &[u8]| (id == PSK_ID).then(|| PSK.to_vec()))),
        certificate: None,
        client_roots: None,
        mtu: 1200,
        clock: rustls_pki_types::UnixTime::now,
    }
}

pub fn psk_client(suites: &[Suite], key: &[u8]) -> ClientConfig {
    ClientConfig {
        suites: suites.to_vec(),
        psk: Some((PSK_ID.to_vec(), key.to_vec())),
        certificate: None,
        server_roots: None,
        server_name: None,
        mtu: 1200,
        clock: rustls_pki_types::UnixTime::now,
    }
}

/// Runs `openssl` in `dir`; fails loudly when it is missing or fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is not installed: apt-get install openssl (tests/run.sh does)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`), a server certificate (`server.pem`/`.key`, IP 127.0.0.1) and a client
/// certificate (`client.pem`/`.key`, CN dev-a), with `key` the `-newkey` argument of each
/// (`ec` with P-256, or `rsa:2048`).
pub fn certificates(dir: &Path, key: &str) {
    let key_args: Vec<&str> = if key == "ec" {
        vec![
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ]
    } else {
        vec!["-newkey", key, "-nodes"]
    };
    let mut ca = vec!["req", "-x509"];
    ca.extend(&key_args);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test ca",
    ]);
    openssl(dir, &ca);
    for (name, cn, ext) in [
        (
            "server",
            "bridge",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "dev-a", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let subject = format!("/CN={cn}");
        let (k, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(&key_args);
        req.extend(["-keyout", &k, "-out", &csr, "-subj", &subject]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    }
}

pub fn cert_server(dir: &Path, suites: &[Suite]) -> ServerConfig {
    ServerConfig {
        certificate: Some(
            Certified::from_pem_files(&dir.join("server.pem"), &dir.join("server.key")).unwrap(),
        ),
        client_roots: Some(Roots::from_pem_file(&dir.join("ca.pem")).unwrap()),
        psk: None,
        ..psk_server(suites)
    }
}

pub fn cert_client(dir: &Path, suites: &[Suite]) -> ClientConfig {
    ClientConfig {
        psk: None,
        certificate: Some(
            Certified::from_pem_files(&dir.join("client.pem"), &dir.join("client.key")).unwrap(),
        ),
        server_roots: Some(Roots::from_pem_file(&dir.join("ca.pem")).unwrap()),
        server_name: Some("127.0.0.1".try_into().unwrap()),
        ..psk_client(suites, &PSK)
    }
}

/// A client and a server joined in memory, on a simulated clock.
pub struct Pair {
    pub client: Connection,
    pub server: Option<Connection>,
    pub server_config: Arc<ServerConfig>,
    pub now: Instant,
    /// Datagrams dropped so far, by a `lose` function given the datagram's number.
    pub sent: u64,
}

impl Pair {
    pub fn new(client: ClientConfig, server: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            client: Connection::connect(Arc::new(client), now).unwrap(),
            server: None,
            server_config: Arc::new(server),
            now,
            sent: 0,
        }
    }

    /// Moves datagrams both ways (the server's cookie exchange included, with the cookie
    /// `b"cookie"`) and fires timers, for at most `rounds` rounds, losing the datagrams
    /// `lose` picks. Returns when nothing moves and no timer is set, or both are established.
    pub fn run(&mut self, rounds: usize, lose: &mut dyn FnMut(u64) -> bool) {
        for _ in 0..rounds {
            let mut moved = false;
            while let Some(d) = self.client.poll_datagram() {
                moved = true;
                self.sent += 1;
                if lose(self.sent) {
                    continue;
                }
                match &mut self.server {
                    Some(s) => {
                        s.handle_datagram(&d, self.now);
                    }
                    None => {
                        let hello = edge_dtls::cookie::client_hello(&d).expect("a ClientHello");
                        if hello.cookie == b"cookie" {
                            self.server =
                                Some(Connection::accept(self.server_config.clone(), &d, self.now));
                        } else {
                            let hvr = edge_dtls::cookie::hello_verify_request(&hello, b"cookie");
                            self.client.handle_datagram(&hvr, self.now);
                        }
                    }
                }
            }
            if let Some(s) = &mut self.server {
                while let Some(d) = s.poll_datagram() {
                    moved = true;
                    self.sent += 1;
                    if !lose(self.sent) {
                        self.client.handle_datagram(&d, self.now);
                    }
                }
            }
            if self.done() {
                return;
            }
            if !moved {
                let timers = [
                    self.client.poll_timeout(),
                    self.server.as_ref().and_then(Connection::poll_timeout),
                ];
                let Some(next) = timers.into_iter().flatten().min() else {
                    return;
                };
                self.now = self.now.max(next);
                self.client.handle_timeout(self.now);
                if let Some(s) = &mut self.server {
                    s.handle_timeout(self.now);
                }
            }
        }
    }

    pub fn done(&self) -> bool {
        let server_done = self
            .server
            .as_ref()
            .is_some_and(|s| s.is_established() || s.is_ended());
        (self.client.is_established() || self.client.is_ended()) && server_done
    }

    pub fn server(&mut self) -> &mut Connection {
        self.server.as_mut().expect("the server connection")
    }

    /// Sends `data` from the client and returns what the server application received.
    pub fn client_to_server(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.client.send(data).unwrap();
        let now = self.now;
        while let Some(d) = self.client.poll_datagram() {
            self.server().handle_datagram(&d, now);
        }
        self.server().poll_app()
    }

    pub fn server_to_client(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.server().send(data).unwrap();
        while let Some(d) = self.server().poll_datagram() {
            self.client.handle_datagram(&d, self.now);
        }
        self.client.poll_app()
    }
}

pub const SECOND: Duration = Duration::from_secs(1);
