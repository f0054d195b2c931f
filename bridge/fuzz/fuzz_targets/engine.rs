//! The engine over a real queue (redb, on tmpfs when there is one), fed an arbitrary sequence
//! of what its callers hand it: submissions (well-formed, of every capability, priority,
//! device, deadline, lease, lock and resource, alone or in batches, or any bytes), cancels
//! (of known ids or any topic level), device sessions opening (any capabilities, locks,
//! slots, credit, protocol version, boot id) and ending, credit reports, and device messages
//! (reports of every kind, refusals, give-backs) about the handles the links were sent or any
//! handle from any link, time moving (up to 50 days at a step), dispatch, commit, the broker
//! acknowledging the outbox, and restarts (the engine dropped with whatever it had staged, and
//! opened again over the same queue).
//!
//! After every step:
//! - Nothing panics.
//! - Every live task is in exactly one place: queued (once, in its lane, counted in its
//!   priority's depth), or on exactly one device (dispatched or running, with the boot it was
//!   dispatched under and an execution lease); its handle finds it and no other task.
//! - A bridge resource is held by at most one task.
//! - A task that finished (or an id cancelled before it was seen) never becomes live again.
//! - The devices the engine holds online are exactly those the link events leave online, each
//!   on its link; none is counted more credit than its free slots (`slots` less its tasks).
//! - A link is never sent more `Assign`s than it last said it could take.
//!
//! After every dispatch: no queued task is past its deadline, no task on a device past its
//! lease, and the engine's wake-up is in the future and no later than the earliest deadline,
//! retry delay or lease of its tasks.
//!
//! After every commit: it releases exactly the tickets handed in since the last one, in
//! order; every `Assign` goes to the link of the device its task was dispatched to, and that
//! device can run it (capability, device named, payload size, locks); every event is on a
//! publishable topic, and a finished task's status topic never gets a non-terminal event.
//!
//! After every restart: the live tasks are exactly those of the last commit, field for field.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use broker_config::Ceiling;
use device_core::Priority;
use device_core::proto::{DeviceId, Hello, Payload, Reject, RejectReason, Report, TaskReport};
use edge_bridge::api::{StatusEvent, TaskState};
use edge_bridge::engine::{
    Engine, Leases, LinkInput, Released, ResourcePolicy, Retry, Ticket, Urgency,
};
use edge_bridge::link::{LinkCommand, LinkId};
use edge_bridge::queue::{Checkpoint, Queue, TaskRecord, outbox_key};
use edge_bridge::time::Now;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// Steps of one input at most, so that one input never takes long (tests/run.sh passes inputs
/// of up to 1 KiB: about a hundred steps).
const MAX_OPS: usize = 256;
/// Task ids submissions and cancels use: few, so that they meet (duplicates, conflicts,
/// cancels of live and finished tasks).
const IDS: u8 = 12;
const CAPABILITIES: [&str; 4] = ["echo", "slow", "again", "rare"];
const DEVICES: [&str; 3] = ["dev-a", "dev-b", "dev-c"];
/// Lock names: devices declare the first three; `spi` is declared by none.
const LOCKS: [&str; 4] = ["i2c0", "bus", "uart", "spi"];
/// Resource names: the first two are declared.
const RESOURCES: [&str; 3] = ["r1", "r2", "r3"];
const LINKS: u8 = 4;

#[derive(Arbitrary, Debug)]
struct Setup {
    /// Reservation and take-backs on (the default policy), or off.
    urgency: bool,
    /// The guaranteed and best-effort classes' quotas: 1 to 99 percent, or none (100) for
    /// the other values. (Most sequences have few slots, which a quota shuts.)
    quotas: [u8; 2],
    /// Live tasks at most: 1 to 16 (small, so that the queue fills).
    queue_limit: u8,
    /// Outbox entries at most: 4 to 259 (so that answers are shed), or the default.
    outbox_limit: Option<u8>,
    grace_ms: u16,
    /// The default execution lease, less 1 ms.
    lease_ms: u16,
    /// Per declared resource: a fixed ceiling (P0 to P5), a dynamic one, or none.
    ceilings: [Option<u8>; 2],
    inheritance: [bool; 2],
    /// The retry jitter's seed.
    seed: u64,
    /// Devices online from the start.
    devices: [Option<Session>; 2],
}

