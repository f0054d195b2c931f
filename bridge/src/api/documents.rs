//! The retained documents the bridge publishes about itself and its devices:
//! `{root}/devices/{id}`, `{root}/bridge/stats` and `{root}/bridge/status`.
//!
//! They are part of the MQTT contract, so each is a type with a golden-JSON test: a renamed or
//! reordered field breaks a test, not a subscriber. Fields are declared in alphabetical order
//! because that is the order the documents had when they were built with `serde_json::json!`
//! (whose maps sort their keys), and serde writes fields in declaration order.

use std::collections::BTreeMap;

use device_core::Priority;
use device_core::proto::Hello;
use serde::{Serialize, Serializer};

/// The JSON text of a document.
fn to_json(doc: &impl Serialize) -> String {
    // serde_json fails only on a map key that is not a string, or on a `Serialize` impl that
    // reports an error; none of these documents has either.
    serde_json::to_string(doc).expect("documents serialise to JSON")
}

/// The retained `{root}/devices/{id}` document: a device's capabilities, lock names and
/// online state, kept for subscribers that arrive later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceDocument {
    /// The `boot_id` of the device's last `Hello`: a new value means the device rebooted.
    pub boot_id: Option<u32>,
    pub capabilities: Option<Vec<String>>,
    pub device_id: String,
    /// Lock names in lock-id order, as in the `Hello`.
    pub locks: Option<Vec<String>>,
    pub max_payload: Option<u16>,
    /// Where the device connected from, or why it went offline.
    pub note: String,
    pub online: bool,
    pub protocol_version: Option<u16>,
    pub slots: Option<u8>,
    /// Wall-clock milliseconds since the Unix epoch when the document was made.
    pub ts_ms: u64,
}

impl DeviceDocument {
    /// The document for device `id`. The `Hello` fields are `null` without a `Hello` (an
    /// offline document for a device the bridge never heard from since it started); an
    /// offline document otherwise repeats what the device last said.
    pub fn new(id: &str, hello: Option<&Hello>, online: bool, note: &str, ts_ms: u64) -> Self {
        Self {
            boot_id: hello.map(|h| h.boot_id),
            capabilities: hello.map(|h| {
                h.capabilities
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect()
            }),
            device_id: id.to_owned(),
            locks: hello.map(|h| h.locks.iter().map(|l| l.as_str().to_owned()).collect()),
            max_payload: hello.map(|h| h.max_payload),
            note: note.to_owned(),
            online,
            protocol_version: hello.map(|h| h.version),
            slots: hello.map(|h| h.slots),
            ts_ms,
        }
    }

    /// The JSON text published.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// The retained `{root}/bridge/stats` document: how much work waits and where it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BridgeStats {
    /// QoS classes by name (`realtime`, `guaranteed`, `besteffort`).
    pub classes: BTreeMap<String, ClassStats>,
    /// Online devices by id (sorted, as a JSON object's keys are).
    pub devices: BTreeMap<String, DeviceStats>,
    /// Queued tasks the dispatcher looked at one by one, since the bridge started: it grows
    /// with the dispatches made, not with tasks that wait (for a device, a lock, a resource,
    /// their retry delay or their class's quota), which are passed over whole.
    pub dispatch_examined: u64,
    /// Tasks that expired before they could start, since the bridge started.
    pub expired: u64,
    /// Tasks not yet finished (queued, dispatched or running).
    pub live: usize,
    /// Events waiting for the broker's acknowledgement.
    pub outbox: OutboxStats,
    /// Tasks devices gave back for urgent work, since the bridge started.
    pub preemptions: u64,
    /// Queued tasks per priority, written as `{"P0": n, …, "P5": n}`.
    #[serde(serialize_with = "per_priority")]
    pub queued: [u64; Priority::LEVELS],
    /// The disk of the data directory.
    pub storage: StorageStats,
    /// Messages on the API's topics the broker dropped before the bridge read them, since the
    /// bridge started (each loss is also on `{root}/errors`).
    pub submissions_lost: u64,
    /// Wall-clock milliseconds since the Unix epoch when the document was made.
    pub ts_ms: u64,
    /// How long the last urgent tasks (at most 1,024) waited from acceptance to their first
    /// dispatch.
    pub urgent_wait: WaitStats,
}

/// A QoS class in [`BridgeStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClassStats {
    /// Its tasks on online devices.
    pub in_flight: u32,
    /// The share of the online slots it may hold, in percent (100: no quota).
    pub max_percent: u8,
    /// Its tasks waiting in the queue.
    pub queued: u64,
}

