//! The Prometheus endpoint (`[metrics] listen`), end to end: the real bridge with the endpoint
//! on a free loopback port, a simulated device, tasks submitted over MQTT, and the answers read
//! with a plain HTTP client and parsed here. The text must be well formed (HELP and TYPE for
//! every family, conventional names) and its figures must be the real ones: the tasks queued
//! per priority, the device's slots and tasks, its session, the dispatch waits, the broker
//! connection, the tasks that finished, the TLS and DTLS handshakes that failed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use broker_config::{Config, LinkConfig};
use edge_tests::{
    Watcher, embedded_config, http_request, last_state, make_link_certificates,
    start_bridge_with_config, start_bridge_with_log, start_device, write_config,
};

/// Every wait of these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

const ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A test bridge's configuration with the metrics endpoint on a free loopback port.
fn with_metrics(bridge_id: &str) -> Config {
    let mut config = embedded_config(bridge_id);
    config.metrics.listen = Some(ANY_PORT);
    config
}

/// One sample of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape's text, parsed; parsing asserts the format's rules as it goes.
#[derive(Debug)]
struct Exposition {
    /// Family name to its TYPE.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses `text`, asserting: every family has one HELP and one TYPE line, before its
    /// samples; every sample belongs to a declared family (a histogram's through its
    /// `_bucket`, `_sum` and `_count`); names are `edge_bridge_[a-z_]+`; counters end in
    /// `_total`; no series is repeated; every value is a number. (A family may have no sample:
    /// the per-device ones without devices.)
    fn parse(text: &str) -> Self {
        let mut help = HashSet::new();
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        let mut series = HashSet::new();
        assert!(text.ends_with('\n'), "the text ends with a line feed");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("HELP name text");
                assert!(!text.is_empty(), "{line}");
                assert!(help.insert(name.to_owned()), "a second HELP for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                assert!(help.contains(name), "TYPE before HELP for {name}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} without _total");
                }
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "a second TYPE for {name}"
                );
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let sample = parse_sample(line);
            let name = &sample.name;
            assert!(
                name.strip_prefix("edge_bridge_")
                    .is_some_and(|rest| !rest.is_empty()
                        && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
                "the name {name:?} is not edge_bridge_[a-z_]+"
            );
            let family = family_of(name, &types)
                .unwrap_or_else(|| panic!("{name}: no TYPE line before its samples"));
            assert!(help.contains(&family), "{name}: no HELP line");
            assert!(
                series.insert(format!("{name}{:?}", sample.labels)),
                "{line}: repeated"
            );
            samples.push(sample);
        }
        Self { types, samples }
    }

    /// The value of the series `name` with exactly `labels`; panics if there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .unwrap_or_else(|| panic!("no {name}{labels:?}"))
            .value
    }

    /// The samples of `name`.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

/// The family a sample belongs to: its name, or a histogram's name without its suffix.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
        .map(str::to_owned)
}

/// `name{label="value",...} number`, label values unescaped.
fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value: f64 = value
        .parse()
        .unwrap_or_else(|e| panic!("{line}: value: {e}"));
    let Some((name, labels)) = series.split_once('{') else {
        return Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let labels = labels.strip_suffix('}').expect("labels end with }");
    let mut parsed = BTreeMap::new();
    let mut chars = labels.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}: label {key} unquoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("a closing quote") {
                '"' => break,
                '\\' => match chars.next().expect("an escaped character") {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("{line}: \\{c} is not an escape of the format"),
                },
                c => value.push(c),
            }
        }
        parsed.insert(key, value);
        if let Some(c) = chars.next() {
            assert_eq!(c, ',', "{line}");
        }
    }
    Sample {
        name: name.to_owned(),
        labels: parsed,
        value,
    }
}

/// Scrapes `addr`, checks the response is the text format, and parses it.
fn scrape(addr: SocketAddr) -> Exposition {
    let r = http_request(addr, "GET", "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        r.header("content-length").map(str::parse::<usize>),
        Some(Ok(r.body.len()))
    );
    Exposition::parse(&r.body)
}