#[derive(Arbitrary, Debug)]
struct Sub {
    /// One of the `IDS`, or one the bridge generates (one time in thirteen; its random part
    /// is the only thing that differs when an input runs again).
    id: u8,
    capability: u8,
    priority: u8,
    /// A device one time in four.
    device: u8,
    deadline_ms: Option<u16>,
    timeout_ms: Option<u16>,
    /// Payload length: a few bytes, or one time in eight 160 to 191 (more than some devices'
    /// `max_payload`).
    payload: u8,
    /// Locks one time in eight: a bit per declared lock name, and one no device declares
    /// (`spi`) one time in thirty-two.
    locks: u8,
    /// A resource one time in eight.
    resource: u8,
    trace: bool,
}

/// A device's session opening on a link: its `Hello`, and the credit its link reports.
#[derive(Arbitrary, Debug, Clone)]
struct Session {
    link: u8,
    device: u8,
    boot: u8,
    session: u32,
    rebooted: bool,
    /// A bit per capability, or (from 16 up) all of them.
    capabilities: u8,
    /// A bit per declared lock name, or (from 8 up) all of them.
    locks: u8,
    slots: u8,
    max_payload: u8,
    credit: u8,
    version: u8,
    resumable: u8,
    restartable: u8,
}

/// What a device message is about, and the link it comes over.
#[derive(Arbitrary, Debug)]
enum Pick {
    /// The last `Assign` (or `Replay`) sent, from the link it went to.
    Newest,
    /// One of the last ones sent (the newest first), from the link it went to.
    Sent(u8),
    /// Any handle, from any link.
    Any { link: u8, handle: u32 },
}

/// One step. The first variant is what bytes that ran out decode to, and the last what a run
/// of 0xff bytes does (libFuzzer inserts both often): both harmless, a turn and time passing.
#[derive(Arbitrary, Debug)]
enum Op {
    /// What the run loop does after handling inputs: dispatch, then commit.
    Turn,
    Submit(Sub),
    Batch(Vec<Sub>),
    SubmitBytes(Vec<u8>),
    Cancel(u8),
    /// A cancel on `{root}/tasks/{level}/cancel`: any level the broker can deliver.
    CancelLevel(String),
    /// A device opens a session.
    Up(Session),
    Credit {
        link: u8,
        credit: u8,
        /// `Assign`s still on their way to the device when it counted.
        in_transit: u8,
    },
    Report {
        handle: Pick,
        state: u8,
        error: Option<u16>,
        result: Vec<u8>,
    },
    Reject {
        handle: Pick,
        reason: u8,
    },
    Refused(Pick),
    Suspended {
        handle: Pick,
        steps: u8,
        scratch: Vec<u8>,
    },
    PreemptNotSent(Pick),
    Down(u8),
    /// One of the inputs that are rare, or cost much more than the others.
    Rare(Rare),
    Dispatch,
    Commit,
    /// The broker acknowledges the oldest committed outbox entries.
    Published(u8),
    Advance(u16),
}

#[derive(Arbitrary, Debug)]
enum Rare {
    StorageFull(bool),
    /// The engine is dropped with whatever it staged and opened again over its queue (a crash
    /// and a restart). Rare: closing and opening the database costs as much as a hundred other
    /// steps.
    Restart,
    Retained(Vec<u8>),
    BrokerLoss(u8),
    /// Time jumps (up to 50 days).
    Jump(u32),
}

