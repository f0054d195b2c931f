use super::*;

#[test]
fn the_default_file_is_the_default_config() {
    assert_eq!(
        Config::from_toml(DEFAULT_CONFIG, "default").unwrap(),
        Config::default()
    );
    Config::default().validate().unwrap();
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
