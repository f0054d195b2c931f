//! The messages of the device link. Field order is the wire order (postcard encodes structs as
//! their fields in sequence and enum variants as a varint index), so reordering fields or
//! variants is a wire change: the golden tests in `proto::tests` catch it. The serde derives
//! define the format; `wire` implements it by hand for flash size, and a test proves the two
//! agree.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::{
    MAX_CAPABILITIES, MAX_CAPABILITY_NAME, MAX_DEVICE_ID, MAX_LOCK_NAME, MAX_LOCKS, MAX_PAYLOAD,
    MAX_SCRATCH, MAX_TASK_LOCKS, MAX_TRACE_ID,
};
use crate::Priority;

/// A device id, as proven by the link credential.
pub type DeviceId = String<MAX_DEVICE_ID>;
/// A capability name such as `sensor.read`.
pub type CapabilityName = String<MAX_CAPABILITY_NAME>;
/// A lock name such as `i2c0`: what a task submission names and a device advertises in
/// `Hello` (see [`valid_lock_name`]).
pub type LockName = String<MAX_LOCK_NAME>;
/// Task input or result bytes (the bridge sends the task's JSON payload as UTF-8 text).
pub type Payload = Vec<u8, MAX_PAYLOAD>;

/// Whether `name` can name a lock: 1 to [`MAX_LOCK_NAME`] bytes of ASCII letters, digits,
/// `.`, `_` and `-`. The runtime refuses to declare other names and the bridge refuses
/// submissions naming them, so the two sides always agree on what a name is.
pub const fn valid_lock_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_LOCK_NAME {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
            return false;
        }
        i += 1;
    }
    true
}

/// Identifies one task on one device. The bridge derives it from its durable task number and
/// never reuses it for another task, so a device can recognise a replayed `Assign`.
pub type Handle = u32;

/// One frame: reliability header plus a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Sequence number of a reliable message (see [`Message::is_reliable`]); each
    /// side starts a session at a number derived from (boot id, session id, role) and wraps
    /// from `u32::MAX` to 1. 0 for messages that are not acknowledged (`Hello`, `Welcome`,
    /// `Heartbeat`, `Ack`).
    pub seq: u32,
    /// Cumulative acknowledgement: every reliable message of the peer up to and including this
    /// sequence number has been received, in order (the one before the peer's initial
    /// sequence number: none yet).
    pub ack: u32,
    /// Flow control: how many more `Assign`s the sender can take, counting every message up to
    /// `ack` — for a device, its free task slots; a bridge sends 0. Carried by every frame (not
    /// only by `Hello`, `Heartbeat` and `Report`) so that each cumulative ack comes with the
    /// matching count: the bridge's credit is then exactly this number minus the `Assign`s it
    /// sent after `ack`, whatever frames are lost or reordered.
    pub credit: u8,
    /// The message.
    pub message: Message,
}

/// Everything either side can say. New kinds are appended (the variant index is the wire
/// tag); each says in [`since`](Self::since) which protocol version introduced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Device → bridge, first message of every session.
    Hello(Hello),
    /// Bridge → device, answer to `Hello`: the session is established.
    Welcome(Welcome),
    /// Bridge → device: run a task.
    Assign(Assign),
    /// Bridge → device: stop a task.
    Cancel(Cancel),
    /// Device → bridge: a task's state changed.
    Report(Report),
    /// Either way, when idle for the heartbeat interval: still alive (the header carries the
    /// acknowledgement and the free slots).
    Heartbeat,
    /// Either way: nothing to say but the acknowledgement in the header.
    Ack,
    /// Either way: a message was refused, with the reason.
    Reject(Reject),
    /// Bridge → device (version 2): give this task back.
    Preempt(Preempt),
    /// Device → bridge (version 2): a task stopped at a step boundary and its slot is free.
    Suspended(Suspended),
    /// Bridge → device (version 2): the checkpoint of the task whose `Assign` comes next.
    Restore(Restore),
    /// Bridge → device (version 3): run a task at another base priority.
    Reprioritize(Reprioritize),
}

