//! Fault injection with real processes: the bridge SIGKILLed 20 times at random moments while
//! 4 devices run tasks (some long), device links cut and held away through TCP proxies, devices
//! rebooted, mosquitto (the external broker) restarted, the data directory's disk (a tmpfs)
//! filled and freed, and the bridge's wall clock stepped hours forward and back (libfaketime). Afterwards every submitted task has exactly one terminal state, and no
//! device ran a handle twice in one boot (the devices' execution logs).
//!
//! The schedule comes from a seeded generator (`FAULT_SEED` to try another); every wait is
//! bounded, and the pauses between faults are the faults' timing, not synchronisation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use broker_config::{Config, StorageConfig};
use edge_bridge::backoff::SplitMix64;
use edge_tests::{
    Bridge, Proc, Proxy, Tmpfs, WallClock, Watcher, executions, external_config, fill, free_port,
    start_bridge_with_log_and, start_device_with, start_mosquitto_on, terminate, write_config,
};
use serde_json::{Value, json};

const ROOT: &str = "edge/faults";
const DEVICES: usize = 4;
const KILLS: usize = 20;
const BURST: usize = 12;
const MIB: u64 = 1 << 20;
const TERMINAL: [&str; 5] = ["completed", "failed", "expired", "cancelled", "rejected"];

struct Rig {
    dir: PathBuf,
    broker_dir: PathBuf,
    broker_port: u16,
    config_file: PathBuf,
    data: PathBuf,
    proxies: Vec<Proxy>,
    devices: Vec<Option<Proc>>,
    clock: WallClock,
}

impl Rig {
    /// The bridge, on the configured ports, on the stepped wall clock.
    fn bridge(&self) -> Bridge {
        start_bridge_with_log_and(&self.data, &self.config_file, |cmd| self.clock.apply(cmd)).0
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("dev-{i}.log"))
    }

    /// Starts device `i` (a new boot) behind its proxy.
    fn boot(&mut self, i: usize) {
        let log = self.log(i);
        let id = format!("dev-{i}");
        let proc = start_device_with(
            self.proxies[i].addr,
            &id,
            &["echo", "sleep"],
            &["--exec-log", log.to_str().unwrap()],
        );
        self.devices[i] = Some(proc);
    }

    fn reboot(&mut self, i: usize) {
        if let Some(mut old) = self.devices[i].take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        self.boot(i);
    }
}

fn terminal_states(w: &Watcher) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (topic, v) in &w.seen {
        let state = v["state"].as_str().unwrap_or("");
        if topic.ends_with("/status") && TERMINAL.contains(&state) {
            if let Some(id) = v["id"].as_str() {
                out.entry(id.to_owned())
                    .or_default()
                    .insert(state.to_owned());
            }
        }
    }
    out
}

