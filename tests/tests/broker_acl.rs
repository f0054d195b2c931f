//! The access rules the README gives for an external mosquitto (`broker-config/mosquitto-acl`),
//! with the bridge on it: a client without rights cannot publish task states, device
//! documents or the bridge's status, nor cancel tasks; an application can submit and cancel.
//! Each forbidden publish is acknowledged by mosquitto (MQTT 3.1.1 cannot refuse one) before
//! the next step, so a later event shows it had no effect: mosquitto hands messages on in the
//! order it took them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use broker_config::BrokerConfig;
use edge_tests::{
    Watcher, binary, external_config, free_port, last_state, run_mosquitto,
    start_bridge_with_config,
};

const ROOT: &str = "edge/acl";

fn users(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("passwords");
    for (n, (user, password)) in [
        ("edge-bridge", "bridge-pw"),
        ("app", "app-pw"),
        ("viewer", "viewer-pw"),
        ("intruder", "intruder-pw"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.arg("-b");
        if n == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg(&file)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (package mosquitto) must be installed");
        assert!(status.success(), "mosquitto_passwd {user}");
    }
    file
}

/// Publishes as `user` with mosquitto_pub at QoS 1: it returns once mosquitto acknowledged.
fn publish_as(port: u16, user: &str, password: &str, topic: &str, message: &str, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", user, "-P", password, "-t", topic, "-m", message]);
    if retain {
        cmd.arg("-r");
    }
    let status = cmd
        .status()
        .expect("mosquitto_pub (package mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub as {user} on {topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_rights_cannot_forge_states_documents_or_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, broker_config::MOSQUITTO_ACL).unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\n\
             use_username_as_clientid true\npassword_file {}\nacl_file {}\n\
             persistence false\n{}",
            users(dir.path()).display(),
            acl.display(),
            broker_config::MOSQUITTO_CONF
        ),
    )
    .unwrap();
    let _mosquitto = run_mosquitto(&conf, &[port]);
    let broker = SocketAddr::from(([127, 0, 0, 1], port));

    let mut config = external_config("acl", port);
    if let BrokerConfig::External {
        username, password, ..
    } = &mut config.broker
    {
        *username = Some("edge-bridge".into());
        *password = Some("bridge-pw".into());
    }
    let mut w = Watcher::connect_as(broker, ROOT, "viewer", "viewer-pw").await;
    let _bridge = start_bridge_with_config(dir.path(), &config);
    w.wait_bridge_online().await;
    let app = Watcher::connect_as(broker, ROOT, "app", "app-pw").await;
    // A task no device can take: it stays queued until cancelled.
    app.submit(ROOT, r#"{"id":"kept","capability":"nowhere"}"#)
        .await;
    w.wait_for(Duration::from_secs(20), "the task queued", |seen| {
        last_state(seen, "kept").as_deref() == Some("queued")
    })
    .await;

    // A user with a valid login and no rules (the ACL denies what it does not grant) tries
    // everything only the bridge or an application may do.
    publish_as(
        port,
        "intruder",
        "intruder-pw",
        &format!("{ROOT}/tasks/kept/cancel"),
        "",
        false,
    );
    publish_as(
        port,
        "intruder",
        "intruder-pw",
        &format!("{ROOT}/tasks/kept/status"),
        r#"{"id":"kept","state":"completed","result":"forged"}"#,
        false,
    );
    publish_as(
        port,
        "intruder",
        "intruder-pw",
        &format!("{ROOT}/devices/forged"),
        r#"{"online":true}"#,
        true,
    );
    publish_as(
        port,
        "intruder",
        "intruder-pw",
        &format!("{ROOT}/bridge/status"),
        r#"{"online":false}"#,
        true,
    );
    publish_as(
        port,
        "intruder",
        "intruder-pw",
        &format!("{ROOT}/tasks/submit"),
        r#"{"id":"intruder-task","capability":"echo"}"#,
        false,
    );

    // What the application publishes next comes after all of that.
    app.submit(ROOT, r#"{"id":"marker","capability":"nowhere"}"#)
        .await;
    w.wait_for(Duration::from_secs(20), "the marker queued", |seen| {
        last_state(seen, "marker").is_some()
    })
    .await;
    assert_eq!(
        last_state(&w.seen, "kept").as_deref(),
        Some("queued"),
        "the intruder's cancel or forged state took effect"
    );
    assert!(
        last_state(&w.seen, "intruder-task").is_none(),
        "the intruder submitted a task"
    );
    let forged: Vec<_> = w
        .seen
        .iter()
        .filter(|(t, v)| {
            t.ends_with("/devices/forged")
                || (t.ends_with("/bridge/status") && v["online"] == false)
                || v["result"] == "forged"
        })
        .collect();
    assert!(
        forged.is_empty(),
        "forged messages went through: {forged:?}"
    );

    // The application may cancel.
    app.cancel(ROOT, "kept").await;
    w.wait_for(Duration::from_secs(20), "the task cancelled", |seen| {
        last_state(seen, "kept").as_deref() == Some("cancelled")
    })
    .await;

    // A viewer may ask why tasks wait (a query changes nothing); the intruder gets no answer.
    let tasks = |user: &'static str, password: &'static str| {
        let mut cmd = Command::new(binary("edge-bridge"));
        cmd.args(["tasks", "--json", "--timeout", "3s", "--root", ROOT])
            .args(["--broker", &broker.to_string(), "--username", user])
            .env("EDGE_BRIDGE_PASSWORD", password);
        tokio::task::spawn_blocking(move || cmd.output().expect("run edge-bridge tasks"))
    };
    let out = tasks("viewer", "viewer-pw").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["live"], 1, "the marker waits: {answer}");
    assert_eq!(answer["tasks"][0]["id"], "marker");
    let out = tasks("intruder", "intruder-pw").await.unwrap();
    assert_eq!(out.status.code(), Some(2), "the intruder was answered");
    let err = String::from_utf8_lossy(&out.stderr);
    // mosquitto grants the subscription and delivers nothing (MQTT 3.1.1 has no refusal of a
    // publish): the command says what may be wrong.
    assert!(
        err.contains("no answer") && err.contains("access rules"),
        "{err}"
    );
}