#[derive(Arbitrary, Debug)]
struct Case {
    setup: Setup,
    ops: Vec<Op>,
}

/// The queue's directory: one per process, emptied for every input. An input that crashes
/// leaves its directory behind (minimising a crash leaves hundreds): those of processes that
/// are gone are removed when the next process starts.
fn queue_dir() -> &'static PathBuf {
    const PREFIX: &str = "edge-bridge-fuzz-engine-";
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let proc = std::path::Path::new("/proc");
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
            if pid.is_some_and(|pid| proc.is_dir() && !proc.join(pid).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        base.join(format!("{PREFIX}{}", std::process::id()))
    })
}

fn link_of(n: u8) -> LinkId {
    LinkId::from(n % LINKS) + 1
}

/// `bits` if it has at most `n` bits, else all of them: a device declares every capability
/// (or lock) mostly, some of them at times.
fn or_all(bits: u8, n: u32) -> u8 {
    if u32::from(bits) < 1 << n {
        bits
    } else {
        u8::MAX
    }
}

/// The names whose bit is set in `bits`.
fn pick_bits<const L: usize, const N: usize>(
    names: &[&str],
    bits: u8,
) -> heapless::Vec<heapless::String<L>, N> {
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .take(N)
        .map(|(_, n)| heapless::String::try_from(*n).expect("a short name"))
        .collect()
}

fn submission(s: &Sub) -> Vec<u8> {
    let payload = if (160..192).contains(&s.payload) {
        s.payload
    } else {
        s.payload % 12
    };
    let locks: Vec<&str> = LOCKS
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            s.locks < 32 && (*i < 3 || s.locks & 0x18 == 0x18) && s.locks & (1 << i) != 0
        })
        .map(|(_, l)| *l)
        .collect();
    let mut doc = json!({
        "capability": CAPABILITIES[usize::from(s.capability) % CAPABILITIES.len()],
        "priority": s.priority % 6,
        "payload": "x".repeat(usize::from(payload)),
        "locks": locks,
    });
    let obj = doc.as_object_mut().expect("an object");
    if s.id % 13 < IDS {
        obj.insert("id".into(), json!(format!("t{}", s.id % 13)));
    }
    if let Some(d) = Some(s.device).filter(|d| *d < 64) {
        obj.insert(
            "device".into(),
            json!(DEVICES[usize::from(d) % DEVICES.len()]),
        );
    }
    if let Some(d) = s.deadline_ms {
        obj.insert("deadline_ms".into(), json!(u64::from(d) + 1));
    }
    if let Some(t) = s.timeout_ms {
        obj.insert("timeout_ms".into(), json!(u64::from(t) + 100));
    }
    if s.resource < 32 {
        let r = RESOURCES[usize::from(s.resource) % RESOURCES.len()];
        obj.insert("resources".into(), json!([r]));
    }
    if s.trace {
        obj.insert("trace_id".into(), json!("trace"));
    }
    doc.to_string().into_bytes()
}

/// The engine, a clock, and what the harness knows from outside the engine.
struct Harness<'a> {
    setup: &'a Setup,
    engine: Option<Engine>,
    now: u64,
    next_ticket: Ticket,
    /// Tickets handed in since the last commit (or restart), in order.
    tickets: Vec<Ticket>,
    /// The device each link carries, as the link events say.
    link_device: BTreeMap<LinkId, String>,
    /// The session each link carries: opened again after a restart (devices reconnect).
    sessions: BTreeMap<LinkId, Session>,
    /// The links and handles of the last `Assign`s and `Replay`s released, newest last.
    sent: Vec<(LinkId, u32)>,
    /// `Assign`s and `Replay`s each link was given since it opened.
    received: HashMap<LinkId, u64>,
    /// Per link: the engine's count of `Assign`s sent to it when it last reported credit (or
    /// opened), and how many more it said it could take.
    window: HashMap<LinkId, (u64, u64)>,
    /// Live tasks as of the last commit: what a restart must load.
    committed: BTreeMap<String, TaskRecord>,
    /// Live tasks as of the last check, to see which ones finish.
    live: BTreeMap<String, TaskRecord>,
    /// Ids that may never be live again: committed, and staged only (lost by a restart).
    ended: BTreeSet<String>,
    ended_staged: BTreeSet<String>,
    /// The outbox sequence number of the newest entry checked.
    outbox_seen: u64,
    /// Tasks on devices after the dispatches since the last commit, by handle: the link of
    /// their device, and whether that device can run them (a handle refused and dispatched
    /// again may be on two links before a commit).
    dispatched: HashMap<u32, BTreeSet<(LinkId, bool)>>,
}