/// The outbox in [`BridgeStats`]: events (and documents, and answers) not yet acknowledged
/// by the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Entries waiting now.
    pub depth: u64,
    /// At this depth new submissions are rejected (`outbox_full`).
    pub limit: u64,
    /// Answers to input that changed no task (repeats for duplicates, rejections, errors
    /// entries) not stored for want of room, since the bridge started: repeats dropped,
    /// rejections published once without storage.
    pub shed: u64,
}

/// The data directory's disk in [`BridgeStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StorageStats {
    /// Bytes available, as last measured (the reserve file not counted).
    pub free_bytes: u64,
    /// Free space is below `min_free_bytes`: new submissions are rejected (`storage_full`).
    pub full: bool,
    /// The watermark.
    pub min_free_bytes: u64,
}

/// Percentiles of waits, in milliseconds (nearest rank); zeros without samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WaitStats {
    pub max_ms: u64,
    /// Samples the figures are made of.
    pub n: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

impl WaitStats {
    /// The percentiles of `waits` (milliseconds).
    pub fn of(waits: impl Iterator<Item = u64>) -> Self {
        let mut all: Vec<u64> = waits.collect();
        all.sort_unstable();
        let rank = |p: usize| {
            all.get((all.len() * p).div_ceil(100).saturating_sub(1))
                .copied()
        };
        Self {
            max_ms: all.last().copied().unwrap_or(0),
            n: all.len(),
            p50_ms: rank(50).unwrap_or(0),
            p99_ms: rank(99).unwrap_or(0),
        }
    }
}

impl BridgeStats {
    /// The JSON text published.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// One online device in [`BridgeStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    /// Slots the device last said were free (its credit).
    pub free_slots: u32,
    /// Tasks the bridge has dispatched to it that have not finished.
    pub in_flight: usize,
    /// Of its slots, how many only urgent tasks may take.
    pub reserved: u32,
    /// Its task slots in total, from its `Hello`.
    pub slots: u8,
}

/// Writes one count per priority as an object keyed by the priority's name.
fn per_priority<S: Serializer>(
    counts: &[u64; Priority::LEVELS],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(Priority::ALL.iter().zip(counts))
}

/// The retained `{root}/bridge/status` document: whether the bridge is connected to the
/// broker. Published online on every connection; the last will and a clean stop publish it
/// offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BridgeStatus {
    /// The configured `bridge_id`, when online: which bridge this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_id: Option<String>,
    /// The bridge's MQTT client id, when online (`edge-bridge-{bridge_id}`): what the
    /// broker's logs and ACLs know it by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub online: bool,
    /// Why the bridge is offline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<OfflineReason>,
}

impl BridgeStatus {
    /// Connected, as bridge `bridge_id` (configured) with MQTT client id `client_id`.
    pub fn online(bridge_id: &str, client_id: &str) -> Self {
        Self {
            bridge_id: Some(bridge_id.to_owned()),
            client_id: Some(client_id.to_owned()),
            online: true,
            reason: None,
        }
    }

    /// Not connected, for `reason`.
    pub fn offline(reason: OfflineReason) -> Self {
        Self {
            bridge_id: None,
            client_id: None,
            online: false,
            reason: Some(reason),
        }
    }

    /// The JSON text published.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// Why `{root}/bridge/status` says offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum OfflineReason {
    /// The broker lost the connection and published the bridge's last will.
    #[serde(rename = "connection lost")]
    ConnectionLost,
    /// The bridge was stopped and said so before disconnecting.
    #[serde(rename = "stopped")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_core::proto::DeviceId;

    fn hello() -> Hello {
        Hello {
            // Not PROTOCOL_VERSION: the documents are pinned, not the protocol.
            version: 1,
            device_id: DeviceId::try_from("dev-1").unwrap(),
            boot_id: 7,
            session_id: 3,
            capabilities: heapless::Vec::from_slice(&[
                "echo".try_into().unwrap(),
                "sleep".try_into().unwrap(),
            ])
            .unwrap(),
            locks: heapless::Vec::from_slice(&[
                "i2c0".try_into().unwrap(),
                "bus".try_into().unwrap(),
            ])
            .unwrap(),
            slots: 4,
            max_payload: 256,
            resumable: 0,
            restartable: 0,
        }
    }