impl Message {
    /// Whether the message is sent reliably (sequenced, acknowledged, retransmitted).
    pub const fn is_reliable(&self) -> bool {
        matches!(
            self,
            Self::Assign(_)
                | Self::Cancel(_)
                | Self::Report(_)
                | Self::Reject(_)
                | Self::Preempt(_)
                | Self::Suspended(_)
                | Self::Restore(_)
                | Self::Reprioritize(_)
        )
    }

    /// The protocol version that introduced this kind of message: a session never sends it
    /// to a peer of an older version.
    pub const fn since(&self) -> u16 {
        match self {
            Self::Preempt(_) | Self::Suspended(_) | Self::Restore(_) => 2,
            Self::Reprioritize(_) => 3,
            _ => 1,
        }
    }
}

/// Opens a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must stay the first field: decoders read it before the rest (see `proto::decode`).
    pub version: u16,
    /// Must equal the identity the link credential proved.
    pub device_id: DeviceId,
    /// Random at every boot: a new value tells the bridge that everything the device was
    /// running is gone and handles may be replayed.
    pub boot_id: u32,
    /// New for every handshake within a boot (a reconnect), the same for retransmissions of
    /// one `Hello`: tells a lost `Welcome` apart from a new connection.
    pub session_id: u32,
    /// What the device can run.
    pub capabilities: Vec<CapabilityName, MAX_CAPABILITIES>,
    /// The names of the device's locks in lock-id order: the name at index `i` is lock `i`,
    /// the id an `Assign` carries for it. A device may have more locks than it names (ones
    /// its firmware keeps to itself); they follow the named ones.
    pub locks: Vec<LockName, MAX_LOCKS>,
    /// Task slots in total (the free ones travel in the frame header's `credit`).
    pub slots: u8,
    /// Largest payload the device accepts, at most [`MAX_PAYLOAD`].
    pub max_payload: u16,
    /// Version 2: bit `i` set = a started task of `capabilities[i]` may be preempted and
    /// resumed from its checkpoint ([`Preemption::Resume`]). On the wire only in a `Hello` of
    /// version 2 or later: a version 1 `Hello` decodes with 0 and encodes without it.
    pub resumable: u8,
    /// Version 2: bit `i` set = a started task of `capabilities[i]` may be preempted and
    /// started over ([`Preemption::Restart`]). A capability in neither mask is
    /// [`Preemption::Never`]; one in both is `Resume`. Present on the wire as `resumable`.
    pub restartable: u8,
}

/// What preempting a *started* task of a capability means (version 2; declared per
/// capability in [`Hello::resumable`] and [`Hello::restartable`]). An unstarted task can
/// always be given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Preemption {
    /// A started task runs to its end: a `Preempt` is refused [`RejectReason::Started`].
    #[default]
    Never,
    /// A started task may be stopped at a step boundary and started over elsewhere: its
    /// `Suspended` carries an empty checkpoint (work done so far is lost).
    Restart,
    /// A started task may be stopped at a step boundary and resumed elsewhere from its
    /// checkpoint (`steps`, scratch and partial result) with a [`Restore`].
    Resume,
}

impl Preemption {
    /// The mode of capability `index` given a `Hello`'s two masks (`Never` beyond bit 7).
    pub const fn of(index: usize, resumable: u8, restartable: u8) -> Self {
        if index >= u8::BITS as usize {
            Self::Never
        } else if resumable & (1 << index) != 0 {
            Self::Resume
        } else if restartable & (1 << index) != 0 {
            Self::Restart
        } else {
            Self::Never
        }
    }
}