/// A pause of `min..max` ms, as the schedule draws it.
async fn pause(rng: &mut SplitMix64, min: u64, max: u64) {
    let ms = min + rng.next_u64() % (max - min);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_ends_once_and_nothing_runs_twice_through_crashes_cuts_reboots_and_full_disks() {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xFA17_2026_u64);
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), 48);
    let broker_dir = dir.path().join("mosquitto");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker_port = free_port();
    let mut mosquitto = Some(start_mosquitto_on(&broker_dir, broker_port, true));
    let mut config = Config {
        data_dir: disk.path().join("data"),
        stats_interval: Duration::from_millis(500),
        storage: StorageConfig {
            min_free_bytes: 8 * MIB,
            reserve_bytes: 2 * MIB,
        },
        ..external_config("faults", broker_port)
    };
    // Devices kept away longer than this lose their tasks to others (and are told to cancel
    // them when they come back).
    config.queue.device_grace = Duration::from_secs(4);
    config.queue.max_attempts = 50;
    let config_file = write_config(dir.path(), &config);
    let mut rig = Rig {
        dir: dir.path().to_owned(),
        broker_dir,
        broker_port,
        config_file,
        data: disk.path().join("data"),
        proxies: Vec::new(),
        devices: (0..DEVICES).map(|_| None).collect(),
        clock: WallClock::new(dir.path()),
    };
    let mut bridge = rig.bridge();
    let link = bridge.devices;
    for _ in 0..DEVICES {
        rig.proxies.push(Proxy::start(link).await);
    }
    for i in 0..DEVICES {
        rig.boot(i);
    }
    let mut w = Watcher::connect_with(bridge.mqtt, ROOT, true).await;

    let mut submitted: Vec<String> = Vec::new();
    let submit_burst = |w: &Watcher, rng: &mut SplitMix64, submitted: &mut Vec<String>| {
        let mut tasks = Vec::new();
        for _ in 0..BURST {
            let n = submitted.len();
            let id = format!("f-{n}");
            let priority = rng.next_u64() % 6;
            let mut task = if rng.next_u64() % 10 < 3 {
                let ms = 200 + rng.next_u64() % 2_800;
                json!({"id": id, "capability": "sleep", "priority": priority, "payload": {"ms": ms}})
            } else {
                json!({"id": id, "capability": "echo", "priority": priority, "payload": {"n": n}})
            };
            // A deadline far beyond the test: only a clock step could expire it.
            if n % 4 == 0 {
                task["deadline_ms"] = json!(600_000);
            }
            tasks.push(task.to_string());
            submitted.push(id);
        }
        let client = w.client.clone();
        async move {
            for t in tasks {
                client
                    .publish(
                        format!("{ROOT}/tasks/submit"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        t.into_bytes(),
                    )
                    .await
                    .expect("publish");
            }
        }
    };

    let (mut kills, mut cuts, mut reboots, mut steps) = (0, 0, 0, 0);
    let (mut broker_restarted, mut disk_filled) = (false, false);
    let filler = disk.path().join("filler");
    let mut step = 0u64;
    let mut release_at: Vec<Option<u64>> = vec![None; DEVICES];
    while kills < KILLS {
        step += 1;
        submit_burst(&w, &mut rng, &mut submitted).await;
        pause(&mut rng, 200, 1_200).await;
        match rng.next_u64() % 10 {
            // A device's link cut; it is kept away for 1 to 4 steps (now and then beyond
            // the grace period).
            0..=2 => {
                let i = (rng.next_u64() % DEVICES as u64) as usize;
                rig.proxies[i].hold();
                rig.proxies[i].cut();
                release_at[i] = Some(step + 1 + rng.next_u64() % 4);
                cuts += 1;
            }
            3 => {
                let i = (rng.next_u64() % DEVICES as u64) as usize;
                rig.reboot(i);
                reboots += 1;
            }
            // The wall clock stepped, as NTP does on a board without a real-time clock: up to
            // 3 hours either way (deadlines here are all minutes long: a step must expire
            // none).
            4 | 5 => {
                let offset = (rng.next_u64() % 21_600) as i64 - 10_800;
                rig.clock.set_offset(offset);
                steps += 1;
            }
            _ => {}
        }
        for (i, at) in release_at.iter_mut().enumerate() {
            if *at == Some(step) {
                rig.proxies[i].release();
                *at = None;
            }
        }
        if step == 6 && !broker_restarted {
            terminate(mosquitto.take().unwrap());
            mosquitto = Some(start_mosquitto_on(&rig.broker_dir, rig.broker_port, true));
            broker_restarted = true;
        }
        if step == 10 && !disk_filled {
            // Less than the watermark left: new submissions are refused meanwhile.
            fill(&filler, 4 * MIB);
            submit_burst(&w, &mut rng, &mut submitted).await;
            pause(&mut rng, 1_000, 2_000).await;
            std::fs::remove_file(&filler).unwrap();
            disk_filled = true;
        }
        // The bridge SIGKILLed at a random moment, restarted on the same ports and data.
        if rng.next_u64() % 3 != 2 || step > 3 * KILLS as u64 {
            bridge.proc.child.kill().expect("kill");
            bridge.proc.child.wait().expect("reap");
            bridge = rig.bridge();
            kills += 1;
        }
    }
    for p in &rig.proxies {
        p.release();
    }
    let total = submitted.len();
    let all: HashSet<&String> = submitted.iter().collect();
    let ended = tokio::time::timeout(
        Duration::from_secs(180),
        w.wait_for(Duration::from_secs(600), "every task ended", |seen| {
            let mut done = HashSet::new();
            for (t, v) in seen {
                if t.ends_with("/status") && TERMINAL.contains(&v["state"].as_str().unwrap_or("")) {
                    if let Some(id) = v["id"].as_str() {
                        done.insert(id.to_owned());
                    }
                }
            }
            all.iter().all(|id| done.contains(id.as_str()))
        }),
    )
    .await;
    let finals = terminal_states(&w);
    if ended.is_err() {
        let missing: Vec<&String> = submitted
            .iter()
            .filter(|id| !finals.contains_key(id.as_str()))
            .take(10)
            .collect();
        let states = w.states();
        let first: Vec<(&String, Option<&Vec<Value>>)> = missing
            .iter()
            .map(|id| (*id, states.get(id.as_str())))
            .collect();
        panic!(
            "{} of {total} tasks never ended; the first: {first:#?}",
            total - finals.len()
        );
    }
    let expired: Vec<&String> = finals
        .iter()
        .filter(|(_, s)| s.contains("expired"))
        .map(|(id, _)| id)
        .collect();
    assert!(
        expired.is_empty(),
        "tasks expired though their deadlines are minutes away: {expired:?}"
    );
    let twice: Vec<(&String, &BTreeSet<String>)> =
        finals.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks with two terminal states: {twice:?}"
    );

    let mut executions_total = 0;
    for i in 0..DEVICES {
        let runs = executions(&rig.log(i));
        executions_total += runs.len();
        let distinct: HashSet<&(u32, u32)> = runs.iter().collect();
        assert_eq!(
            distinct.len(),
            runs.len(),
            "dev-{i} ran a handle twice in one boot"
        );
    }
    let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
    for s in finals.values() {
        *ends.entry(s.iter().next().unwrap().as_str()).or_default() += 1;
    }
    println!(
        "seed {seed:#x}: {total} tasks, {kills} bridge kills, {cuts} link cuts, {reboots} device reboots, {steps} wall-clock steps, broker restarted {broker_restarted}, disk filled {disk_filled}; ends {ends:?}; {executions_total} executions, none twice in a boot"
    );
    drop(mosquitto);
}
