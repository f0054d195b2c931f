//! Deterministic simulation of the whole system: the real engine (on its real queue file) and
//! several real device-core devices, over simulated links that lose, duplicate, corrupt and
//! reorder datagrams, with bridge crashes and device reboots — all from one seed, on a
//! simulated clock.
//!
//! The bridge side of each link is the link driver's job done by hand, as `link::stream` does
//! it: a `Session<BridgeSide>` per connection, its events handed to the engine, its commands
//! sent on the session, and nothing transmitted for an input until the turn's commit. A crash
//! drops the engine and every bridge session between handling a turn's inputs and committing
//! them, then reopens the queue from its file; the MQTT client resends whatever was not
//! acknowledged (as a broker redelivers an unacknowledged QoS 1 message).
//!
//! Checked: every submission ends in exactly one terminal state, reported at least once; no
//! handle runs twice on a device within a boot; every completed task has its own payload as
//! its result; a task that was to fail fails, one cancelled ends cancelled or finished first;
//! flow control is exact (no device refuses an `Assign` for want of a slot). The figures are
//! printed (`cargo test -p edge-bridge --test sim -- --nocapture`). `SIM_SEED=<n>` replays
//! another seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use device_core::Instant;
use device_core::link::{Config, Event, State, Stats};
use device_core::proto::{MAX_FRAME, Message, Preempt, Preemption, Reprioritize, TRANSIENT_ERROR};
use device_core::runtime::{Ctx, Device, Runtime, Step};
use edge_bridge::api::{StatusEvent, TaskState};
use edge_bridge::backoff::SplitMix64;
use edge_bridge::engine::{Engine, LinkInput, Retry, Ticket, Urgency};
use edge_bridge::link::stream::BridgeSession;
use edge_bridge::link::{LinkCommand, LinkId};
use edge_bridge::queue::Queue;
use edge_bridge::time::Now;

const TASKS: u32 = 2_000;
const DEVICES: usize = 3;
const SLOTS: usize = 4;
/// Percent chances per datagram.
const LOSS: u64 = 20;
const DUPLICATION: u64 = 10;
const CORRUPTION: u64 = 1;
/// One-way delay: 1 ms to this many, so datagrams overtake each other.
const MAX_DELAY_MS: u64 = 30;
/// Mean simulated time between bridge crashes, and between reboots of one device.
const CRASH_EVERY_MS: u64 = 4_000;
const REBOOT_EVERY_MS: u64 = 9_000;
/// Submissions arrive during this much simulated time.
const SUBMIT_FOR_MS: u64 = 16_000;

type Dev = Device<SLOTS, 1, 1, 8, 4>;

thread_local! {
    /// Which device runs a step now, and its boot: (device index, boot id).
    static RUNNING_ON: RefCell<(usize, u32)> = const { RefCell::new((0, 0)) };
    /// (device, boot, handle) -> executions started.
    static RUNS: RefCell<BTreeMap<(usize, u32, u32), u32>> = const { RefCell::new(BTreeMap::new()) };
    /// Tasks (by payload) whose transient failure already happened.
    static FAILED_ONCE: RefCell<BTreeSet<Vec<u8>>> = const { RefCell::new(BTreeSet::new()) };
}

/// The one capability: echoes its payload (`"n:mode:steps"`) after `steps` steps. Mode `t`
/// fails transiently on its first execution anywhere; `f` fails for good; `o` succeeds.
fn echo(ctx: &mut Ctx<'_>) -> Step {
    if ctx.step == 0 {
        let (device, boot) = RUNNING_ON.with(|r| *r.borrow());
        RUNS.with(|r| {
            *r.borrow_mut()
                .entry((device, boot, ctx.handle))
                .or_default() += 1;
        });
    }
    let text = ctx.payload;
    let inner = core::str::from_utf8(text).unwrap_or("").trim_matches('"');
    let mut parts = inner.split(':');
    let (_, mode, steps) = (parts.next(), parts.next(), parts.next());
    let steps: u32 = steps.and_then(|n| n.parse().ok()).unwrap_or(1);
    if ctx.step + 1 < steps {
        return Step::Continue;
    }
    if mode == Some("t") && FAILED_ONCE.with(|f| f.borrow_mut().insert(text.to_vec())) {
        return Step::Fail(TRANSIENT_ERROR);
    }
    if mode == Some("f") {
        return Step::Fail(7);
    }
    ctx.result.extend_from_slice(text).unwrap();
    Step::Done
}

