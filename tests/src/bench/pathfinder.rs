//! Phase 8: Mars Pathfinder across devices (README, "edge-bridge: resources shared across
//! devices").
//!
//! Two devices: `dev-a` offers only `count`, `dev-b` only `sleep`, so each task's capability
//! fixes its device. A round: a P4 `count` of `--pathfinder-steps` steps naming the bridge
//! resource `bus-x` starts on dev-a; `--pathfinder-flood` P2 `count` tasks of as many steps
//! arrive on dev-a, which runs the most urgent ready task at every step, so the holder stops;
//! then a P0 `sleep` for dev-b names `bus-x` and waits for it. The next round starts when every
//! task of this one has ended. `--pathfinder-rounds` rounds per bridge, on two fresh bridges:
//! inheritance off, then on (`[urgent] reserve = 0, max_preemptions = 0` in both, so that only
//! inheritance differs). Figures per bridge: the P0's blocking time (submit → `running`), its
//! submit → `completed`, and the holder's work left when the P0 arrived.

use std::path::Path;
use std::time::{Duration, Instant};

use broker_config::{Config, ResourceConfig, UrgentConfig};

use super::client::Client;
use super::report::PathfinderFigures;
use super::stats::{Latencies, Progress};
use super::tasks::{self, Batch, Observer};
use super::{BenchError, Options};

/// The resource the holder and the P0 name.
const RESOURCE: &str = "bus-x";
/// The holder's and the flood's device, and the P0's.
const SHARED_DEVICE: &str = "dev-a";
const URGENT_DEVICE: &str = "dev-b";
/// Slots of an `edge-device-sim`: the holder and the flood must all be on dev-a at once.
pub(super) const SLOTS: usize = 8;
/// How long the P0 sleeps on dev-b: long enough that its `running` event is sent.
const URGENT_MS: u64 = 20;

/// The three kinds of task of a round, fed by one observer.
struct Scenario {
    holders: Batch,
    flood: Batch,
    urgent: Batch,
}

impl Scenario {
    /// Feeds status events to the batches until `done` holds.
    async fn wait(
        &mut self,
        observer: &mut Observer,
        phase: &'static str,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), BenchError> {
        while !done(self) {
            let batches = &mut [&mut self.holders, &mut self.flood, &mut self.urgent];
            observer
                .next(batches, phase, deadline, || format!("waiting for {what}"))
                .await?;
        }
        Ok(())
    }

    fn outstanding(&self) -> usize {
        self.holders.outstanding() + self.flood.outstanding() + self.urgent.outstanding()
    }
}