/// Session parameters chosen by the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Must stay the first field, as in [`Hello`].
    pub version: u16,
    /// The `session_id` of the `Hello` this answers; a device ignores a stale `Welcome`.
    pub session_id: u32,
    /// How often the device sends a heartbeat when it has nothing else to send, in ms.
    pub heartbeat_ms: u32,
    /// Silence after which either side considers the peer gone, in ms.
    pub liveness_ms: u32,
}

/// A task for the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    pub handle: Handle,
    pub priority: Priority,
    /// Milliseconds left until the task's deadline when the bridge sent it (clocks of the two
    /// sides are not synchronised); `None`: no deadline.
    pub deadline_ms: Option<u32>,
    pub capability: CapabilityName,
    /// Device lock ids (indices into the device's `Hello::locks`) the task holds while it
    /// runs, taken in this order. The bridge sends them in ascending order, so that tasks
    /// never take the same locks in opposite orders.
    pub locks: Vec<u8, MAX_TASK_LOCKS>,
    pub payload: Payload,
    /// Correlates device logs with the MQTT submission; may be empty.
    pub trace_id: String<MAX_TRACE_ID>,
}

/// Stop a task that has not finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub handle: Handle,
}

/// Give a task back (version 2). A task the device has not started (no step run, no lock
/// taken) is returned at once and answered with [`Suspended`]. A started one is stopped at
/// its step boundary (the device handles messages between steps, so at once), its locks
/// released, and answered with [`Suspended`] if its capability is [`Preemption::Resume`]
/// (with its checkpoint) or [`Preemption::Restart`] (with an empty one); refused with
/// [`RejectReason::Started`] if [`Preemption::Never`]. A handle that already finished is left
/// alone, as by `Cancel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preempt {
    pub handle: Handle,
}

/// A task stopped at a step boundary and its slot is free (version 2); the fields are its
/// checkpoint, from which the bridge may resume it elsewhere under a new handle. The handle
/// counts as finished on this device once this message is acknowledged: an `Assign` of it
/// again is refused [`RejectReason::Finished`]. The checkpoint is empty (`steps` 0, no
/// scratch, no result) for a task that had not started or whose capability is
/// [`Preemption::Restart`]; a [`Preemption::Resume`] task's carries all 16 scratch bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspended {
    pub handle: Handle,
    /// Steps the task had run (the handler's `Ctx::step` at its next step).
    pub steps: u32,
    /// The handler's scratch bytes at that boundary; empty when it had not started.
    pub scratch: Vec<u8, MAX_SCRATCH>,
    /// The partial result written so far.
    pub result: Payload,
}

/// The checkpoint of a task to resume (version 2), from the `Suspended` that gave it back.
/// The bridge sends it immediately before the `Assign` of the task's new handle, in the same
/// session (reliable delivery keeps them in order); the device keeps at most one and admits
/// that `Assign` with `steps`, `scratch` (zero-padded to [`MAX_SCRATCH`]) and `result`
/// preset, so the handler's next step is `Ctx::step == steps`. A `Restore` not followed by
/// its `Assign` (another `Restore` or an `Assign` of another handle comes first) is dropped;
/// an `Assign` it precedes whose
/// capability is not [`Preemption::Resume`] on the device is refused
/// [`RejectReason::NotResumable`]. It needs no credit (it is not an `Assign`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The handle of the `Assign` that follows (the task's new handle).
    pub handle: Handle,
    /// `Suspended::steps`.
    pub steps: u32,
    /// `Suspended::scratch`.
    pub scratch: Vec<u8, MAX_SCRATCH>,
    /// `Suspended::result`: the partial result the task continues writing.
    pub result: Payload,
}

/// Run a task at another base priority (version 3): the bridge raises the holder of a
/// resource shared across devices to the priority of the most urgent task waiting for that
/// resource, and sends the task's own priority (its `Assign`'s) to restore it once that waiter
/// is served or gone. The device changes the task's base priority between two steps, so it
/// applies at the next step boundary; the task's device locks pass it on as with any base
/// priority (a task blocked on a lock lends it to the lock's holder). Sending the same priority
/// again changes nothing, so a replay is harmless. A handle that already finished is left
/// alone, and an unknown one refused [`RejectReason::UnknownTask`], as for `Cancel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reprioritize {
    pub handle: Handle,
    /// The task's new base priority.
    pub priority: Priority,
}