/// One direction of a link: datagrams with delivery times.
#[derive(Default)]
struct Channel {
    in_flight: Vec<(u64, u64, Vec<u8>)>,
    order: u64,
}

#[derive(Default, Debug)]
struct Figures {
    datagrams: u64,
    lost: u64,
    duplicated: u64,
    corrupted: u64,
    crashes: u64,
    reboots: u64,
    resubmitted: u64,
    /// Crashes between a turn's inputs and its commit (the others: after the commit).
    crashes_before_commit: u64,
    turns: u64,
    events: u64,
    events_again: u64,
    refused: u64,
    bridge_sessions: u64,
    /// Take-backs the engine asked for, and tasks devices gave back.
    take_backs_asked: u64,
    given_back: u64,
    /// Of those, started tasks given back with a checkpoint (resumed where they stopped).
    with_checkpoint: u64,
    /// Counters of sessions replaced (crashes, reboots, closed connections).
    retired: Vec<Stats>,
    /// Refusals by devices, by reason: only `Finished` and `Started` expected (see the end of
    /// the test).
    rejects: BTreeMap<String, u64>,
}

impl Channel {
    fn send(&mut self, rng: &mut SplitMix64, f: &mut Figures, now: u64, bytes: &[u8]) {
        f.datagrams += 1;
        if chance(rng, LOSS) {
            f.lost += 1;
            return;
        }
        let copies = if chance(rng, DUPLICATION) { 2 } else { 1 };
        f.duplicated += copies - 1;
        for _ in 0..copies {
            let mut b = bytes.to_vec();
            if chance(rng, CORRUPTION) {
                let i = (rng.next_u64() % b.len() as u64) as usize;
                b[i] ^= 1 << (rng.next_u64() % 8);
                f.corrupted += 1;
            }
            self.order += 1;
            let at = now + 1 + rng.next_u64() % MAX_DELAY_MS;
            self.in_flight.push((at, self.order, b));
        }
    }

    fn due(&mut self, now: u64) -> Vec<Vec<u8>> {
        let (mut due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|d| d.0 <= now);
        self.in_flight = later;
        due.sort_by_key(|d| (d.0, d.1));
        due.into_iter().map(|d| d.2).collect()
    }
}

fn chance(rng: &mut SplitMix64, percent: u64) -> bool {
    rng.next_u64() % 100 < percent
}

/// A device with its end of the link.
struct SimDevice {
    dev: Dev,
    boot: u32,
    to_bridge: Channel,
    to_device: Channel,
}

fn boot_device(index: usize, boot: u32, now: u64) -> Dev {
    let mut rt = Runtime::new();
    // Resumable: a started task taken back for urgent work resumes from its checkpoint.
    rt.register_with("echo", echo, Preemption::Resume).unwrap();
    let id = format!("dev-{index}");
    Dev::new(&id, boot, rt, Config::default(), Instant::from_millis(now)).unwrap()
}

/// The bridge's end of one device's link: the current connection's session.
struct BridgeLink {
    id: LinkId,
    session: BridgeSession,
    /// The credit last told to the engine, with the `Assign`s taken when it was counted.
    credit_told: Option<(u8, u64)>,
    /// `Assign` commands this connection took (sent or refused).
    taken: u64,
}

