//! The operators' and clients' tools against a running bridge, as real processes:
//! - the retained `{root}/capabilities/{name}` documents follow a device coming and going;
//! - `edge-bridge tasks` says why a task waits (no device, device busy), over MQTT;
//! - `edge-bridge submit` confirms by the bridge's own `queued` (or `rejected`) events, exits
//!   non-zero on a rejection or a bad line, follows tasks with `--wait`, and sends again, with
//!   the same id, what got no answer (the bridge not there yet): every task exactly once;
//! - `edge-bridge watch ID` shows a task that finished before it started, and exits by itself.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use edge_tests::{
    Watcher, binary, external_config, start_bridge, start_bridge_with_config, start_device,
    start_mosquitto, terminate,
};
use serde_json::Value;

const ROOT: &str = "edge/edge-bridge";

/// Runs `edge-bridge ARGS` against the broker at `broker` (a client command: it ends by
/// itself, within its own timeouts), with `stdin` as its standard input.
async fn cli(broker: SocketAddr, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(binary("edge-bridge"));
    cmd.args(args)
        .args(["--broker", &broker.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = stdin.map(str::to_owned);
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn edge-bridge");
        if let Some(text) = input {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().expect("edge-bridge ran")
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The code of `out`, with its output shown when it is not `want`.
fn expect_code(out: &Output, want: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "{what}: stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The devices listed in the last `capabilities/{name}` document seen (empty once cleared).
fn listed(seen: &[(String, Value)], name: &str) -> Option<Vec<String>> {
    let topic = format!("{ROOT}/capabilities/{name}");
    let (_, doc) = seen.iter().rev().find(|(t, _)| *t == topic)?;
    Some(match doc["devices"].as_array() {
        Some(devices) => devices
            .iter()
            .map(|d| d["device_id"].as_str().unwrap().to_owned())
            .collect(),
        None => Vec::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_why_it_waits_submit_and_watch_against_a_running_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&dir.path().join("data"), &[]);
    let mqtt = bridge.mqtt;
    let mut w = Watcher::connect(mqtt, ROOT).await;
    let device = start_device(bridge.devices, "dev-a", &["echo", "sleep"]);
    w.wait_for(
        Duration::from_secs(20),
        "capabilities/echo lists dev-a",
        |seen| listed(seen, "echo") == Some(vec!["dev-a".to_owned()]),
    )
    .await;
    let doc = &w
        .seen
        .iter()
        .rev()
        .find(|(t, _)| t == &format!("{ROOT}/capabilities/echo"))
        .unwrap()
        .1;
    assert_eq!(doc["devices"][0]["slots"], 8, "{doc}");
    assert!(doc["free"].as_u64().unwrap() > 0, "{doc}");

    // A task no device can run: queued, and `tasks` says why.
    let out = cli(mqtt, &["submit", "-c", "nothing", "--id", "t-none"], None).await;
    expect_code(&out, 0, "submit t-none");
    assert_eq!(text(&out.stdout), "t-none\tqueued\n");
    // The one slot of a device busy: a long sleep fills every slot, the next one waits.
    let long: String = (0..8)
        .map(|i| format!("{{\"id\":\"long-{i}\",\"capability\":\"sleep\",\"priority\":0,\"payload\":{{\"ms\":60000}}}}\n"))
        .collect();
    let out = cli(mqtt, &["submit", "-f", "-"], Some(&long)).await;
    expect_code(&out, 0, "submit the long tasks");
    let out = cli(
        mqtt,
        &[
            "submit",
            "-c",
            "sleep",
            "-p",
            r#"{"ms":1}"#,
            "--id",
            "t-busy",
        ],
        None,
    )
    .await;
    expect_code(&out, 0, "submit t-busy");
    let out = cli(mqtt, &["tasks", "--json"], None).await;
    expect_code(&out, 0, "tasks --json");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["live"], 10, "{answer}");
    let why = |id: &str| -> Value {
        answer["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {answer}"))["waiting"]
            .clone()
    };
    assert_eq!(why("t-none")["code"], "no_device");
    assert_eq!(why("t-busy")["code"], "devices_busy", "{answer}");
    assert_eq!(why("long-0")["code"], "on_device");
    // On a device first, then queued in dispatch order.
    let states: Vec<&str> = answer["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    let first_queued = states.iter().position(|s| *s == "queued").unwrap();
    assert!(
        states[first_queued..].iter().all(|s| *s == "queued"),
        "{states:?}"
    );
    // The table and one task, for people.
    let out = cli(mqtt, &["tasks"], None).await;
    expect_code(&out, 0, "tasks");
    let table = text(&out.stdout);
    assert!(
        table.contains("no_device: no online device offers the capability nothing"),
        "{table}"
    );
    assert!(table.contains("10 of 10 live task(s) shown"), "{table}");
    let out = cli(mqtt, &["tasks", "t-busy"], None).await;
    expect_code(&out, 0, "tasks t-busy");
    assert!(
        text(&out.stdout)
            .contains("waiting:    devices_busy: every device that can take it is full"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(mqtt, &["tasks", "never-submitted"], None).await;
    expect_code(&out, 1, "tasks for an unknown id");
    assert!(text(&out.stderr).contains("no task never-submitted"));
    let out = cli(mqtt, &["watch", "never-submitted"], None).await;
    expect_code(&out, 1, "watch an unknown id");
    assert!(text(&out.stderr).contains("no task never-submitted"));
    // A free slot makes the waiting one run: cancel the long ones.
    for i in 0..8 {
        w.cancel(ROOT, &format!("long-{i}")).await;
    }

    // One task, followed to its end; then watched after it finished.
    let out = cli(
        mqtt,
        &[
            "submit",
            "-c",
            "echo",
            "-p",
            r#"{"x":1}"#,
            "--id",
            "e1",
            "--wait",
        ],
        None,
    )
    .await;
    expect_code(&out, 0, "submit --wait");
    let end: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (end["id"].as_str(), end["state"].as_str()),
        (Some("e1"), Some("completed"))
    );
    assert_eq!(end["result"], serde_json::json!({"x":1}));
    let out = cli(mqtt, &["watch", "e1"], None).await;
    expect_code(&out, 0, "watch a finished task");
    let line = text(&out.stdout);
    assert!(
        line.contains("  e1  completed  dev-a  attempt 1  result {\"x\":1}"),
        "{line}"
    );

    // Refusals: by the bridge (priority 9), and a line that is no submission.
    let out = cli(
        mqtt,
        &["submit", "-c", "echo", "--priority", "9", "--id", "bad"],
        None,
    )
    .await;
    expect_code(&out, 1, "a rejected submission");
    assert_eq!(text(&out.stdout), "bad\trejected\n");
    assert!(
        text(&out.stderr).contains("bad rejected: "),
        "{}",
        text(&out.stderr)
    );
    let lines = "{\"id\":\"ok-1\",\"capability\":\"echo\"}\nnot json\n[1]\n{\"id\":\"ok-1\",\"capability\":\"echo\"}\n{\"id\":\"a/b\",\"capability\":\"echo\"}\n";
    let out = cli(mqtt, &["submit", "-f", "-"], Some(lines)).await;
    expect_code(&out, 1, "bad lines");
    assert_eq!(text(&out.stdout), "ok-1\tqueued\n");
    let err = text(&out.stderr);
    for says in [
        "line 2: not JSON",
        "line 3: not a JSON object",
        "line 4: id ok-1 was submitted before",
        "line 5: id \"a/b\" is not a task id",
    ] {
        assert!(err.contains(says), "{err}");
    }
    // A query without a reply level is refused on {root}/errors.
    w.client
        .publish(
            format!("{ROOT}/query/tasks"),
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"id":"e1"}"#,
        )
        .await
        .unwrap();
    w.wait_for(Duration::from_secs(10), "the query refused", |seen| {
        seen.iter()
            .any(|(t, e)| t.ends_with("/errors") && e["error"]["code"] == "invalid_query")
    })
    .await;

    // The device goes: its capabilities' documents are cleared.
    terminate(device);
    let cleared = format!("{ROOT}/capabilities/echo");
    w.wait_for(
        Duration::from_secs(20),
        "capabilities/echo cleared",
        |seen| {
            seen.iter()
                .rev()
                .find(|(t, _)| *t == cleared)
                .is_some_and(|(_, v)| v == "")
        },
    )
    .await;
    assert_eq!(listed(&w.seen, "echo"), Some(vec![]));
    drop(bridge);
}

/// `submit` started before its bridge: nothing answers, so it sends each waiting submission
/// again until the bridge is there; every line ends up one task, none twice. Then a batch
/// through a running bridge gives the command's rate with its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_sends_again_what_got_no_answer_and_every_line_is_one_task() {
    const LINES: usize = 300;
    const BATCH: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    let input: String = (0..LINES)
        .map(|i| format!("{{\"id\":\"early-{i}\",\"capability\":\"echo\"}}\n"))
        .collect();
    let file = dir.path().join("early.jsonl");
    std::fs::write(&file, input).unwrap();
    // Subscribed once its status subscription is acknowledged: then the bridge starts.
    let mut early = Command::new(binary("edge-bridge"));
    early
        .args([
            "submit",
            "--window",
            "32",
            "--timeout",
            "1s",
            "--retries",
            "60",
        ])
        .args([
            "--broker",
            &broker.to_string(),
            "-f",
            file.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let early = early.spawn().unwrap();
    // The client's own subscription shows on the broker as nothing we can read; instead its
    // first submission, which no one takes, tells it is running.
    let mut w = Watcher::subscribe(broker, &format!("{ROOT}/tasks/submit"), false).await;
    w.wait_for(Duration::from_secs(20), "the first submission", |seen| {
        !seen.is_empty()
    })
    .await;
    let config = external_config("edge-bridge", port);
    let bridge = start_bridge_with_config(dir.path(), &config);
    let out = tokio::task::spawn_blocking(move || early.wait_with_output().unwrap())
        .await
        .unwrap();
    expect_code(&out, 0, "submit before the bridge");
    let stdout = text(&out.stdout);
    let mut ids: Vec<&str> = stdout
        .lines()
        .map(|l| l.strip_suffix("\tqueued").unwrap_or_else(|| panic!("{l}")))
        .collect();
    assert_eq!(ids.len(), LINES, "one confirmation per line");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), LINES, "each line confirmed once");
    let summary = text(&out.stderr).trim().to_owned();
    let resent: u64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" resent)"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resent count: {summary}"));
    assert!(resent > 0, "nothing was sent again: {summary}");
    let out = cli(broker, &["tasks", "--json", "--limit", "1"], None).await;
    expect_code(&out, 0, "tasks");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["live"], LINES, "one task per line: {answer}");

    // The rate with a window of 64, through mosquitto (a figure, not a check).
    let batch: String = (0..BATCH)
        .map(|i| format!("{{\"capability\":\"echo\",\"payload\":{{\"n\":{i}}}}}\n"))
        .collect();
    let started = Instant::now();
    let out = cli(
        broker,
        &["submit", "--window", "64", "-f", "-"],
        Some(&batch),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    expect_code(&out, 0, "the batch");
    assert_eq!(text(&out.stdout).lines().count(), BATCH);
    println!(
        "edge-bridge submit: {BATCH} tasks, window 64, through mosquitto: {:.0} tasks/s ({secs:.2} s, process start included)",
        BATCH as f64 / secs
    );
    drop(bridge);
}

/// `watch ID` loses its connection while its task ends: the end's event goes by while it is
/// away (a clean session keeps nothing), so after the reconnect it asks again, shows the end
/// and exits. Its connection goes through a proxy that cuts it and holds the reconnection
/// until the bridge has published the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_asks_again_after_a_reconnect_and_shows_the_end_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&dir.path().join("data"), &[]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    w.submit(ROOT, r#"{"id":"missed","capability":"echo","payload":7}"#)
        .await;
    w.wait_for(Duration::from_secs(20), "missed queued", |seen| {
        edge_tests::last_state(seen, "missed").as_deref() == Some("queued")
    })
    .await;
    let proxy = edge_tests::Proxy::start(bridge.mqtt).await;
    let mut watch = Command::new(binary("edge-bridge"))
        .args(["watch", "missed", "--broker", &proxy.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = edge_tests::LogLines::capture(watch.stderr.take().unwrap());
    log.wait_for(Duration::from_secs(20), "the task's state", |l| {
        l.contains("missed is queued")
    })
    .await;
    let _device = away_while_it_ends(&bridge, &mut w, &proxy, &mut log, "missed").await;
    let (status, printed) = end_of(watch, "watch").await;
    assert!(status.success(), "{status}: {printed}");
    assert!(
        printed.contains("  missed  completed  dev-a  attempt 1  result 7"),
        "{printed}"
    );
}

/// Cuts the client command behind `proxy` from the broker and holds its reconnection (its
/// `log` says it lost the connection); meanwhile a device comes and task `id` completes (`w`
/// sees it); then lets it reconnect. Returns the device.
async fn away_while_it_ends(
    bridge: &edge_tests::Bridge,
    w: &mut Watcher,
    proxy: &edge_tests::Proxy,
    log: &mut edge_tests::LogLines,
    id: &str,
) -> edge_tests::Proc {
    proxy.hold();
    proxy.cut();
    log.wait_for(Duration::from_secs(20), "the connection lost", |l| {
        l.contains("connection to the broker lost")
    })
    .await;
    let device = start_device(bridge.devices, "dev-a", &["echo"]);
    w.wait_for(Duration::from_secs(20), "the task completed", |seen| {
        edge_tests::last_state(seen, id).as_deref() == Some("completed")
    })
    .await;
    proxy.release();
    device
}

/// The end of a client command and what it printed on stdout; killed, and the test failed,
/// if it has not ended within 30 s (a client that never learns of an end waits for ever).
async fn end_of(mut child: std::process::Child, what: &str) -> (std::process::ExitStatus, String) {
    let mut stdout = child.stdout.take().unwrap();
    let printed = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end after its reconnect: it never learnt of the end");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (status, printed.join().unwrap())
}

/// `submit --wait` loses its connection while the task it follows ends: after the reconnect
/// it sends the submission again (same id), the bridge answers with the task's final state,
/// and the command ends with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_sends_again_after_a_reconnect_and_gets_the_end_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&dir.path().join("data"), &[]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let proxy = edge_tests::Proxy::start(bridge.mqtt).await;
    let mut submit = Command::new(binary("edge-bridge"))
        .args([
            "submit", "-c", "echo", "-p", "8", "--id", "followed", "--wait",
        ])
        .args(["--broker", &proxy.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = edge_tests::LogLines::capture(submit.stderr.take().unwrap());
    // The command took the `queued` (its progress line, every 5 s, says so): from now on it
    // only follows the task.
    log.wait_for(Duration::from_secs(20), "the submission accepted", |l| {
        l.contains("accepted 1,") && l.contains("running 1")
    })
    .await;
    let _device = away_while_it_ends(&bridge, &mut w, &proxy, &mut log, "followed").await;
    let (status, printed) = end_of(submit, "submit --wait").await;
    assert!(status.success(), "{status}: {printed}");
    let end: Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(end["state"], "completed", "{end}");
    assert_eq!(end["result"], 8);
}