/// A task's state on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskReport {
    /// Started executing.
    Running,
    /// Finished; `result` holds the output.
    Completed,
    /// The handler failed; `error` holds its code.
    Failed,
    /// The deadline passed before the task could start.
    Expired,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskReport {
    /// Number of variants.
    pub(crate) const COUNT: u32 = 5;

    /// The variant with wire index `i`.
    pub(crate) const fn from_index(i: u32) -> Option<Self> {
        Some(match i {
            0 => Self::Running,
            1 => Self::Completed,
            2 => Self::Failed,
            3 => Self::Expired,
            4 => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether no further report will follow for the handle.
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Running)
    }
}

/// A task's state changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub handle: Handle,
    pub state: TaskReport,
    /// Output of a completed task; empty otherwise.
    pub result: Payload,
    /// Handler error code of a failed task; codes from [`TRANSIENT_ERROR`] up mean the
    /// failure may pass (a bus busy, a sensor warming up) and the bridge may try again.
    pub error: Option<u16>,
}

/// The first handler error code that marks a failure as transient: the bridge retries such a
/// task (with backoff, as a new execution) instead of failing it. Codes below are final.
pub const TRANSIENT_ERROR: u16 = 0x8000;

/// A refused message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// The task concerned, when the refused message was about one.
    pub handle: Option<Handle>,
    pub reason: RejectReason,
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RejectReason {
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// An `Assign` arrived while every task slot was taken: the sender exceeded the free slots
    /// the device advertised.
    NoFreeSlot,
    /// The device has no handler for the capability.
    UnknownCapability,
    /// The payload is larger than the device's `max_payload`.
    PayloadTooLarge,
    /// A lock id beyond the device's lock table.
    UnknownLock,
    /// A message other than `Hello` before the session was established.
    NoSession,
    /// An `Assign` for a handle that already finished on this device and whose report was
    /// acknowledged: it is not run again.
    Finished,
    /// A `Cancel`, `Preempt` or `Reprioritize` for a handle the device does not have.
    UnknownTask,
    /// A `Preempt` for a task that has started (run a step or taken a lock) of a capability
    /// the device declared [`Preemption::Never`].
    Started,
    /// (Version 2.) An `Assign` right after a `Restore` of its handle, for a capability the
    /// device does not resume ([`Preemption::Never`] or [`Preemption::Restart`]): the task is
    /// not admitted (the bridge may send it again without the `Restore`, from the start).
    NotResumable,
}

impl RejectReason {
    /// Number of variants.
    pub(crate) const COUNT: u32 = 10;

    /// The variant with wire index `i`.
    pub(crate) const fn from_index(i: u32) -> Option<Self> {
        Some(match i {
            0 => Self::UnsupportedVersion,
            1 => Self::NoFreeSlot,
            2 => Self::UnknownCapability,
            3 => Self::PayloadTooLarge,
            4 => Self::UnknownLock,
            5 => Self::NoSession,
            6 => Self::Finished,
            7 => Self::UnknownTask,
            8 => Self::Started,
            9 => Self::NotResumable,
            _ => return None,
        })
    }
}

impl core::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::NoFreeSlot => "no free task slot",
            Self::UnknownCapability => "unknown capability",
            Self::PayloadTooLarge => "payload too large",
            Self::UnknownLock => "unknown lock id",
            Self::NoSession => "no session established",
            Self::Finished => "task already finished and reported",
            Self::UnknownTask => "no such task on the device",
            Self::Started => "task already started",
            Self::NotResumable => "capability not resumable from a checkpoint",
        })
    }
}
