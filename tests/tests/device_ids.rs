//! Device ids are topic levels: a device whose id is not a valid MQTT topic level (`pump#3`,
//! `a/b`, `x+y`) is refused on its link with a logged reason, and the bridge goes on
//! publishing every event (on 903e31e such a device's document could never be published and
//! held one of the publish slots for good; with the driver waiting for room, it held all).

use std::time::Duration;

use edge_tests::{
    Watcher, embedded_config, last_state, start_bridge_with_log, start_device, write_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_id_that_is_not_a_topic_level_is_refused_and_events_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config("ids");
    let root = "edge/ids";
    let file = write_config(dir.path(), &config);
    let (bridge, mut log) = start_bridge_with_log(&dir.path().join("data"), &file);
    let mut w = Watcher::connect(bridge.mqtt, root).await;
    let bad: Vec<_> = ["pump#3", "a/b", "x+y"]
        .iter()
        .map(|id| start_device(bridge.devices, id, &["echo"]))
        .collect();
    for id in ["pump#3", "a/b", "x+y"] {
        log.wait_for(Duration::from_secs(20), "the refusal", |l| {
            l.contains("not a valid MQTT topic level") && l.contains(&format!("{id:?}"))
        })
        .await;
    }
    let _good = start_device(bridge.devices, "dev-ok", &["echo"]);
    w.wait_device_online("dev-ok").await;
    for i in 0..20 {
        let task = format!(r#"{{"id":"t{i}","capability":"echo","payload":{i}}}"#);
        w.submit(root, &task).await;
    }
    w.wait_for(Duration::from_secs(30), "every task completed", |seen| {
        (0..20).all(|i| last_state(seen, &format!("t{i}")).as_deref() == Some("completed"))
    })
    .await;
    assert!(
        !w.seen.iter().any(|(t, _)| t.contains("/devices/pump")
            || t.contains("/devices/a/")
            || t.contains("/devices/x")),
        "no document for a refused device"
    );
    drop(bad);
}