/// What a client asked for, and what it has seen.
#[derive(Default)]
struct Client {
    /// Submissions not acknowledged yet, by ticket: resent after a crash.
    unacked: BTreeMap<Ticket, (String, Vec<u8>)>,
    /// Cancels not acknowledged yet, by ticket.
    unacked_cancels: BTreeMap<Ticket, String>,
    /// Every status event seen, per task.
    events: BTreeMap<String, Vec<StatusEvent>>,
    next_ticket: Ticket,
}

impl Client {
    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }
}

/// The whole system.
struct World {
    rng: SplitMix64,
    dir: tempfile::TempDir,
    engine: Engine,
    devices: Vec<SimDevice>,
    links: Vec<BridgeLink>,
    next_link: LinkId,
    client: Client,
    f: Figures,
}

/// Urgent work: no slot kept for it (reservation has its own tests), so that an urgent task
/// finds every slot full and takes back a task not started yet.
fn urgency() -> Urgency {
    Urgency {
        reserve: 0,
        ..Urgency::default()
    }
}

fn retry() -> Retry {
    Retry::new(6, Duration::from_millis(50), Duration::from_secs(1))
}

impl World {
    fn new_link(next_link: &mut LinkId, f: &mut Figures, now: u64) -> BridgeLink {
        *next_link += 1;
        f.bridge_sessions += 1;
        BridgeLink {
            id: *next_link,
            session: BridgeSession::bridge(Config::default(), Instant::from_millis(now)),
            credit_told: None,
            taken: 0,
        }
    }

    /// The bridge process dies (staged changes and its sessions with it) and starts again on
    /// its queue file. The client resends what was not acknowledged.
    fn crash(&mut self, now: u64) {
        self.f.crashes += 1;
        let stand_in = tempfile::tempdir().unwrap();
        self.engine = Engine::new(Queue::open(stand_in.path(), 1).unwrap(), retry(), 0);
        let queue = Queue::open(self.dir.path(), 100_000).unwrap();
        self.engine = Engine::new(queue, retry(), self.rng.next_u64());
        self.engine.set_urgency(urgency());
        for link in &mut self.links {
            self.f.retired.push(link.session.stats());
            *link = Self::new_link(&mut self.next_link, &mut self.f, now);
        }
        let t = Now::at(now);
        let unacked: Vec<(String, Vec<u8>)> = std::mem::take(&mut self.client.unacked)
            .into_values()
            .collect();
        for (id, payload) in unacked {
            self.f.resubmitted += 1;
            let ticket = self.client.ticket();
            self.client.unacked.insert(ticket, (id, payload.clone()));
            self.engine
                .handle_submissions(vec![(payload, ticket)], t)
                .unwrap();
        }
        let cancels: Vec<String> = std::mem::take(&mut self.client.unacked_cancels)
            .into_values()
            .collect();
        for id in cancels {
            let ticket = self.client.ticket();
            self.client.unacked_cancels.insert(ticket, id.clone());
            self.engine.handle_cancel(&id, ticket, t).unwrap();
        }
    }

    /// Session events of device `i`'s link, handed to the engine as the link driver does.
    fn on_session_event(&mut self, i: usize, event: Event, t: Now) {
        let link = self.links[i].id;
        let input = match event {
            Event::Connected { hello, rebooted } => {
                let credit = self.links[i].session.credit();
                self.links[i].credit_told = Some((credit, self.links[i].taken));
                LinkInput::Up {
                    peer: format!("sim-{i}"),
                    hello,
                    rebooted,
                    credit,
                    credential: None,
                }
            }
            Event::Received(Message::Report(report)) => LinkInput::Report {
                report,
                ticket: self.client.ticket(),
            },
            Event::Received(Message::Reject(reject)) => {
                *self
                    .f
                    .rejects
                    .entry(format!("{:?}", reject.reason))
                    .or_default() += 1;
                LinkInput::Reject {
                    reject,
                    ticket: self.client.ticket(),
                }
            }
            Event::Received(Message::Suspended(suspended)) => {
                self.f.given_back += 1;
                if suspended.steps > 0 {
                    self.f.with_checkpoint += 1;
                }
                LinkInput::Suspended {
                    handle: suspended.handle,
                    checkpoint: edge_bridge::link::checkpoint_of(&suspended),
                    ticket: self.client.ticket(),
                }
            }
            Event::PeerLost => LinkInput::Down {
                reason: "peer silent".into(),
            },
            Event::Received(_) | Event::Welcomed => return,
        };
        self.engine.handle_link(link, input, t);
    }

