//! A device that advertises free slots and refuses every task (`Reject(NoFreeSlot)`) cannot
//! drive a dispatch loop (review M6): each refusal costs the task an attempt and its retry
//! delay, so the task is dispatched once per attempt and then fails `attempts_exhausted`,
//! instead of going back and forth (one durable commit and one event each time) for ever.
//! The device is the tests' rogue device, over plain TCP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use edge_tests::rogue::{Rogue, hello};
use edge_tests::{Watcher, embedded_config, last_state, start_bridge_with_config};

const ROOT: &str = "edge/refusing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_refusing_every_task_costs_attempts_not_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("refusing");
    config.queue.max_attempts = 3;
    config.queue.retry_initial = Duration::from_millis(200);
    config.queue.retry_max = Duration::from_millis(400);
    let bridge = start_bridge_with_config(dir.path(), &config);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;

    let mut rogue = Rogue::tcp(bridge.devices).await.expect("connect");
    rogue
        .open(hello("liar-1", 8), Duration::from_secs(10))
        .await
        .expect("a session");
    let assigns = Arc::new(AtomicU32::new(0));
    let counted = assigns.clone();
    let refusing = tokio::spawn(async move { rogue.refuse_assigns(8, counted).await });
    w.wait_device_online("liar-1").await;

    w.submit(ROOT, r#"{"id":"t","capability":"echo"}"#).await;
    w.wait_for(Duration::from_secs(30), "the task failed", |seen| {
        last_state(seen, "t").as_deref() == Some("failed")
    })
    .await;
    let events = &w.states()["t"];
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "attempts_exhausted", "{last}");
    let dispatched = events.iter().filter(|e| e["state"] == "dispatched").count();
    assert_eq!(dispatched, 3, "one dispatch per attempt: {events:#?}");
    assert_eq!(assigns.load(Ordering::SeqCst), 3, "Assigns the device saw");
    refusing.abort();
}