    /// How the engine built the device document before this type existed.
    fn device_document_by_json_macro(
        id: &str,
        hello: Option<&Hello>,
        online: bool,
        note: &str,
        now: u64,
    ) -> String {
        serde_json::json!({
            "device_id": id,
            "online": online,
            "capabilities": hello.map(|h| h.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
            "locks": hello.map(|h| h.locks.iter().map(|l| l.as_str()).collect::<Vec<_>>()),
            "slots": hello.map(|h| h.slots),
            "max_payload": hello.map(|h| h.max_payload),
            "boot_id": hello.map(|h| h.boot_id),
            "protocol_version": hello.map(|h| h.version),
            "note": note,
            "ts_ms": now,
        })
        .to_string()
    }

    #[test]
    fn an_online_device_document_lists_what_its_hello_said() {
        let doc = DeviceDocument::new(
            "dev-1",
            Some(&hello()),
            true,
            "tcp 127.0.0.1:5000",
            1_700_000_000_123,
        );
        assert_eq!(
            doc.to_json(),
            r#"{"boot_id":7,"capabilities":["echo","sleep"],"device_id":"dev-1","locks":["i2c0","bus"],"max_payload":256,"note":"tcp 127.0.0.1:5000","online":true,"protocol_version":1,"slots":4,"ts_ms":1700000000123}"#
        );
    }

    #[test]
    fn an_offline_device_document_without_a_hello_has_nulls() {
        let doc = DeviceDocument::new("dev-2", None, false, "link lost", 5);
        assert_eq!(
            doc.to_json(),
            r#"{"boot_id":null,"capabilities":null,"device_id":"dev-2","locks":null,"max_payload":null,"note":"link lost","online":false,"protocol_version":null,"slots":null,"ts_ms":5}"#
        );
    }

    #[test]
    fn the_device_document_is_the_text_the_json_macro_made() {
        let h = hello();
        let empty = Hello {
            capabilities: heapless::Vec::new(),
            locks: heapless::Vec::new(),
            ..hello()
        };
        for (id, hello, online, note) in [
            ("dev-1", Some(&h), true, "tcp 127.0.0.1:5000"),
            ("dev-1", Some(&h), false, "replaced by a new connection"),
            ("d", Some(&empty), true, ""),
            ("dev-\"quoted\"", None, false, "note with \\ and \n and ü"),
        ] {
            assert_eq!(
                DeviceDocument::new(id, hello, online, note, u64::MAX).to_json(),
                device_document_by_json_macro(id, hello, online, note, u64::MAX)
            );
        }
    }

    #[test]
    fn bridge_stats_count_queued_tasks_per_priority_and_devices_by_id() {
        let stats = BridgeStats {
            classes: BTreeMap::from([(
                "besteffort".to_owned(),
                ClassStats {
                    queued: 11,
                    in_flight: 2,
                    max_percent: 50,
                },
            )]),
            devices: BTreeMap::from([
                (
                    "dev-b".to_owned(),
                    DeviceStats {
                        free_slots: 3,
                        in_flight: 1,
                        reserved: 1,
                        slots: 4,
                    },
                ),
                (
                    "dev-a".to_owned(),
                    DeviceStats {
                        free_slots: 0,
                        in_flight: 8,
                        reserved: 2,
                        slots: 8,
                    },
                ),
            ]),
            dispatch_examined: 9,
            expired: 2,
            live: 21,
            outbox: OutboxStats {
                depth: 30,
                limit: 100_000,
                shed: 7,
            },
            preemptions: 4,
            queued: [1, 2, 3, 4, 5, 6],
            storage: StorageStats {
                free_bytes: 1 << 30,
                full: false,
                min_free_bytes: 64 << 20,
            },
            submissions_lost: 7,
            ts_ms: 1_700_000_000_123,
            urgent_wait: WaitStats::of([4, 2, 40, 3].into_iter()),
        };
        assert_eq!(
            stats.to_json(),
            r#"{"classes":{"besteffort":{"in_flight":2,"max_percent":50,"queued":11}},"devices":{"dev-a":{"free_slots":0,"in_flight":8,"reserved":2,"slots":8},"dev-b":{"free_slots":3,"in_flight":1,"reserved":1,"slots":4}},"dispatch_examined":9,"expired":2,"live":21,"outbox":{"depth":30,"limit":100000,"shed":7},"preemptions":4,"queued":{"P0":1,"P1":2,"P2":3,"P3":4,"P4":5,"P5":6},"storage":{"free_bytes":1073741824,"full":false,"min_free_bytes":67108864},"submissions_lost":7,"ts_ms":1700000000123,"urgent_wait":{"max_ms":40,"n":4,"p50_ms":3,"p99_ms":40}}"#
        );
        // As the engine built it with `serde_json::json!` before this type existed (plus the
        // reserved slots, since reservation, the outbox and storage, since their bounds, and the
        // submissions the broker dropped, the classes, and the dispatcher's count: fields are
        // only ever added).
        let by_macro = serde_json::json!({
            "classes": { "besteffort": { "queued": 11, "in_flight": 2, "max_percent": 50 } },
            "queued": { "P0": 1, "P1": 2, "P2": 3, "P3": 4, "P4": 5, "P5": 6 },
            "live": 21,
            "outbox": { "depth": 30, "limit": 100_000, "shed": 7 },
            "preemptions": 4,
            "storage": { "free_bytes": 1_u64 << 30, "full": false, "min_free_bytes": 64_u64 << 20 },
            "devices": {
                "dev-b": { "free_slots": 3, "in_flight": 1, "reserved": 1, "slots": 4 },
                "dev-a": { "free_slots": 0, "in_flight": 8, "reserved": 2, "slots": 8 },
            },
            "expired": 2,
            "dispatch_examined": 9,
            "submissions_lost": 7,
            "ts_ms": 1_700_000_000_123_u64,
            "urgent_wait": { "max_ms": 40, "n": 4, "p50_ms": 3, "p99_ms": 40 },
        });
        assert_eq!(stats.to_json(), by_macro.to_string());
    }

    #[test]
    fn bridge_stats_without_devices_have_an_empty_object() {
        let stats = BridgeStats {
            classes: BTreeMap::new(),
            devices: BTreeMap::new(),
            dispatch_examined: 0,
            expired: 0,
            live: 0,
            outbox: OutboxStats::default(),
            preemptions: 0,
            queued: [0; Priority::LEVELS],
            storage: StorageStats::default(),
            submissions_lost: 0,
            ts_ms: 0,
            urgent_wait: WaitStats::default(),
        };
        assert_eq!(
            stats.to_json(),
            r#"{"classes":{},"devices":{},"dispatch_examined":0,"expired":0,"live":0,"outbox":{"depth":0,"limit":0,"shed":0},"preemptions":0,"queued":{"P0":0,"P1":0,"P2":0,"P3":0,"P4":0,"P5":0},"storage":{"free_bytes":0,"full":false,"min_free_bytes":0},"submissions_lost":0,"ts_ms":0,"urgent_wait":{"max_ms":0,"n":0,"p50_ms":0,"p99_ms":0}}"#
        );
    }

    #[test]
    fn the_bridge_status_names_the_bridge_when_online_and_the_reason_when_offline() {
        assert_eq!(
            BridgeStatus::online("gw1", "edge-bridge-gw1").to_json(),
            r#"{"bridge_id":"gw1","client_id":"edge-bridge-gw1","online":true}"#
        );
        assert_eq!(
            BridgeStatus::offline(OfflineReason::ConnectionLost).to_json(),
            r#"{"online":false,"reason":"connection lost"}"#
        );
        assert_eq!(
            BridgeStatus::offline(OfflineReason::Stopped).to_json(),
            r#"{"online":false,"reason":"stopped"}"#
        );
        // As mqtt.rs and run.rs built them with `serde_json::json!` before this type existed.
        assert_eq!(
            BridgeStatus::online("gw1", "edge-bridge-gw1").to_json(),
            serde_json::json!({ "online": true, "bridge_id": "gw1", "client_id": "edge-bridge-gw1" })
                .to_string()
        );
        assert_eq!(
            BridgeStatus::offline(OfflineReason::ConnectionLost).to_json(),
            serde_json::json!({ "online": false, "reason": "connection lost" }).to_string()
        );
        assert_eq!(
            BridgeStatus::offline(OfflineReason::Stopped).to_json(),
            serde_json::json!({ "online": false, "reason": "stopped" }).to_string()
        );
    }

    /// Percentiles by nearest rank: of 1..=100 the 50th is 50 and the 99th 99; of one sample,
    /// every figure is that sample; of none, zeros.
    #[test]
    fn wait_percentiles_are_nearest_rank() {
        let w = WaitStats::of((1..=100).rev());
        assert_eq!((w.n, w.p50_ms, w.p99_ms, w.max_ms), (100, 50, 99, 100));
        let one = WaitStats::of([7].into_iter());
        assert_eq!((one.n, one.p50_ms, one.p99_ms, one.max_ms), (1, 7, 7, 7));
        assert_eq!(WaitStats::of(std::iter::empty()), WaitStats::default());
    }
}