    fn tick(&mut self, now: u64, submissions: &[(String, Vec<u8>)], cancels: &[String]) {
        let t = Now::at(now);
        let at = Instant::from_millis(now);
        let mut buf = [0u8; MAX_FRAME];

        // Clients.
        if !submissions.is_empty() {
            let mut batch = Vec::new();
            for (id, payload) in submissions {
                let ticket = self.client.ticket();
                self.client
                    .unacked
                    .insert(ticket, (id.clone(), payload.clone()));
                batch.push((payload.clone(), ticket));
            }
            self.engine.handle_submissions(batch, t).unwrap();
        }
        for id in cancels {
            let ticket = self.client.ticket();
            self.client.unacked_cancels.insert(ticket, id.clone());
            self.engine.handle_cancel(id, ticket, t).unwrap();
        }

        // Devices.
        for (i, d) in self.devices.iter_mut().enumerate() {
            if chance_per_ms(&mut self.rng, REBOOT_EVERY_MS) {
                self.f.reboots += 1;
                self.f.retired.push(d.dev.session().stats());
                d.boot += 1;
                d.dev = boot_device(i, d.boot, now);
            }
            RUNNING_ON.with(|r| *r.borrow_mut() = (i, d.boot));
            for bytes in d.to_device.due(now) {
                let _ = d.dev.handle_bytes(&bytes, at);
            }
            if d.dev.poll_timeout().is_some_and(|w| w <= at) {
                d.dev.handle_timeout(at);
            }
            for _ in 0..4 {
                if !d.dev.step(at) {
                    break;
                }
            }
            while let Some(n) = d.dev.poll_transmit(at, &mut buf) {
                d.to_bridge.send(&mut self.rng, &mut self.f, now, &buf[..n]);
            }
        }

        // The bridge's links: what arrived, timers, credit.
        for i in 0..DEVICES {
            for bytes in self.devices[i].to_bridge.due(now) {
                let first = self.links[i]
                    .session
                    .handle_bytes(&bytes, at)
                    .ok()
                    .flatten();
                let mut events: Vec<Event> = first.into_iter().collect();
                while let Some(e) = self.links[i].session.poll_event() {
                    events.push(e);
                }
                for e in events {
                    self.on_session_event(i, e, t);
                }
            }
            if self.links[i]
                .session
                .poll_timeout()
                .is_some_and(|w| w <= at)
            {
                if let Some(e) = self.links[i].session.handle_timeout(at) {
                    self.on_session_event(i, e, t);
                }
            }
            if self.links[i].session.state() == State::Closed {
                self.f.retired.push(self.links[i].session.stats());
                self.links[i] = Self::new_link(&mut self.next_link, &mut self.f, now);
            }
            let link = &mut self.links[i];
            let counted = (link.session.credit(), link.taken);
            if link.session.state() == State::Established && link.credit_told != Some(counted) {
                link.credit_told = Some(counted);
                let (credit, taken) = counted;
                self.engine
                    .handle_link(link.id, LinkInput::Credit { credit, taken }, t);
            }
        }

        // A crash between handling the inputs and committing them (more likely while clients
        // submit, so that resent submissions are exercised).
        let busy = !submissions.is_empty() || !cancels.is_empty();
        if chance_per_ms(&mut self.rng, CRASH_EVERY_MS) || busy && chance(&mut self.rng, 1) {
            self.f.crashes_before_commit += 1;
            self.crash(now);
            return;
        }

        // The turn's end: dispatch, commit, then tell.
        self.engine.dispatch(t);
        let released = self.engine.commit().unwrap();
        self.f.turns += 1;
        // A crash after the commit, before anything it released was told: the clients resend
        // what they were not told of, and are answered as duplicates.
        if busy && chance(&mut self.rng, 1) {
            self.crash(now);
            return;
        }
        for ticket in released.tickets {
            self.client.unacked.remove(&ticket);
            self.client.unacked_cancels.remove(&ticket);
        }
        for (link, command) in released.commands {
            let Some(i) = self.links.iter().position(|l| l.id == link) else {
                continue; // a connection that has ended: its tasks come back by `Down`
            };
            let message = match command {
                LinkCommand::Assign(a) => {
                    self.links[i].taken += 1;
                    Message::Assign(*a)
                }
                LinkCommand::Replay(a) => {
                    self.links[i].taken += 1;
                    let _ = self.links[i].session.resend(Message::Assign(*a));
                    continue;
                }
                LinkCommand::Cancel(c) => Message::Cancel(c),
                LinkCommand::Restore { handle, checkpoint } => {
                    match edge_bridge::link::restore_of(handle, &checkpoint) {
                        Some(restore) => Message::Restore(restore),
                        None => continue,
                    }
                }
                LinkCommand::Preempt { handle } => {
                    self.f.take_backs_asked += 1;
                    Message::Preempt(Preempt { handle })
                }
                LinkCommand::Reprioritize { handle, priority } => {
                    Message::Reprioritize(Reprioritize { handle, priority })
                }
                LinkCommand::Close => {
                    self.engine.handle_link(
                        link,
                        LinkInput::Down {
                            reason: "closed".into(),
                        },
                        t,
                    );
                    self.links[i] = Self::new_link(&mut self.next_link, &mut self.f, now);
                    continue;
                }
            };
            if let Err(e) = self.links[i].session.send(message) {
                match e.message {
                    Message::Assign(a) => {
                        self.f.refused += 1;
                        self.engine
                            .handle_link(link, LinkInput::Refused { handle: a.handle }, t);
                    }
                    Message::Preempt(p) => {
                        let input = LinkInput::PreemptNotSent { handle: p.handle };
                        self.engine.handle_link(link, input, t);
                    }
                    _ => {}
                }
            }
        }
        for (i, link) in self.links.iter_mut().enumerate() {
            while let Some(n) = link.session.poll_transmit(at, &mut buf) {
                self.devices[i]
                    .to_device
                    .send(&mut self.rng, &mut self.f, now, &buf[..n]);
            }
        }

        // The MQTT driver: publish what the outbox holds; the broker acknowledges it.
        let outbox = self.engine.queue().outbox(10_000).unwrap();
        let keys: Vec<u64> = outbox.iter().map(|(k, _)| *k).collect();
        for (_, entry) in outbox {
            if let Some(id) = entry
                .subtopic
                .strip_prefix("tasks/")
                .and_then(|s| s.strip_suffix("/status"))
            {
                let event: StatusEvent = serde_json::from_str(&entry.payload).unwrap();
                self.f.events += 1;
                self.client
                    .events
                    .entry(id.to_owned())
                    .or_default()
                    .push(event);
            }
        }
        self.engine.handle_published(&keys);
    }