impl<'a> Harness<'a> {
    fn new(setup: &'a Setup) -> Self {
        let mut h = Self {
            setup,
            engine: None,
            now: 1_000_000,
            next_ticket: 0,
            tickets: Vec::new(),
            link_device: BTreeMap::new(),
            sessions: BTreeMap::new(),
            sent: Vec::new(),
            received: HashMap::new(),
            window: HashMap::new(),
            committed: BTreeMap::new(),
            live: BTreeMap::new(),
            ended: BTreeSet::new(),
            ended_staged: BTreeSet::new(),
            outbox_seen: 0,
            dispatched: HashMap::new(),
        };
        h.engine = Some(h.open());
        for session in setup.devices.iter().flatten() {
            h.up(session);
        }
        h
    }

    fn open(&self) -> Engine {
        let s = self.setup;
        let mut queue =
            Queue::open(queue_dir(), u64::from(s.queue_limit % 16) + 1).expect("the queue opens");
        if let Some(limit) = s.outbox_limit {
            queue.set_outbox_limit(u64::from(limit) + 4);
        }
        let retry = Retry::new(3, Duration::from_millis(100), Duration::from_secs(1));
        let mut e = Engine::new(queue, retry, s.seed);
        e.set_urgency(if s.urgency {
            Urgency::default()
        } else {
            Urgency::off()
        });
        e.set_leases(Leases {
            grace_ms: u64::from(s.grace_ms),
            per_capability: BTreeMap::from([("slow".to_owned(), 5_000)]),
            default_ms: u64::from(s.lease_ms) + 1,
        });
        let [guaranteed, besteffort] = s.quotas.map(|q| if q < 100 && q > 0 { q } else { 100 });
        e.set_class_quotas([100, guaranteed, besteffort]);
        let policy = |i: usize| ResourcePolicy {
            ceiling: s.ceilings[i].map(|c| match Priority::from_level(c % 7) {
                Some(p) => Ceiling::Fixed(p),
                None => Ceiling::Dynamic,
            }),
            inheritance: s.inheritance[i],
        };
        e.set_resources(BTreeMap::from([
            ("r1".to_owned(), policy(0)),
            ("r2".to_owned(), policy(1)),
        ]));
        e
    }

    fn e(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("an engine")
    }

    fn at(&self) -> Now {
        Now::at(self.now)
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.tickets.push(self.next_ticket);
        self.next_ticket
    }

    /// The link and handle `pick` names.
    fn pick(&self, pick: &Pick) -> (LinkId, u32) {
        match pick {
            Pick::Newest => self.pick(&Pick::Sent(0)),
            Pick::Sent(i) if !self.sent.is_empty() => {
                self.sent[self.sent.len() - 1 - usize::from(*i) % self.sent.len()]
            }
            Pick::Sent(i) => (link_of(*i), u32::from(*i)),
            Pick::Any { link, handle } => (link_of(*link), *handle),
        }
    }

    fn link(&mut self, link: LinkId, input: LinkInput) {
        let now = self.at();
        self.e().handle_link(link, input, now);
    }