/// One bridge's rounds, with inheritance for `bus-x` on or off.
pub(crate) async fn run(
    data_dir: &Path,
    opts: &Options,
    nonce: &str,
    inheritance: bool,
) -> Result<PathfinderFigures, BenchError> {
    let phase: &'static str = if inheritance {
        "pathfinder-on"
    } else {
        "pathfinder-off"
    };
    let tag = if inheritance { "on" } else { "off" };
    let progress = Progress::new(phase);
    let deadline = Instant::now() + opts.phase_timeout();
    let dir = data_dir.join(format!("bridge-{phase}"));
    let bridge = tasks::start_configured(&dir, &config(inheritance))?;
    // A round's tasks, all outstanding at once at most.
    let window = opts.pathfinder_flood + 2;
    let mut observer =
        Observer::connect(&bridge, &format!("bench-watcher-{nonce}-p{tag}"), window).await?;
    let submitter = Client::connect(
        bridge.mqtt,
        &format!("bench-submitter-{nonce}-p{tag}"),
        window,
        &[],
    )
    .await?;
    let devices = [
        crate::start_device(bridge.devices, SHARED_DEVICE, &["count"]),
        crate::start_device(bridge.devices, URGENT_DEVICE, &["sleep"]),
    ];
    let mut s = Scenario {
        holders: Batch::new(format!("f{nonce}{tag}-holder-")),
        flood: Batch::new(format!("f{nonce}{tag}-flood-")),
        urgent: Batch::new(format!("f{nonce}{tag}-p0-")),
    };
    let ids = [SHARED_DEVICE.to_owned(), URGENT_DEVICE.to_owned()];
    observer
        .wait_online(
            &ids,
            &mut [&mut s.holders, &mut s.flood, &mut s.urgent],
            phase,
            deadline,
        )
        .await?;
    let steps = opts.pathfinder_steps;
    progress.say(&format!(
        "inheritance {tag}: {} rounds of a P4 holder of {RESOURCE}, {} P2 of {steps} steps, a P0",
        opts.pathfinder_rounds, opts.pathfinder_flood
    ));

    let topic = tasks::submit_topic();
    let count = format!(r#"{{"steps":{steps}}}"#);
    let sleep = format!(r#"{{"ms":{URGENT_MS}}}"#);
    let mut holder_left = Vec::new();
    let mut holder_done_first = 0;
    let start = Instant::now();
    for round in 0..opts.pathfinder_rounds {
        let h = s.holders.len();
        let holder = s.holders.submit_naming(4, "count", &count, &[RESOURCE]);
        submitter.publish(&topic, holder).await?;
        s.wait(&mut observer, phase, deadline, "the holder running", |s| {
            let t = &s.holders.tasks[h];
            t.running.is_some() || t.end.is_some()
        })
        .await?;

        let f = s.flood.len();
        for _ in 0..opts.pathfinder_flood {
            submitter
                .publish(&topic, s.flood.submit_task(2, "count", &count))
                .await?;
        }
        // The flood has taken dev-a: all of it there, one of them running, so the holder
        // makes no progress until the flood is done or the holder is raised.
        s.wait(&mut observer, phase, deadline, "the flood on dev-a", |s| {
            let flood = &s.flood.tasks[f..];
            flood
                .iter()
                .all(|t| t.dispatched.is_some() || t.end.is_some())
                && flood.iter().any(|t| t.running.is_some() || t.end.is_some())
        })
        .await?;

        let holder = &s.holders.tasks[h];
        if holder.end.is_some() {
            holder_done_first += 1;
            holder_left.push(0);
        } else if let Some(ran) = holder.running {
            let flood_ran = s.flood.tasks[f..].iter().filter_map(|t| t.running).min();
            let alone = flood_ran.map_or(Duration::ZERO, |at| at.saturating_duration_since(ran));
            holder_left.push(steps.saturating_sub(alone.as_millis() as u64));
        }
        let urgent = s.urgent.submit_naming(0, "sleep", &sleep, &[RESOURCE]);
        submitter.publish(&topic, urgent).await?;
        s.wait(&mut observer, phase, deadline, "the round's end", |s| {
            s.outstanding() == 0
        })
        .await?;
        progress.say(&format!(
            "round {} of {}: P0 blocked {:?}",
            round + 1,
            opts.pathfinder_rounds,
            s.urgent.tasks[round]
                .running
                .map(|at| at.duration_since(s.urgent.tasks[round].submitted))
        ));
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(devices);
    drop(bridge);

    let mut blocked = Latencies::default();
    for t in &s.urgent.tasks {
        if let Some(at) = t.running {
            blocked.push(at.duration_since(t.submitted));
        }
    }
    blocked.finish();
    // The P0 of a round is submitted after its holder, and there is one of each per round.
    let mut holder_after = Latencies::default();
    for (holder, p0) in s.holders.tasks.iter().zip(&s.urgent.tasks) {
        if let Some(end) = holder.end.filter(|e| e.completed) {
            holder_after.push(end.at.saturating_duration_since(p0.submitted));
        }
    }
    holder_after.finish();
    let batches = [&s.holders, &s.flood, &s.urgent];
    Ok(PathfinderFigures {
        inheritance,
        rounds: opts.pathfinder_rounds,
        flood: opts.pathfinder_flood,
        steps,
        submitted: batches.iter().map(|b| b.len()).sum(),
        completed: batches.iter().map(|b| b.completed).sum(),
        p0_completed: s.urgent.completed,
        blocked,
        p0_done: s.urgent.latencies(|_| true),
        holder_left,
        holder_after,
        holder_done_first,
        seconds,
        failed: batches.iter().map(|b| b.failed).sum(),
        failures: batches
            .iter()
            .flat_map(|b| &b.failures)
            .take(5)
            .cloned()
            .collect(),
    })
}

/// The bridge of one run: `bus-x` declared with inheritance on or off, and the urgent-work
/// protocol off (no reserved slot, no taking back), so that the two runs differ in
/// inheritance alone.
fn config(inheritance: bool) -> Config {
    Config {
        bridge_id: tasks::BRIDGE_ID.into(),
        urgent: UrgentConfig {
            reserve: 0,
            max_preemptions: 0,
            ..UrgentConfig::default()
        },
        resources: vec![ResourceConfig {
            name: RESOURCE.into(),
            ceiling: None,
            inheritance,
        }],
        ..Config::default()
    }
}