    /// Whether every submission has a terminal event.
    fn all_ended(&self, submitted: usize) -> bool {
        self.client.events.len() == submitted
            && self
                .client
                .events
                .values()
                .all(|evs| evs.iter().any(|e| e.state.is_terminal()))
    }
}

/// A random event that happens on average once every `every_ms` milliseconds.
fn chance_per_ms(rng: &mut SplitMix64, every_ms: u64) -> bool {
    rng.next_u64() % every_ms == 0
}

#[test]
fn every_task_ends_once_through_loss_crashes_and_reboots() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026);
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut f = Figures::default();
    let mut next_link = 0;
    let mut engine = Engine::new(Queue::open(dir.path(), 100_000).unwrap(), retry(), seed);
    engine.set_urgency(urgency());
    let devices = (0..DEVICES)
        .map(|i| SimDevice {
            dev: boot_device(i, 1, 0),
            boot: 1,
            to_bridge: Channel::default(),
            to_device: Channel::default(),
        })
        .collect();
    let links = (0..DEVICES)
        .map(|_| World::new_link(&mut next_link, &mut f, 0))
        .collect();
    let mut w = World {
        rng: SplitMix64::new(seed),
        dir,
        engine,
        devices,
        links,
        next_link,
        client: Client::default(),
        f,
    };

    // What each task is meant to do, decided up front from the seed.
    let mut plan = SplitMix64::new(seed ^ 0xA5A5);
    let mut schedule: BTreeMap<u64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut cancel_at: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut meant: BTreeMap<String, (char, String)> = BTreeMap::new();
    for n in 0..TASKS {
        let id = format!("t{n}");
        let mode = match plan.next_u64() % 100 {
            0..5 => 't',
            5..7 => 'f',
            _ => 'o',
        };
        let at = plan.next_u64() % SUBMIT_FOR_MS;
        // A few urgent tasks (P0, P1) among mostly low-priority work, as in the incident.
        let priority = if plan.next_u64() % 100 < 8 {
            plan.next_u64() % 2
        } else {
            2 + plan.next_u64() % 4
        };
        // Urgent work is short; low-priority work is long enough to fill slots with tasks
        // not started yet, which urgent tasks then take back.
        let steps = if priority <= 1 {
            1 + plan.next_u64() % 3
        } else {
            10 + plan.next_u64() % 60
        };
        let payload = format!("{n}:{mode}:{steps}");
        let mut task = serde_json::json!({
            "id": id,
            "capability": "echo",
            "priority": priority,
            "payload": payload,
        });
        if plan.next_u64() % 100 < 5 {
            task["deadline_ms"] = (20 + plan.next_u64() % 500).into();
        }
        if plan.next_u64() % 100 < 10 {
            task["device"] = format!("dev-{}", plan.next_u64() % DEVICES as u64).into();
        }
        if plan.next_u64() % 100 < 3 {
            cancel_at
                .entry(at + plan.next_u64() % 300)
                .or_default()
                .push(id.clone());
        }
        meant.insert(id.clone(), (mode, payload));
        schedule
            .entry(at)
            .or_default()
            .push((id, task.to_string().into_bytes()));
    }

    let mut now = 0u64;
    while !w.all_ended(TASKS as usize) {
        now += 1;
        assert!(now < 600_000, "not finished after 10 simulated minutes");
        let subs = schedule.remove(&now).unwrap_or_default();
        let cancels = cancel_at.remove(&now).unwrap_or_default();
        w.tick(now, &subs, &cancels);
    }

    // Every submission ends in exactly one terminal state.
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    for (id, events) in &w.client.events {
        let mut terminal: Vec<TaskState> = events
            .iter()
            .filter(|e| e.state.is_terminal())
            .map(|e| e.state)
            .collect();
        terminal.dedup();
        assert_eq!(terminal.len(), 1, "{id} ended in {terminal:?}: {events:#?}");
        let end = terminal[0];
        *ends.entry(format!("{end:?}")).or_default() += 1;
        let last = events.iter().rfind(|e| e.state.is_terminal()).unwrap();
        let (mode, payload) = &meant[id];
        match (*mode, end) {
            (_, TaskState::Completed) => {
                assert_ne!(*mode, 'f', "{id} was to fail");
                let want = serde_json::Value::String(payload.clone());
                assert_eq!(
                    last.result.as_ref(),
                    Some(&want),
                    "{id}: another task's result"
                );
            }
            ('f', TaskState::Failed) | (_, TaskState::Expired | TaskState::Cancelled) => {}
            (_, TaskState::Failed) => {
                let code = last.error.as_ref().map(|e| e.code);
                assert_eq!(
                    code,
                    Some(edge_bridge::api::ErrorCode::AttemptsExhausted),
                    "{id} failed: {last:?}"
                );
            }
            (m, s) => panic!("{id} ({m}) ended {s:?}: {events:#?}"),
        }
    }
    assert_eq!(
        w.client.events.len(),
        TASKS as usize,
        "a submission has no event at all"
    );

    // No handle runs twice on a device within a boot.
    let runs = RUNS.with(|r| r.borrow().clone());
    for (&(device, boot, handle), &n) in &runs {
        assert_eq!(
            n, 1,
            "handle {handle} ran {n} times on dev-{device} in boot {boot}"
        );
    }
    let executions: u64 = runs.values().map(|&n| u64::from(n)).sum();
    w.f.events_again = w
        .client
        .events
        .values()
        .map(|evs| evs.iter().filter(|e| e.state.is_terminal()).count() as u64 - 1)
        .sum();

    let f = &w.f;
    println!(
        "seed {seed:#x}: {TASKS} tasks, {DEVICES} devices of {SLOTS} slots, {:.1} s simulated in {:.1} s",
        now as f64 / 1000.0,
        started.elapsed().as_secs_f64()
    );
    println!(
        "links: loss {LOSS} %, duplication {DUPLICATION} %, corruption {CORRUPTION} %, delay 1-{MAX_DELAY_MS} ms; {} datagrams, {} lost, {} duplicated, {} corrupted",
        f.datagrams, f.lost, f.duplicated, f.corrupted
    );
    println!(
        "faults: {} bridge crashes ({} before a commit, the others after it, before telling), {} device reboots, {} submissions resent after a crash, {} bridge sessions",
        f.crashes, f.crashes_before_commit, f.reboots, f.resubmitted, f.bridge_sessions
    );
    let mut sessions = w.f.retired.clone();
    sessions.extend(w.devices.iter().map(|d| d.dev.session().stats()));
    sessions.extend(w.links.iter().map(|l| l.session.stats()));
    let sum =
        |field: fn(&Stats) -> u32| -> u64 { sessions.iter().map(|s| u64::from(field(s))).sum() };
    println!(
        "sessions: {} messages sent, {} retransmitted, {} duplicates dropped, {} reordered, {} bad frames",
        sum(|s| s.sent),
        sum(|s| s.retransmitted),
        sum(|s| s.duplicates),
        sum(|s| s.reordered),
        sum(|s| s.bad_frames)
    );
    println!(
        "ends: {ends:?}; terminal events published again: {}",
        f.events_again
    );
    println!(
        "{} executions, at most once per handle and boot; {} turns; {} status events; {} Assigns refused by a session",
        executions, f.turns, f.events, f.refused
    );
    println!(
        "take-backs: {} asked, {} tasks given back ({} started, with a checkpoint); refusals by devices: {:?}",
        f.take_backs_asked, f.given_back, f.with_checkpoint, f.rejects
    );
    assert!(
        f.crashes > 0 && f.reboots > 0 && f.lost > 0,
        "the faults did not happen"
    );
    // A replayed Assign of a handle that finished (a datagram of a dead session arriving late)
    // is refused by the device's dedup table, `Finished`, and runs nothing: expected. Any
    // other refusal means the bridge sent what a device could not take.
    // `Started` answers a take-back that came after the task's first step: it runs on.
    // `UnknownTask` answers a `Cancel` of an execution the device never received (its
    // `Assign` was lost with a link, and the task moved on or was cancelled meanwhile).
    let unexpected: Vec<_> = f
        .rejects
        .keys()
        .filter(|r| !["Finished", "Started", "UnknownTask"].contains(&r.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "devices refused Assigns: {:?}",
        f.rejects
    );
}