    fn step(&mut self, op: &Op) {
        let now = self.at();
        match op {
            Op::Submit(s) => {
                let t = self.ticket();
                self.e()
                    .handle_submissions(vec![(submission(s), t)], now)
                    .expect("the queue reads");
            }
            Op::Batch(subs) => {
                let batch: Vec<(Vec<u8>, Ticket)> = subs
                    .iter()
                    .take(8)
                    .map(|s| (submission(s), self.ticket()))
                    .collect();
                self.e()
                    .handle_submissions(batch, now)
                    .expect("the queue reads");
            }
            Op::SubmitBytes(bytes) => {
                let t = self.ticket();
                self.e()
                    .handle_submissions(vec![(bytes.clone(), t)], now)
                    .expect("the queue reads");
            }
            Op::Cancel(id) => self.cancel(&format!("t{}", id % IDS)),
            Op::CancelLevel(level) => {
                // The broker delivers only topics the filter `{root}/tasks/+/cancel` matches.
                if !level.contains(['/', '+', '#', '\0']) {
                    self.cancel(level);
                }
            }
            Op::Up(session) => self.up(session),
            Op::Credit {
                link,
                credit,
                in_transit,
            } => {
                let link = link_of(*link);
                let received = self.received.get(&link).copied().unwrap_or(0);
                let taken = received.saturating_sub(u64::from(in_transit % 3));
                let sent = self.e().assigns_sent(link);
                self.link(
                    link,
                    LinkInput::Credit {
                        credit: *credit,
                        taken,
                    },
                );
                if self.link_device.contains_key(&link) {
                    let allowed = u64::from(*credit).saturating_sub(sent.saturating_sub(taken));
                    self.window.insert(link, (sent, allowed));
                }
            }
            Op::Report {
                handle,
                state,
                error,
                result,
            } => {
                let (link, handle) = self.pick(handle);
                let report = Report {
                    handle,
                    state: [
                        TaskReport::Running,
                        TaskReport::Completed,
                        TaskReport::Failed,
                        TaskReport::Expired,
                        TaskReport::Cancelled,
                    ][usize::from(state % 5)],
                    result: Payload::from_slice(&result[..result.len().min(64)])
                        .expect("within MAX_PAYLOAD"),
                    error: *error,
                };
                let ticket = self.ticket();
                self.link(link, LinkInput::Report { report, ticket });
            }
            Op::Reject { handle, reason } => {
                let (link, handle) = self.pick(handle);
                let reject = Reject {
                    handle: Some(handle),
                    reason: [
                        RejectReason::NoFreeSlot,
                        RejectReason::Started,
                        RejectReason::NotResumable,
                        RejectReason::UnknownCapability,
                        RejectReason::Finished,
                        RejectReason::UnknownTask,
                        RejectReason::PayloadTooLarge,
                    ][usize::from(reason % 7)],
                };
                let ticket = self.ticket();
                self.link(link, LinkInput::Reject { reject, ticket });
            }
            Op::Refused(handle) => {
                let (link, handle) = self.pick(handle);
                self.link(link, LinkInput::Refused { handle });
            }
            Op::Suspended {
                handle,
                steps,
                scratch,
            } => {
                let (link, handle) = self.pick(handle);
                let checkpoint = Checkpoint {
                    steps: u32::from(*steps % 4),
                    scratch: scratch.iter().copied().take(16).collect(),
                    result: Vec::new(),
                };
                let ticket = self.ticket();
                let suspended = LinkInput::Suspended {
                    handle,
                    checkpoint,
                    ticket,
                };
                self.link(link, suspended);
            }
            Op::PreemptNotSent(handle) => {
                let (link, handle) = self.pick(handle);
                self.link(link, LinkInput::PreemptNotSent { handle });
            }
            Op::Down(link) => {
                let link = link_of(*link);
                let reason = "gone".to_owned();
                self.link(link, LinkInput::Down { reason });
                self.link_device.remove(&link);
                self.sessions.remove(&link);
                self.received.remove(&link);
                self.sent.retain(|(l, _)| *l != link);
            }
            Op::Advance(ms) => self.now += u64::from(*ms),
            Op::Rare(Rare::Jump(ms)) => self.now += u64::from(*ms),
            Op::Dispatch => self.dispatch(),
            Op::Commit => self.commit(),
            Op::Turn => {
                self.dispatch();
                self.commit();
            }
            Op::Published(n) => {
                let keys: Vec<u64> = self
                    .e()
                    .queue()
                    .outbox(usize::from(*n))
                    .expect("the outbox reads")
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                self.e().handle_published(&keys);
            }
            Op::Rare(Rare::Retained(payload)) => {
                let t = self.ticket();
                self.e()
                    .handle_retained("edge/tasks/submit", payload, t, now);
            }
            Op::Rare(Rare::BrokerLoss(n)) => {
                self.e()
                    .handle_broker_loss("edge/tasks/+/cancel", u64::from(*n), now);
            }
            Op::Rare(Rare::StorageFull(full)) => self.e().set_storage_full(*full),
            Op::Rare(Rare::Restart) => self.restart(),
        }
        self.check();
    }