/// Scrapes `addr` until `settled` holds for what it shows, and returns that; panics after
/// [`WAIT`] with the last text. The figures are counters and gauges the bridge moves as
/// devices report, so the test polls them as a scraper would.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    settled: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + WAIT;
    loop {
        let e = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .expect("scrape");
        if settled(&e) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape: {e:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The TCP ports process `pid` listens on, from /proc: its sockets' inodes matched against
/// the kernel's tables of listening sockets.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the bridge's file descriptors")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A: LISTEN), inode.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == "0A" && inodes.contains(*inode) {
                let port = local.rsplit(':').next().expect("address:port");
                ports.insert(u16::from_str_radix(port, 16).expect("a hex port"));
            }
        }
    }
    ports
}

/// A submission of `capability` with `priority` and `payload`.
fn task(id: &str, priority: u8, payload: serde_json::Value) -> String {
    serde_json::json!({"id": id, "capability": "sleep", "priority": priority, "payload": payload})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_shows_the_queue_the_device_and_the_dispatch_waits() {
    let dir = tempfile::tempdir().unwrap();
    let root = "edge/metrics-1";
    let bridge = start_bridge_with_config(dir.path(), &with_metrics("metrics-1"));
    let addr = bridge.metrics.expect("metrics= in the ready line");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert_eq!(
        listening_ports(bridge.proc.child.id()),
        BTreeSet::from([bridge.mqtt.port(), bridge.devices.port(), addr.port()]),
        "the bridge listens on the broker, the device link and the endpoint"
    );
    let mut w = Watcher::connect(bridge.mqtt, root).await;
    w.wait_bridge_online().await;
    let _device = start_device(bridge.devices, "dev-1", &["sleep"]);
    w.wait_device_online("dev-1").await;

    // Seven P3 tasks of ten minutes take every slot of the device's eight but the one it keeps
    // for urgent work; then two P2 and three P4 tasks can only wait.
    let started = Instant::now();
    let long: Vec<String> = (0..7).map(|i| format!("long-{i}")).collect();
    for id in &long {
        w.submit(root, &task(id, 3, serde_json::json!({"ms": 600_000})))
            .await;
    }
    // The device runs one at a time (its runtime is cooperative); the others hold their slots.
    w.wait_for(WAIT, "the long tasks on the device", |seen| {
        long.iter().all(|id| {
            matches!(
                last_state(seen, id).as_deref(),
                Some("dispatched" | "running")
            )
        })
    })
    .await;
    let waiting: Vec<(String, u8)> = [
        ("p2-a", 2),
        ("p2-b", 2),
        ("p4-a", 4),
        ("p4-b", 4),
        ("p4-c", 4),
    ]
    .iter()
    .map(|(id, p)| ((*id).to_owned(), *p))
    .collect();
    for (id, p) in &waiting {
        w.submit(root, &task(id, *p, serde_json::json!({"ms": 1})))
            .await;
    }
    w.wait_for(WAIT, "the short tasks queued", |seen| {
        waiting
            .iter()
            .all(|(id, _)| last_state(seen, id).as_deref() == Some("queued"))
    })
    .await;

    // The device's credit follows its own report of free slots: polled until it says one.
    let e = scrape_until(addr, "the device's credit of one slot", |e| {
        e.value("edge_bridge_device_credit", &[("device", "dev-1")]) == 1.0
    })
    .await;
    let dev = [("device", "dev-1")];
    assert_eq!(e.value("edge_bridge_device_online", &dev), 1.0);
    assert_eq!(e.value("edge_bridge_device_slots", &dev), 8.0);
    assert_eq!(e.value("edge_bridge_device_tasks_in_flight", &dev), 7.0);
    assert_eq!(e.value("edge_bridge_device_reserved_slots", &dev), 1.0);
    for (p, queued) in [(0, 0.0), (1, 0.0), (2, 2.0), (3, 0.0), (4, 3.0), (5, 0.0)] {
        let priority = format!("P{p}");
        assert_eq!(
            e.value("edge_bridge_queue_depth", &[("priority", &priority)]),
            queued,
            "{priority}"
        );
    }
    let oldest = e.value("edge_bridge_queue_oldest_age_seconds", &[]);
    assert!(
        oldest > 0.0 && oldest <= started.elapsed().as_secs_f64(),
        "oldest queued {oldest} s, submitted within {:?}",
        started.elapsed()
    );
    assert_eq!(e.value("edge_bridge_tasks_live", &[]), 12.0);
    for (kind, sessions) in [("tcp", 1.0), ("tls", 0.0), ("dtls", 0.0), ("serial", 0.0)] {
        assert_eq!(
            e.value("edge_bridge_link_sessions", &[("kind", kind)]),
            sessions,
            "{kind}"
        );
    }
    assert_eq!(e.value("edge_bridge_broker_connected", &[]), 1.0);
    assert_eq!(e.value("edge_bridge_broker_connections_total", &[]), 1.0);
    assert_eq!(
        e.value(
            "edge_bridge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The waits: one observation per task dispatched (the seven P3 tasks), each histogram's
    // buckets cumulative, +Inf its count.
    let dispatched = w
        .states()
        .into_iter()
        .filter(|(_, events)| events.iter().any(|e| e["state"] == "dispatched"))
        .count();
    assert_eq!(dispatched, 7);
    let mut counted = 0.0;
    for p in 0..6 {
        let priority = format!("P{p}");
        let count = e.value(
            "edge_bridge_dispatch_wait_seconds_count",
            &[("priority", &priority)],
        );
        let buckets: Vec<(f64, f64)> = e
            .all("edge_bridge_dispatch_wait_seconds_bucket")
            .filter(|s| s.labels["priority"] == priority)
            .map(|s| {
                let le = &s.labels["le"];
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (bound, s.value)
            })
            .collect();
        assert!(buckets.len() >= 10, "{priority}: {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{priority}: bounds rising and counts cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().unwrap(),
            &(f64::INFINITY, count),
            "{priority}"
        );
        assert!(buckets.iter().any(|(b, _)| *b == 0.05), "a 50 ms bound");
        let sum = e.value(
            "edge_bridge_dispatch_wait_seconds_sum",
            &[("priority", &priority)],
        );
        assert!(
            sum >= 0.0 && sum <= count * started.elapsed().as_secs_f64(),
            "{priority}: sum {sum}"
        );
        counted += count;
    }
    assert_eq!(counted, 7.0);
    assert_eq!(
        e.value(
            "edge_bridge_dispatch_wait_seconds_count",
            &[("priority", "P3")]
        ),
        7.0
    );
    for state in ["completed", "failed", "expired", "cancelled", "rejected"] {
        assert_eq!(
            e.value("edge_bridge_tasks_finished_total", &[("state", state)]),
            0.0,
            "{state}"
        );
    }

    // A cancelled task and an unparsable submission end as cancelled and rejected.
    w.cancel(root, "p4-c").await;
    w.submit(root, "this is not JSON").await;
    w.wait_for(WAIT, "p4-c cancelled and the garbage refused", |seen| {
        last_state(seen, "p4-c").as_deref() == Some("cancelled")
            && seen.iter().any(|(t, _)| t.ends_with("/errors"))
    })
    .await;
    let e = scrape(addr);
    assert_eq!(
        e.value(
            "edge_bridge_tasks_finished_total",
            &[("state", "cancelled")]
        ),
        1.0
    );
    assert_eq!(
        e.value("edge_bridge_tasks_finished_total", &[("state", "rejected")]),
        1.0
    );
    assert_eq!(
        e.value("edge_bridge_queue_depth", &[("priority", "P4")]),
        2.0
    );
    assert_eq!(e.value("edge_bridge_tasks_live", &[]), 11.0);
    assert!(e.types["edge_bridge_dispatch_wait_seconds"] == "histogram");

    // Other paths and methods, and a HEAD.
    let r = http_request(addr, "GET", "/");
    assert_eq!(r.status, 404, "{r:?}");
    let r = http_request(addr, "GET", "/metrics/other");
    assert_eq!(r.status, 404, "{r:?}");
    let r = http_request(addr, "POST", "/metrics");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD")),
        "{r:?}"
    );
    let r = http_request(addr, "HEAD", "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert!(r.header("content-length").is_some_and(|n| n != "0"));

    // The time of a scrape, measured as a scraper sees it (connect, request, whole answer).
    let t = Instant::now();
    for _ in 0..100 {
        let r = http_request(addr, "GET", "/metrics");
        assert_eq!(r.status, 200);
    }
    let took = t.elapsed();
    eprintln!(
        "metrics: 100 sequential scrapes (1 device, 11 live tasks) took {took:?}, {:?} each",
        took / 100
    );
}

#[tokio::test]
async fn without_a_metrics_section_nothing_more_listens() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config("metrics-off");
    assert_eq!(config.metrics.listen, None, "off by default");
    let bridge = start_bridge_with_config(dir.path(), &config);
    assert_eq!(bridge.metrics, None, "no metrics= in the ready line");
    assert_eq!(
        listening_ports(bridge.proc.child.id()),
        BTreeSet::from([bridge.mqtt.port(), bridge.devices.port()]),
        "the bridge listens on the broker and the device link only"
    );
}

/// Certificates for a TLS device link in `dir` (the bridge's, and the devices' CA).
fn make_certificates(dir: &Path) {
    make_link_certificates(dir, "/CN=edge devices CA", &[]);
}

/// A device's pre-shared key on the test's DTLS link.
const KEY: &str = "00112233445566778899aabbccddeeff";

/// Failed handshakes are counted per link kind: two clients speaking plain text to a TLS link
/// (the handshake fails at once) count 2 for `tls`; a DTLS client with an identity the link has
/// no key for (it fails at once too) counts 1 for `dtls`; no session opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_per_link_kind() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let mut config = with_metrics("metrics-handshakes");
    if let broker_config::BrokerConfig::Embedded { listen, .. } = &mut config.broker {
        *listen = ANY_PORT;
    }
    config.links = vec![
        LinkConfig::Tls {
            listen: ANY_PORT,
            cert_file: dir.path().join("bridge.pem"),
            key_file: dir.path().join("bridge.key"),
            client_ca_file: dir.path().join("ca.pem"),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 16,
            max_connections_per_address: 16,
            max_handshakes: 4,
        },
        LinkConfig::Dtls(broker_config::DtlsLink {
            listen: ANY_PORT,
            psk: BTreeMap::from([("dev-a".to_owned(), KEY.to_owned())]),
            psk_file: None,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            ciphers: broker_config::DEFAULT_DTLS_CIPHERS.to_owned(),
            mtu: 1200,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_sessions: 16,
            max_sessions_per_identity: 1,
            max_half_open: 16,
            max_half_open_per_address: 16,
            handshakes_per_second: 100,
            handshakes_per_second_per_address: 100,
        }),
    ];
    let file = write_config(dir.path(), &config);
    let (bridge, _log) = start_bridge_with_log(&dir.path().join("data"), &file);
    let (tls, dtls) = (bridge.listeners[0], bridge.listeners[1]);
    let addr = bridge.metrics.expect("metrics= in the ready line");
    let failures = |e: &Exposition, kind: &str| {
        e.value(
            "edge_bridge_link_handshake_failures_total",
            &[("kind", kind)],
        )
    };
    let e = scrape(addr);
    assert_eq!((failures(&e, "tls"), failures(&e, "dtls")), (0.0, 0.0));

    for _ in 0..2 {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(tls).expect("connect to the TLS link");
            c.set_read_timeout(Some(WAIT)).unwrap();
            c.write_all(b"HELLO I AM NOT TLS\r\n\r\n").unwrap();
            // Whatever the bridge answers (a TLS alert), it closes the connection.
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
        })
        .await
        .unwrap();
    }
    // A real DTLS client; it may wait for a reply after the failure: killed when done with.
    let _client = edge_tests::Proc {
        child: std::process::Command::new("openssl")
            .args(["s_client", "-dtls1_2", "-connect", &dtls.to_string()])
            .args([
                "-psk",
                KEY,
                "-psk_identity",
                "nobody",
                "-cipher",
                "PSK-AES128-CCM8",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is not installed: tests/run.sh installs it"),
        name: "openssl s_client",
    };
    let e = scrape_until(addr, "2 failed TLS and 1 failed DTLS handshakes", |e| {
        failures(e, "tls") >= 2.0 && failures(e, "dtls") >= 1.0
    })
    .await;
    assert_eq!((failures(&e, "tls"), failures(&e, "dtls")), (2.0, 1.0));
    for kind in ["tls", "dtls"] {
        assert_eq!(e.value("edge_bridge_link_sessions", &[("kind", kind)]), 0.0);
    }
}

/// The time of a scrape with several devices and a thousand queued tasks: the snapshot costs
/// a step per device and none per task, so it stays about that of an idle bridge. Printed (a
/// shared machine's timing is no assertion); the figures are asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_with_five_devices_and_a_thousand_queued_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let root = "edge/metrics-load";
    let bridge = start_bridge_with_config(dir.path(), &with_metrics("metrics-load"));
    let addr = bridge.metrics.expect("metrics= in the ready line");
    let w = Watcher::connect(bridge.mqtt, root).await;
    let ids: Vec<String> = (0..5).map(|i| format!("dev-{i}")).collect();
    let _devices: Vec<_> = ids
        .iter()
        .map(|id| start_device(bridge.devices, id, &["echo"]))
        .collect();
    // No device offers this capability: every task waits.
    for i in 0..1000 {
        let task = serde_json::json!({"id": format!("w-{i}"), "capability": "none", "priority": 5});
        w.submit(root, &task.to_string()).await;
    }
    let e = scrape_until(addr, "five devices and 1,000 queued tasks", |e| {
        e.all("edge_bridge_device_online")
            .filter(|s| s.value == 1.0)
            .count()
            == 5
            && e.value("edge_bridge_queue_depth", &[("priority", "P5")]) == 1000.0
    })
    .await;
    assert_eq!(
        e.value("edge_bridge_link_sessions", &[("kind", "tcp")]),
        5.0
    );
    assert_eq!(e.value("edge_bridge_tasks_live", &[]), 1000.0);

    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(http_request(addr, "GET", "/metrics").status, 200);
    }
    let took = t.elapsed();
    eprintln!(
        "metrics: 100 sequential scrapes (5 devices, 1,000 queued tasks) took {took:?}, {:?} each",
        took / 100
    );
}

/// A metrics port another process holds stops the bridge at start, with a message naming the
/// endpoint and the address (not a device link's or the broker's).
#[test]
fn a_metrics_port_in_use_stops_the_bridge_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind(ANY_PORT).unwrap();
    let mut config = with_metrics("metrics-taken");
    config.metrics.listen = Some(taken.local_addr().unwrap());
    let file = write_config(dir.path(), &config);
    let (status, _, stderr) = edge_tests::run_to_end(
        std::process::Command::new(edge_tests::binary("edge-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("NO_COLOR", "1"),
        WAIT,
    );
    assert!(!status.success(), "{stderr}");
    let expected = format!("metrics endpoint {}: ", taken.local_addr().unwrap());
    assert!(stderr.contains(&expected), "{stderr}");
}
