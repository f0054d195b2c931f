use super::*;

/// The commented example of the default file that starts with `marker`, uncommented: the
/// lines that follow it while they are comments.
fn commented_example(marker: &str, what: &str) -> String {
    let start = DEFAULT_CONFIG.find(marker).expect(what);
    DEFAULT_CONFIG[start..]
        .lines()
        .map_while(|l| l.strip_prefix("# "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_default_file_is_the_default_config() {
    assert_eq!(
        Config::from_toml(DEFAULT_CONFIG, "default").unwrap(),
        Config::default()
    );
    Config::default().validate().unwrap();
}

/// The commented TLS link example of the default file, uncommented, is a valid link.
#[test]
fn the_default_files_tls_link_example_is_valid() {
    let example = commented_example(
        "# [[link]]\n# kind = \"tls\"",
        "a commented TLS link example",
    );
    let c = Config::from_toml(&example, "example").unwrap();
    assert!(matches!(c.links[..], [LinkConfig::Tls { .. }]), "{example}");
}

/// The commented metrics example of the default file, uncommented, turns the endpoint on.
#[test]
fn the_default_files_metrics_example_is_valid_and_metrics_are_off_by_default() {
    assert_eq!(Config::default().metrics.listen, None);
    let example = commented_example("# [metrics]\n", "a commented metrics example");
    let c = Config::from_toml(&example, "example").unwrap();
    assert_eq!(
        c.metrics.listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        "{example}"
    );
}

#[test]
fn the_metrics_endpoint_may_not_take_a_port_of_the_broker_or_a_device_link() {
    for text in [
        "[metrics]\nlisten = \"127.0.0.1:1883\"",
        "[metrics]\nlisten = \"0.0.0.0:7878\"",
        "[[link]]\nkind = \"tcp\"\nlisten = \"0.0.0.0:9000\"\n[metrics]\nlisten = \"127.0.0.1:9000\"",
    ] {
        match Config::from_toml(text, "t") {
            Err(ConfigError::Invalid { field, .. }) => {
                assert_eq!(field, "metrics.listen", "{text}");
            }
            other => panic!("{text}: expected an invalid metrics.listen, got {other:?}"),
        }
    }
    // Port 0 takes a free port; a UDP (DTLS) port is not a TCP port; another address is free.
    for text in [
        "[metrics]\nlisten = \"127.0.0.1:0\"",
        "[metrics]\nlisten = \"127.0.0.2:1883\"",
        "[[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:9000\"\npsk = { d = \"00112233445566778899aabbccddeeff\" }\n[metrics]\nlisten = \"127.0.0.1:9000\"",
    ] {
        Config::from_toml(text, "t").unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    let e = error("[metrics]\nlisten = \"localhost\"");
    assert!(e.contains("listen"), "{e}");
    let e = error("[metrics]\nport = 9464");
    assert!(e.contains("port"), "{e}");
}

#[test]
fn an_empty_file_is_the_default_config() {
    assert_eq!(Config::from_toml("", "empty").unwrap(), Config::default());
}

#[test]
fn a_file_overrides_what_it_names_only() {
    let c = Config::from_toml(
        "bridge_id = \"gw-7\"\n[queue]\nlimit = 10\n[broker]\nmode = \"external\"\nhost = \"mq\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.bridge_id, "gw-7");
    assert_eq!(c.root(), "edge/gw-7");
    assert_eq!(c.queue.limit, 10);
    assert_eq!(c.queue.max_attempts, 5);
    match c.broker {
        BrokerConfig::External {
            host, port, tls, ..
        } => {
            assert_eq!((host.as_str(), port, tls), ("mq", 1883, None));
        }
        other => panic!("{other:?}"),
    }
}

/// A TLS device link on 127.0.0.1:8883, without its files.
const TLS_LINK: &str = "[[link]]\nkind = \"tls\"\nlisten = \"127.0.0.1:8883\"\n";
/// The files every TLS link names.
const TLS_FILES: &str =
    "cert_file = \"s.pem\"\nkey_file = \"s.key\"\nclient_ca_file = \"ca.pem\"\n";
/// A plain TCP device link on 127.0.0.1:1.
const TCP_1: &str = "[[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:1\"\n";

#[test]
fn a_tls_link_parses_with_its_files_and_a_default_handshake_timeout() {
    let c = Config::from_toml(&format!("{TLS_LINK}{TLS_FILES}"), "t").unwrap();
    assert_eq!(
        c.links,
        [LinkConfig::Tls {
            listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            cert_file: "s.pem".into(),
            key_file: "s.key".into(),
            client_ca_file: "ca.pem".into(),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_connections_per_address: 64,
            max_handshakes: 64,
        }],
        "a file's [[link]] tables replace the default plain TCP link"
    );
    let c = Config::from_toml(
        &format!("{TLS_LINK}{TLS_FILES}handshake_timeout = \"2s\"\n"),
        "t",
    )
    .unwrap();
    assert!(matches!(
        c.links[..],
        [LinkConfig::Tls { handshake_timeout, .. }] if handshake_timeout == Duration::from_secs(2)
    ));
}

#[test]
fn a_tls_link_without_a_file_is_an_error_naming_it() {
    let e = error(&format!(
        "{TLS_LINK}cert_file = \"s.pem\"\nkey_file = \"s.key\"\n"
    ));
    assert!(e.contains("client_ca_file"), "{e}");
    let e = error(&format!("{TLS_LINK}{TLS_FILES}ca_file = \"x\"\n"));
    assert!(e.contains("ca_file"), "{e}");
}

#[test]
fn links_on_port_0_never_collide() {
    let text = format!(
        "[[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n[[link]]\nkind = \"tls\"\nlisten = \"127.0.0.1:0\"\n{TLS_FILES}"
    );
    assert_eq!(Config::from_toml(&text, "t").unwrap().links.len(), 2);
}

#[test]
fn stream_links_cap_their_connections_and_a_zero_cap_is_an_error_naming_it() {
    const TCP: &str = "[[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n";
    assert_eq!(
        Config::from_toml(TCP, "t").unwrap().links,
        [LinkConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))]
    );
    let c = Config::from_toml(
        &format!("{TCP}max_connections = 8\nmax_connections_per_address = 2\n"),
        "t",
    )
    .unwrap();
    assert!(matches!(
        c.links[..],
        [LinkConfig::Tcp {
            max_connections: 8,
            max_connections_per_address: 2,
            ..
        }]
    ));
    let cases = [
        (
            format!("{TCP}max_connections = 0\n"),
            "link.max_connections",
        ),
        (
            format!("{TCP}max_connections_per_address = 0\n"),
            "link.max_connections_per_address",
        ),
        (
            format!("{TLS_LINK}{TLS_FILES}max_connections = 0\n"),
            "link.max_connections",
        ),
        (
            format!("{TLS_LINK}{TLS_FILES}max_handshakes = 0\n"),
            "link.max_handshakes",
        ),
    ];
    for (text, field) in cases {
        match Config::from_toml(&text, "t") {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: expected an invalid {field}, got {other:?}"),
        }
    }
}

/// The error message for `text`.
fn error(text: &str) -> String {
    Config::from_toml(text, "test.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_keys_and_bad_types_are_errors_that_name_the_key() {
    let e = error("bridge_idd = \"x\"");
    assert!(e.contains("bridge_idd") && e.contains("test.toml"), "{e}");
    let e = error("[queue]\nlimit = \"many\"");
    assert!(e.contains("limit"), "{e}");
    let e = error("stats_interval = \"ten seconds\"");
    assert!(e.contains("stats_interval"), "{e}");
    let e = error("[broker]\nmode = \"cloud\"");
    assert!(e.contains("cloud") || e.contains("mode"), "{e}");
    let e = error("[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:1883\"\nhost = \"x\"");
    assert!(e.contains("host"), "{e}");
    let e = error("[[link]]\nkind = \"tcp\"\nlisten = \"not an address\"");
    assert!(e.contains("listen") || e.contains("address"), "{e}");
}

#[test]
fn invalid_values_name_the_field() {
    let cases = [
        ("bridge_id = \"a/b\"", "bridge_id"),
        ("bridge_id = \"\"", "bridge_id"),
        ("topic_root = \"edge/#\"", "topic_root"),
        ("topic_root = \"/edge\"", "topic_root"),
        ("topic_root = \"edge//x\"", "topic_root"),
        ("stats_interval = \"1ms\"", "stats_interval"),
        ("[queue]\nlimit = 0", "queue.limit"),
        ("[queue]\noutbox_limit = 0", "queue.outbox_limit"),
        ("[[resource]]\nname = \"bus/x\"", "resource.name"),
        (
            "[classes]\nbesteffort_max_percent = 0",
            "classes.besteffort_max_percent",
        ),
        (
            "[[resource]]\nname = \"bus\"\n[[resource]]\nname = \"bus\"",
            "resource.name",
        ),
        // A full queue's `queued` events must fit: a burst up to the queue's limit is never
        // refused for want of outbox room.
        (
            "[queue]\nlimit = 300000\noutbox_limit = 200000",
            "queue.outbox_limit",
        ),
        (
            "[queue]\nexecution_timeout = \"10ms\"",
            "queue.execution_timeout",
        ),
        ("[queue]\nmax_attempts = 0", "queue.max_attempts"),
        (
            "[queue]\nretry_initial = \"10s\"\nretry_max = \"1s\"",
            "queue.retry_max",
        ),
        ("[broker]\nmode = \"external\"\nhost = \" \"", "broker.host"),
        (
            "[broker]\nmode = \"external\"\nhost = \"h\"\npassword = \"p\"",
            "broker.password",
        ),
        (
            "[broker]\nmode = \"external\"\nhost = \"h\"\n[broker.tls]\nca_file = \"ca\"\nclient_cert = \"c\"",
            "broker.tls.client_key",
        ),
        ("link = []", "link"),
        (
            "[[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:1\"\n[[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:1\"",
            "link.listen",
        ),
        (
            &format!("{TCP_1}[[link]]\nkind = \"tls\"\nlisten = \"127.0.0.1:1\"\n{TLS_FILES}"),
            "link.listen",
        ),
        (
            &format!("{TLS_LINK}{TLS_FILES}").replace("cert_file = \"s.pem\"", "cert_file = \"\""),
            "link.cert_file",
        ),
        (
            &format!("{TLS_LINK}{TLS_FILES}").replace("key_file = \"s.key\"", "key_file = \"\""),
            "link.key_file",
        ),
        (
            &format!("{TLS_LINK}{TLS_FILES}").replace("\"ca.pem\"", "\"\""),
            "link.client_ca_file",
        ),
        (
            &format!("{TLS_LINK}{TLS_FILES}handshake_timeout = \"0s\"\n"),
            "link.handshake_timeout",
        ),
        (
            &format!("{TLS_LINK}{TLS_FILES}handshake_timeout = \"1h\"\n"),
            "link.handshake_timeout",
        ),
    ];
    for (text, field) in cases {
        match Config::from_toml(text, "t") {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: expected an invalid {field}, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_file_is_a_read_error_with_the_path() {
    let e = Config::load(Path::new("does/not/exist.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("does/not/exist.toml"), "{e}");
}

/// A file in the system's temporary directory, removed when dropped.
#[cfg(unix)]
struct TempFile(std::path::PathBuf);

#[cfg(unix)]
impl TempFile {
    fn new(name: &str, text: &str, mode: u32) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Self(path)
    }
}

#[cfg(unix)]
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(unix)]
#[test]
fn psk_files_are_read_and_refused_when_others_may_read_them() {
    let good = TempFile::new(
        "good.psk",
        "# devices\n\ndev-1:00112233445566778899aabbccddeeff\n dev-2 : 0a0b0c0d0e0f10111213141516171819 \n",
        0o600,
    );
    let keys = load_psk_file(&good.0).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys["dev-1"].len(), 16);
    assert_eq!(keys["dev-2"][..2], [0x0a, 0x0b]);

    let open = TempFile::new("open.psk", "dev-1:00\n", 0o644);
    let e = load_psk_file(&open.0).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Invalid {
            field: "link.psk_file",
            ..
        }
    ));
    assert!(e.to_string().contains("readable by other users"), "{e}");

    for (name, text, says) in [
        (
            "hex.psk",
            "# x\ndev-1:00112233445566778899aabbccddeeff\ndev-2:zz\n",
            "line 3",
        ),
        ("odd.psk", "dev-1:abc\n", "even number"),
        (
            "twice.psk",
            "dev-1:00112233445566778899aabbccddeeff\ndev-1:0a0b0c0d0e0f10111213141516171819\n",
            "listed twice",
        ),
        ("colon.psk", "dev-1 00\n", "device-id:hexkey"),
    ] {
        let f = TempFile::new(name, text, 0o600);
        let e = load_psk_file(&f.0).unwrap_err();
        assert!(e.to_string().contains(says), "{name}: {e}");
    }
}

#[test]
fn dtls_links_need_a_credential_and_sane_limits() {
    const DTLS: &str = "[[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:5684\"\n";
    const PSK: &str = "psk = { \"dev-1\" = \"00112233445566778899aabbccddeeff\" }\n";
    let ok = Config::from_toml(&format!("{DTLS}{PSK}"), "t").unwrap();
    assert!(matches!(
        &ok.links[0],
        LinkConfig::Dtls(DtlsLink {
            mtu: 1200,
            max_sessions_per_identity: 1,
            handshakes_per_second_per_address: 20,
            ..
        })
    ));
    // A typo inside a DTLS link is an error naming the key, as in every other table.
    let e = Config::from_toml(&format!("{DTLS}{PSK}mtuu = 1200\n"), "t").unwrap_err();
    assert!(e.to_string().contains("mtuu"), "{e}");
    // Written back, a DTLS link reads the same (the default file and tests serialise configs).
    let text = toml::to_string(&ok).unwrap();
    assert_eq!(Config::from_toml(&text, "t").unwrap(), ok, "{text}");
    // The same port over TCP and UDP is two endpoints.
    let both = format!("{DTLS}{PSK}[[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:5684\"\n");
    Config::from_toml(&both, "t").unwrap();
    let cases = [
        (DTLS.to_owned(), "link.psk"),
        (
            format!("{DTLS}psk = {{ \"dev-1\" = \"xyz\" }}\n"),
            "link.psk",
        ),
        (format!("{DTLS}{PSK}mtu = 300\n"), "link.mtu"),
        (
            format!("{DTLS}{PSK}cert_file = \"c.pem\"\n"),
            "link.cert_file",
        ),
        (
            format!("{DTLS}{PSK}max_half_open = 0\n"),
            "link.max_half_open",
        ),
        (
            format!("{DTLS}{PSK}max_sessions_per_identity = 0\n"),
            "link.max_sessions_per_identity",
        ),
        (
            format!("{DTLS}{PSK}handshakes_per_second_per_address = 0\n"),
            "link.handshakes_per_second_per_address",
        ),
        (format!("{DTLS}{PSK}ciphers = \" \"\n"), "link.ciphers"),
        (format!("{DTLS}{PSK}{DTLS}{PSK}"), "link.listen"),
    ];
    for (text, field) in cases {
        match Config::from_toml(&text, "t") {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: expected an invalid {field}, got {other:?}"),
        }
    }
}

#[test]
fn a_bad_key_says_what_is_wrong_with_it() {
    assert_eq!(
        parse_psk("0A0B0C0D0E0F10111213141516171819").unwrap()[..2],
        [0x0a, 0x0b]
    );
    // Shorter than 16 bytes (128 bits): guessable offline from one recorded handshake.
    assert_eq!(parse_psk("0a0b"), Err(PskError::TooShort));
    assert_eq!(
        parse_psk(&"00".repeat(MIN_PSK_BYTES - 1)),
        Err(PskError::TooShort)
    );
    assert_eq!(
        parse_psk(&"00".repeat(MIN_PSK_BYTES)).unwrap().len(),
        MIN_PSK_BYTES
    );
    assert_eq!(
        PskError::TooShort.to_string(),
        "a key has at least 16 bytes (32 hex digits)"
    );
    assert_eq!(parse_psk("abc"), Err(PskError::OddLength));
    assert_eq!(parse_psk(""), Err(PskError::OddLength));
    assert_eq!(parse_psk("zz"), Err(PskError::NotHex));
    assert_eq!(
        parse_psk(&"00".repeat(MAX_PSK_BYTES + 1)),
        Err(PskError::TooLong)
    );
    assert_eq!(PskError::TooLong.to_string(), "a key has at most 256 bytes");
}

#[cfg(unix)]
#[test]
fn a_bad_psk_file_line_names_the_file_the_line_and_the_reason() {
    let f = TempFile::new(
        "line.psk",
        "# keys\ndev-1:00112233445566778899aabbccddeeff\n\ndev-2:0g\n",
        0o600,
    );
    let e = load_psk_file(&f.0).unwrap_err();
    match &e {
        ConfigError::PskFile { path, line, source } => {
            assert_eq!(path, &f.0);
            assert_eq!(*line, 4);
            assert_eq!(source, &PskLineError::Key(PskError::NotHex));
        }
        other => panic!("expected a PSK file line error, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        format!(
            "link.psk_file: {}: line 4: a key is hex digits only",
            f.0.display()
        )
    );
    assert!(std::error::Error::source(&e).is_some());

    let f = TempFile::new("id.psk", ":00\n", 0o600);
    let e = load_psk_file(&f.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("id.psk: line 1: device ids have 1 to 32 bytes"),
        "{e}"
    );
    let f = TempFile::new(
        "twice2.psk",
        "dev-1:00112233445566778899aabbccddeeff\ndev-1:0a0b0c0d0e0f10111213141516171819\n",
        0o600,
    );
    let e = load_psk_file(&f.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("twice2.psk: line 2: dev-1 is listed twice"),
        "{e}"
    );
}

#[test]
fn urgency_is_on_by_default_and_set_per_device() {
    let d = Config::default();
    assert_eq!((d.urgent.urgent_at, d.urgent.reserve), (Priority::P1, 1));
    let c = Config::from_toml(
        "[urgent]\nurgent_at = \"P0\"\nreserve = 2\n[urgent.devices.dev-1]\nreserve = 0\n",
        "t",
    )
    .unwrap();
    assert_eq!((c.urgent.urgent_at, c.urgent.reserve), (Priority::P0, 2));
    assert_eq!(c.urgent.devices["dev-1"].reserve, 0);
    for (text, says) in [
        ("[urgent]\nurgent_at = \"P9\"\n", "urgent_at"),
        ("[urgent]\nreserv = 1\n", "reserv"),
        ("[urgent.devices.dev-1]\nreserve = 1\nslots = 2\n", "slots"),
    ] {
        let e = Config::from_toml(text, "t").unwrap_err();
        assert!(e.to_string().contains(says), "{text}: {e}");
    }
    let long = format!("[urgent.devices.{}]\nreserve = 1\n", "d".repeat(33));
    let e = Config::from_toml(&long, "t").unwrap_err();
    assert!(e.to_string().contains("urgent.devices"), "{e}");
}

#[test]
fn resources_take_a_fixed_or_dynamic_ceiling_and_inheritance_is_on_by_default() {
    let text = "[[resource]]\nname = \"bus-x\"\n[[resource]]\nname = \"conveyor.1\"\nceiling = \"P1\"\ninheritance = false\n[[resource]]\nname = \"radio\"\nceiling = \"dynamic\"\n";
    let c = Config::from_toml(text, "test").unwrap();
    let got: Vec<(&str, Option<Ceiling>, bool)> = c
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.ceiling, r.inheritance))
        .collect();
    assert_eq!(
        got,
        [
            ("bus-x", None, true),
            ("conveyor.1", Some(Ceiling::Fixed(Priority::P1)), false),
            ("radio", Some(Ceiling::Dynamic), true)
        ]
    );
    // Written back, it reads the same.
    let again = Config::from_toml(&toml::to_string(&c).unwrap(), "again").unwrap();
    assert_eq!(again, c);
    let bad = Config::from_toml("[[resource]]\nname = \"x\"\nceiling = \"P9\"\n", "bad");
    assert!(
        bad.unwrap_err().to_string().contains("\"P0\" to \"P5\""),
        "a bad ceiling says what is allowed"
    );
}

#[cfg(unix)]
#[test]
fn users_files_are_read_and_refused_when_others_may_read_them() {
    let good = TempFile::new(
        "good.users",
        "# apps\n\napp:s3cret:with colon\n ops : pw \n",
        0o600,
    );
    let users = load_users_file(&good.0).unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users["app"], "s3cret:with colon");
    assert_eq!(users["ops"], " pw ");

    let open = TempFile::new("open.users", "app:pw\n", 0o640);
    let e = load_users_file(&open.0).unwrap_err();
    assert!(e.to_string().contains("readable by other users"), "{e}");
    for (name, text, says) in [
        ("nocolon.users", "app pw\n", "line 1: not username:password"),
        ("twice.users", "a:1\n#\na:2\n", "line 3: user \"a\" again"),
        ("nopass.users", "a:\n", "empty password"),
        ("noname.users", ":pw\n", "empty username"),
        ("empty.users", "# nobody\n", "no users"),
    ] {
        let f = TempFile::new(name, text, 0o600);
        let e = load_users_file(&f.0).unwrap_err().to_string();
        assert!(
            e.contains(says) && e.contains("broker.users_file"),
            "{name}: {e}"
        );
        assert!(!e.contains("pw"), "{name}: a password in the error: {e}");
    }
}

/// An embedded broker beyond loopback takes anonymous clients only when told to (review H3).
#[test]
fn an_embedded_broker_beyond_loopback_needs_users_or_an_explicit_yes() {
    let e = error("[broker]\nmode = \"embedded\"\nlisten = \"0.0.0.0:1883\"");
    assert!(
        e.contains("broker.listen") && e.contains("users_file"),
        "{e}"
    );
    let e = error(
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:1883\"\n[broker.tls]\nlisten = \"0.0.0.0:8883\"\ncert_file = \"c\"\nkey_file = \"k\"",
    );
    assert!(
        e.contains("broker.tls.listen") && e.contains("users_file"),
        "{e}"
    );
    let e = error(
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:1883\"\n[broker.tls]\nlisten = \"127.0.0.1:8883\"\ncert_file = \"c\"\nkey_file = \"k\"\nmax_handshakes = 0",
    );
    assert!(e.contains("broker.tls.max_handshakes"), "{e}");
    for ok in [
        "[broker]\nmode = \"embedded\"\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = true",
        "[broker]\nmode = \"embedded\"\nlisten = \"0.0.0.0:1883\"\nusers_file = \"/etc/u\"",
        "[broker]\nmode = \"embedded\"\nlisten = \"[::1]:1883\"",
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:1883\"\nusers_file = \"/etc/u\"\n[broker.tls]\nlisten = \"0.0.0.0:8883\"\ncert_file = \"c\"\nkey_file = \"k\"",
    ] {
        Config::from_toml(ok, "test.toml").unwrap();
    }
}

/// The commented DTLS link example of the default file, uncommented, is a valid link whose
/// cipher list names only suites the bridge offers by default (it once ended in `...`).
#[test]
fn the_default_files_dtls_link_example_is_valid_and_its_ciphers_are_real_suites() {
    let example = commented_example(
        "# [[link]]\n# kind = \"dtls\"",
        "a commented DTLS link example",
    );
    let c = Config::from_toml(&example, "example").unwrap();
    let [LinkConfig::Dtls(d)] = &c.links[..] else {
        panic!("not one DTLS link: {example}");
    };
    assert!(example.contains("ciphers = "), "{example}");
    let known: Vec<&str> = DEFAULT_DTLS_CIPHERS.split(':').collect();
    for suite in d.ciphers.split(':') {
        assert!(known.contains(&suite), "{suite:?} in {:?}", d.ciphers);
    }
}

/// A directory in the system's temporary directory, removed with its contents when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("broker-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The problems of `text`, as `key = value: reason` lines.
fn problems(text: &str) -> Vec<String> {
    Config::parse(text, "test.toml")
        .unwrap()
        .check()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_check_lists_every_problem_with_its_key_and_value() {
    let dir = TempDir::new("several");
    let missing = dir.0.join("missing.pem");
    let text = format!(
        "bridge_id = \"a/b\"\ndata_dir = {data:?}\n[queue]\nlimit = 0\nmax_attempts = 0\n\
         [[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:7878\"\n\
         [[link]]\nkind = \"tls\"\nlisten = \"127.0.0.1:7879\"\ncert_file = {m:?}\n\
         key_file = {m:?}\nclient_ca_file = {m:?}\n\
         [[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:5684\"\nmtu = 100\n\
         psk = {{ \"dev-1\" = \"0011\" }}\n",
        data = dir.0.join("data").display().to_string(),
        m = missing.display().to_string(),
    );
    let found = problems(&text);
    let m = missing.display();
    let expected = [
        "bridge_id = \"a/b\": 1 to 64 letters, digits, '-', '_' or '.'".to_owned(),
        "queue.limit = 0: at least 1".to_owned(),
        "queue.max_attempts = 0: at least 1".to_owned(),
        "link[2].psk = (hidden): dev-1: a key has at least 16 bytes (32 hex digits)".to_owned(),
        format!("link[1].cert_file = \"{m}\": cannot open: No such file or directory (os error 2)"),
        format!("link[1].key_file = \"{m}\": cannot open: No such file or directory (os error 2)"),
        format!(
            "link[1].client_ca_file = \"{m}\": cannot open: No such file or directory (os error 2)"
        ),
    ];
    assert_eq!(found, expected, "{found:#?}");
    // The mtu is wrong too, but a link reports its first problem.
    let text = text.replace(
        "psk = { \"dev-1\" = \"0011\" }",
        "psk = { \"dev-1\" = \"00112233445566778899aabbccddeeff\" }",
    );
    assert!(problems(&text).contains(&"link[2].mtu = 100: 512 to 9000 bytes".to_owned()));
}

#[test]
fn a_valid_configuration_has_no_problems() {
    let dir = TempDir::new("valid");
    let config = Config {
        data_dir: dir.0.join("not-yet/data"),
        ..Config::default()
    };
    assert_eq!(config.check(), Checked::default());
    // Nothing was created.
    assert!(!dir.0.join("not-yet").exists());
}

#[test]
fn listeners_on_the_same_port_and_protocol_are_problems() {
    let text = "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:1883\"\n\
                [[link]]\nkind = \"tcp\"\nlisten = \"0.0.0.0:1883\"\n\
                [[link]]\nkind = \"dtls\"\nlisten = \"0.0.0.0:1883\"\n\
                psk = { \"dev-1\" = \"00112233445566778899aabbccddeeff\" }\n\
                [[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.2:1884\"\n\
                [[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.3:1884\"\n";
    let found: Vec<String> = problems(text)
        .into_iter()
        .filter(|p| !p.starts_with("data_dir"))
        .collect();
    // UDP 1883 is free; two addresses of port 1884 do not collide.
    assert_eq!(
        found,
        [
            "link[0].listen = \"0.0.0.0:1883\": tcp port 1883 is taken by broker.listen (127.0.0.1:1883) already"
        ]
    );
}

#[test]
fn a_data_dir_that_cannot_be_created_is_a_problem() {
    let dir = TempDir::new("datadir");
    let file = dir.0.join("a-file");
    std::fs::write(&file, "").unwrap();
    let config = Config {
        data_dir: file.join("data"),
        ..Config::default()
    };
    let errors = config.check().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "data_dir");
    assert_eq!(
        errors[0].value,
        format!("\"{}\"", file.join("data").display())
    );
    assert!(
        errors[0].reason.contains("not a directory"),
        "{}",
        errors[0]
    );
    let config = Config {
        data_dir: file,
        ..Config::default()
    };
    assert_eq!(config.check().errors[0].reason, "not a directory");
}

#[cfg(unix)]
#[test]
fn users_and_psk_files_are_parsed_and_a_missing_serial_port_is_a_warning() {
    let users = TempFile::new("check-users", "app-no-password\n", 0o600);
    let psk = TempFile::new(
        "check-psk",
        "dev-1:00112233445566778899aabbccddeeff\nbad\n",
        0o600,
    );
    let text = format!(
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:1883\"\nusers_file = {u:?}\n\
         [[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:5684\"\npsk_file = {p:?}\n\
         [[link]]\nkind = \"serial\"\npath = \"/dev/edge-bridge-no-such-port\"\n",
        u = users.0.display().to_string(),
        p = psk.0.display().to_string(),
    );
    let checked = Config::parse(&text, "test.toml").unwrap().check();
    let errors: Vec<String> = checked
        .errors
        .iter()
        .filter(|p| p.key != "data_dir")
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            format!(
                "broker.users_file = \"{}\": line 1: not username:password",
                users.0.display()
            ),
            format!(
                "link[0].psk_file = \"{}\": line 2: expected device-id:hexkey",
                psk.0.display()
            ),
        ]
    );
    assert_eq!(checked.warnings.len(), 1);
    assert_eq!(checked.warnings[0].key, "link[1].path");
}