    /// Device `s` opens a session.
    fn up(&mut self, s: &Session) {
        let link = link_of(s.link);
        let id = DEVICES[usize::from(s.device) % DEVICES.len()];
        let hello = Hello {
            version: 1 + u16::from(s.version % 3),
            device_id: DeviceId::try_from(id).expect("a short id"),
            boot_id: u32::from(s.boot % 3),
            session_id: s.session,
            capabilities: pick_bits(&CAPABILITIES, or_all(s.capabilities, 4)),
            locks: pick_bits(&LOCKS[..3], or_all(s.locks, 3)),
            slots: s.slots % 6,
            max_payload: [16, 64, 256][usize::from(s.max_payload % 3)],
            resumable: s.resumable,
            restartable: s.restartable,
        };
        let input = LinkInput::Up {
            peer: "fuzz".into(),
            hello,
            rebooted: s.rebooted,
            credit: s.credit,
            // Links without credentials only: a claim refused for an id a credential proved
            // closes the link without the device coming online, which this model of the
            // devices does not follow yet.
            credential: None,
        };
        self.link(link, input);
        // Another device on this link ends its session; this device leaves its old link.
        if self.link_device.get(&link).is_some_and(|d| d != id) {
            self.received.remove(&link);
        }
        self.link_device.retain(|_, d| d != id);
        self.link_device.insert(link, id.to_owned());
        let on_links = &self.link_device;
        self.sessions.retain(|l, _| on_links.contains_key(l));
        self.sessions.insert(link, s.clone());
        let sent = self.e().assigns_sent(link);
        self.window.insert(link, (sent, u64::from(s.credit)));
    }

    fn cancel(&mut self, id: &str) {
        let t = self.ticket();
        let now = self.at();
        let was_live = self.e().queue().get(id).is_some();
        self.e().handle_cancel(id, t, now).expect("the queue reads");
        if !was_live {
            // Cancelled before it was seen, or finished already: it never runs.
            self.ended_staged.insert(id.to_owned());
        }
    }

    fn dispatch(&mut self) {
        let now = self.at();
        self.e().dispatch(now);
        let e = self.engine.as_ref().expect("an engine");
        let q = e.queue();
        let mut earliest = u64::MAX;
        for t in q.ready() {
            if let Some(d) = t.deadline_at_ms {
                assert!(d > now.ms, "{} is queued past its deadline", t.sub.id);
                earliest = earliest.min(d);
            }
            if t.not_before_ms > now.ms {
                earliest = earliest.min(t.not_before_ms);
            }
        }
        for d in q.devices_with_tasks() {
            for t in q.on_device(d) {
                let lease = t.lease_until_ms.expect("a task on a device has a lease");
                assert!(lease > now.ms, "{} is on {d} past its lease", t.sub.id);
                earliest = earliest.min(lease);
            }
        }
        match e.poll_timeout() {
            Some(at) => assert!(
                at > now.ms && at <= earliest,
                "wake-up {at}, now {}, earliest {earliest}",
                now.ms
            ),
            None => assert_eq!(earliest, u64::MAX, "no wake-up for a timer at {earliest}"),
        }
        for (device, link, hello, _) in e.online_devices() {
            for t in q.on_device(device) {
                let fits = hello
                    .capabilities
                    .iter()
                    .any(|c| c.as_str() == t.sub.capability)
                    && t.sub.device.as_deref().is_none_or(|d| d == device)
                    && t.sub.payload.len() <= usize::from(hello.max_payload)
                    && t.sub
                        .locks
                        .iter()
                        .all(|l| hello.locks.iter().any(|x| x.as_str() == l));
                self.dispatched
                    .entry(t.handle())
                    .or_default()
                    .insert((link, fits));
            }
        }
    }

    fn commit(&mut self) {
        let released: Released = self.e().commit().expect("the commit");
        assert_eq!(
            released.tickets,
            std::mem::take(&mut self.tickets),
            "a commit releases the tickets handed in since the last one, in order"
        );
        for (link, command) in &released.commands {
            let handle = match command {
                LinkCommand::Assign(a) => {
                    let at = self.dispatched.get(&a.handle);
                    assert!(
                        at.is_some_and(|at| at.contains(&(*link, true))),
                        "Assign {} to link {link}: dispatched to {at:?}",
                        a.handle
                    );
                    a.handle
                }
                LinkCommand::Replay(a) => a.handle,
                _ => continue,
            };
            self.sent.push((*link, handle));
            if self.sent.len() > 32 {
                self.sent.remove(0);
            }
            *self.received.entry(*link).or_default() += 1;
        }
        self.dispatched.clear();
        self.check_outbox();
        self.ended.append(&mut self.ended_staged);
        self.committed = self.live_tasks();
    }

    /// The entries of the last commit, in the order they were made.
    fn check_outbox(&mut self) {
        let seq = |key: u64| key & outbox_key(0, u64::MAX);
        let seen = self.outbox_seen;
        let mut new = self
            .e()
            .queue()
            .outbox_skipping(0, usize::MAX, |k| seq(k) <= seen)
            .expect("the outbox reads");
        new.sort_by_key(|(k, _)| seq(*k));
        for (key, entry) in &new {
            self.outbox_seen = self.outbox_seen.max(seq(*key));
            assert!(
                !entry.subtopic.contains(['+', '#', '\0']) && !entry.subtopic.is_empty(),
                "unpublishable topic {:?}",
                entry.subtopic
            );
            let Some(id) = entry
                .subtopic
                .strip_prefix("tasks/")
                .and_then(|t| t.strip_suffix("/status"))
            else {
                continue;
            };
            let event: StatusEvent = serde_json::from_str(&entry.payload).expect("a status event");
            assert_eq!(event.id, id);
            assert!(
                event.state.is_terminal() || !self.ended.contains(id),
                "finished task {id} got a {:?} event",
                event.state
            );
        }
    }

    fn restart(&mut self) {
        drop(self.engine.take());
        self.engine = Some(self.open());
        self.tickets.clear();
        self.link_device.clear();
        self.sent.clear();
        self.received.clear();
        self.window.clear();
        self.ended_staged.clear();
        self.dispatched.clear();
        let loaded = self.live_tasks();
        assert_eq!(
            loaded, self.committed,
            "a restart loads the last commit's tasks"
        );
        self.live = loaded;
        // The devices connect again, from the same boot.
        for (_, session) in std::mem::take(&mut self.sessions) {
            self.up(&Session {
                rebooted: false,
                ..session
            });
            self.check();
        }
    }

    /// Every live task, by id, found through the queue's indexes.
    fn live_tasks(&self) -> BTreeMap<String, TaskRecord> {
        let q = self.engine.as_ref().expect("an engine").queue();
        let mut all = BTreeMap::new();
        for t in q.ready() {
            let t = t.into_owned();
            assert!(
                all.insert(t.sub.id.clone(), t.clone()).is_none(),
                "{} queued twice",
                t.sub.id
            );
        }
        for d in q.devices_with_tasks() {
            for t in q.on_device(d) {
                let again = all.insert(t.sub.id.clone(), t.clone());
                assert!(
                    again.is_none(),
                    "{} is in two places: {again:?} and on {d}",
                    t.sub.id
                );
            }
        }
        assert_eq!(
            all.len(),
            q.len(),
            "every live task is queued or on a device"
        );
        all
    }

    fn check(&mut self) {
        let e = self.engine.as_ref().expect("an engine");
        let q = e.queue();
        let live = self.live_tasks();
        let mut depth = [0u64; 6];
        let mut holders: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, t) in &live {
            // A handle finds its task once the task has been on a device (only then does a
            // device know it); a queued task never dispatched may be held as a lane entry
            // alone, which no handle finds. A handle never finds another task.
            let found = q.by_handle(t.handle()).map(|t| t.sub.id.as_str());
            let known_to_devices = t.state != TaskState::Queued
                || t.attempt > 0
                || t.preemptions > 0
                || t.retry_handle.is_some();
            if known_to_devices {
                assert_eq!(
                    found,
                    Some(id.as_str()),
                    "handle {} finds its task",
                    t.handle()
                );
            } else {
                assert!(
                    found.is_none_or(|f| f == id),
                    "handle {} finds {found:?}, not {id}",
                    t.handle()
                );
            }
            match t.state {
                TaskState::Queued => depth[usize::from(t.sub.priority.level())] += 1,
                TaskState::Dispatched | TaskState::Running => {
                    let device = t.device.as_deref().expect("a device");
                    assert!(q.on_device(device).any(|o| o.sub.id == *id));
                    assert!(t.boot.is_some() && t.lease_until_ms.is_some(), "{t:?}");
                    for r in &t.sub.resources {
                        let other = holders.insert(r, id);
                        assert!(other.is_none(), "{r} held by {id} and {other:?}");
                    }
                }
                other => panic!("live task {id} is {other:?}"),
            }
            assert!(
                !self.ended.contains(id) && !self.ended_staged.contains(id),
                "{id} ended and is live again"
            );
        }
        assert_eq!(q.depth(), depth, "queued tasks per priority");
        let mut online: BTreeMap<LinkId, String> = BTreeMap::new();
        for (device, link, hello, credit) in e.online_devices() {
            online.insert(link, device.to_owned());
            let room = u32::from(hello.slots).saturating_sub(q.in_flight(device) as u32);
            assert!(
                credit <= room,
                "{device}: credit {credit}, {} slots, {} tasks",
                hello.slots,
                q.in_flight(device)
            );
            if let Some((sent_then, allowed)) = self.window.get(&link) {
                let more = e.assigns_sent(link).saturating_sub(*sent_then);
                assert!(
                    more <= *allowed,
                    "link {link} was sent {more} Assigns, said it could take {allowed}"
                );
            }
        }
        assert_eq!(
            online, self.link_device,
            "the devices online are the links' devices"
        );
        for id in self.live.keys() {
            if !live.contains_key(id) {
                self.ended_staged.insert(id.clone());
            }
        }
        self.live = live;
    }
}

fuzz_target!(|case: Case| {
    let dir = queue_dir();
    let _ = std::fs::remove_dir_all(dir);
    let mut h = Harness::new(&case.setup);
    for op in case.ops.iter().take(MAX_OPS) {
        h.step(op);
    }
    drop(h);
    let _ = std::fs::remove_dir_all(dir);
});
