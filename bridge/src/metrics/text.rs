//! A [`Snapshot`] as Prometheus' text exposition format, version 0.0.4: for every metric
//! family a `# HELP` and a `# TYPE` line, then its samples; counters end in `_total`,
//! durations are in seconds, label values escaped. A pure function of the snapshot (and of
//! the handshake counters passed in), pinned by a golden test.

use std::fmt::Write;

use device_core::Priority;

use super::{Finished, Histogram, LinkKind, Snapshot};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text of `snapshot`; `handshake_failures` per [`LinkKind::ALL`].
pub fn render(snapshot: &Snapshot, handshake_failures: [u64; LinkKind::ALL.len()]) -> String {
    let mut out = Out(String::with_capacity(4096 + 400 * snapshot.devices.len()));
    let s = snapshot;

    out.family(
        "edge_bridge_build_info",
        Type::Gauge,
        "The bridge's version; always 1.",
    );
    out.sample(
        "edge_bridge_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    devices(&mut out, s);

    out.family(
        "edge_bridge_queue_depth",
        Type::Gauge,
        "Tasks waiting in the queue for a device, per priority (P0 most urgent).",
    );
    for (p, n) in Priority::ALL.iter().zip(s.queued) {
        out.sample(
            "edge_bridge_queue_depth",
            &[("priority", &p.to_string())],
            n,
        );
    }
    out.family(
        "edge_bridge_queue_oldest_age_seconds",
        Type::Gauge,
        "How long the task queued longest has waited since it was accepted (wall clock); 0 when nothing is queued.",
    );
    let oldest = seconds(s.oldest_queued_ms.unwrap_or(0));
    out.sample("edge_bridge_queue_oldest_age_seconds", &[], oldest);

    out.family(
        "edge_bridge_dispatch_wait_seconds",
        Type::Histogram,
        "Time from a task's acceptance to its first dispatch to a device, per priority.",
    );
    for (p, h) in Priority::ALL.iter().zip(&s.dispatch_waits) {
        histogram(
            &mut out,
            "edge_bridge_dispatch_wait_seconds",
            &p.to_string(),
            h,
        );
    }

    out.family(
        "edge_bridge_deadline_misses_total",
        Type::Counter,
        "Tasks whose deadline passed before they could start (they ended expired).",
    );
    out.sample("edge_bridge_deadline_misses_total", &[], s.deadline_misses);
    out.family(
        "edge_bridge_preemptions_total",
        Type::Counter,
        "Tasks devices gave back to make room for urgent work.",
    );
    out.sample("edge_bridge_preemptions_total", &[], s.preemptions);
    finished(&mut out, &s.finished);
    out.family(
        "edge_bridge_tasks_live",
        Type::Gauge,
        "Tasks not finished: queued or on a device.",
    );
    out.sample("edge_bridge_tasks_live", &[], s.live);
    out.family(
        "edge_bridge_outbox_depth",
        Type::Gauge,
        "Events (task states, device documents, answers) waiting for the broker's acknowledgement.",
    );
    out.sample("edge_bridge_outbox_depth", &[], s.outbox);
    out.family(
        "edge_bridge_submissions_lost_total",
        Type::Counter,
        "Messages on the API's topics the broker dropped before the bridge read them.",
    );
    out.sample(
        "edge_bridge_submissions_lost_total",
        &[],
        s.submissions_lost,
    );

    out.family(
        "edge_bridge_link_sessions",
        Type::Gauge,
        "Device sessions open (a Hello received), per link kind.",
    );
    for (kind, n) in LinkKind::ALL.iter().zip(s.sessions) {
        out.sample("edge_bridge_link_sessions", &[("kind", kind.name())], n);
    }
    out.family(
        "edge_bridge_link_handshake_failures_total",
        Type::Counter,
        "Connections of links with a handshake that ended before proving a device: failed, timed out, or no device identity in the credential.",
    );
    for (kind, n) in LinkKind::ALL.iter().zip(handshake_failures) {
        if kind.has_handshake() {
            let labels = [("kind", kind.name())];
            out.sample("edge_bridge_link_handshake_failures_total", &labels, n);
        }
    }

    out.family(
        "edge_bridge_broker_connected",
        Type::Gauge,
        "1 while the bridge is connected to the MQTT broker, else 0.",
    );
    out.sample(
        "edge_bridge_broker_connected",
        &[],
        u8::from(s.broker_connected),
    );
    out.family(
        "edge_bridge_broker_connections_total",
        Type::Counter,
        "Connections to the MQTT broker made since the bridge started (each beyond the first is a reconnect).",
    );
    out.sample(
        "edge_bridge_broker_connections_total",
        &[],
        s.broker_connections,
    );
    out.0
}

/// The per-device families: online state for every device known, the rest for those online.
fn devices(out: &mut Out, s: &Snapshot) {
    out.family(
        "edge_bridge_device_online",
        Type::Gauge,
        "1 for a device with a session open, 0 for one known offline (until devices.forget_after).",
    );
    for d in &s.devices {
        let online = u8::from(d.online.is_some());
        out.sample("edge_bridge_device_online", &[("device", &d.id)], online);
    }
    type Figure = fn(&super::DeviceLoad) -> u64;
    let families: [(&str, &str, Figure); 4] = [
        (
            "edge_bridge_device_slots",
            "Task slots of an online device, from its Hello.",
            |l| u64::from(l.slots),
        ),
        (
            "edge_bridge_device_tasks_in_flight",
            "Tasks dispatched to an online device and not finished.",
            |l| l.in_flight,
        ),
        (
            "edge_bridge_device_credit",
            "Tasks an online device can take now: its free slots as it last reported, less the tasks sent since.",
            |l| u64::from(l.credit),
        ),
        (
            "edge_bridge_device_reserved_slots",
            "Slots of an online device that only urgent tasks may take.",
            |l| u64::from(l.reserved),
        ),
    ];
    for (name, help, figure) in families {
        out.family(name, Type::Gauge, help);
        for d in &s.devices {
            if let Some(load) = &d.online {
                out.sample(name, &[("device", &d.id)], figure(load));
            }
        }
    }
}

fn finished(out: &mut Out, f: &Finished) {
    let name = "edge_bridge_tasks_finished_total";
    out.family(
        name,
        Type::Counter,
        "Tasks that reached a terminal state, per state (a rejected submission included).",
    );
    for state in Finished::STATES {
        out.sample(name, &[("state", state_label(state))], f.get(state));
    }
}

/// A terminal state as status events spell it.
fn state_label(state: crate::api::TaskState) -> &'static str {
    use crate::api::TaskState as S;
    match state {
        S::Completed => "completed",
        S::Failed => "failed",
        S::Expired => "expired",
        S::Cancelled => "cancelled",
        S::Rejected => "rejected",
        S::Queued | S::Dispatched | S::Running | S::Preempted => "live",
    }
}

/// The `_bucket`, `_sum` and `_count` samples of one histogram.
fn histogram(out: &mut Out, name: &str, priority: &str, h: &Histogram) {
    let bucket = format!("{name}_bucket");
    for (bound, n) in h.cumulative() {
        let le = bound.map_or_else(|| "+Inf".to_owned(), seconds);
        out.sample(&bucket, &[("priority", priority), ("le", &le)], n);
    }
    let labels = [("priority", priority)];
    out.sample(&format!("{name}_sum"), &labels, seconds(h.sum_ms()));
    out.sample(&format!("{name}_count"), &labels, h.count());
}

/// `ms` in seconds, exactly, without trailing zeros ("0.005", "2.5", "60").
fn seconds(ms: u64) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return s.to_string();
    }
    let text = format!("{s}.{frac:03}");
    text.trim_end_matches('0').to_owned()
}

/// A metric family's type.
#[derive(Clone, Copy)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// The text being written.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: Type, help: &str) {
        let kind = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v, true));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// `text` escaped as the format asks: `\` and line feeds in help text, and `"` too in label
/// values (device ids may hold any of them but the line feed).
fn escape(text: &str, label: bool) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\\', '\n', '"']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::super::{DeviceFigures, DeviceLoad};
    use super::*;
    use crate::api::TaskState;

    #[test]
    fn seconds_are_exact_decimals() {
        for (ms, s) in [
            (0, "0"),
            (5, "0.005"),
            (50, "0.05"),
            (250, "0.25"),
            (1_000, "1"),
            (2_500, "2.5"),
            (60_000, "60"),
            (61_001, "61.001"),
        ] {
            assert_eq!(seconds(ms), s);
        }
    }

    #[test]
    fn label_values_escape_backslashes_quotes_and_line_feeds() {
        assert_eq!(escape(r#"a"b\c"#, true), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb", true), r"a\nb");
        assert_eq!(escape(r#"say "hi""#, false), r#"say "hi""#);
        assert_eq!(escape("plain", true), "plain");
    }

    /// The `state` label is the state as status events spell it.
    #[test]
    fn state_labels_are_the_status_events_names() {
        for state in Finished::STATES {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state_label(state)));
        }
    }

    /// The text of a small snapshot, whole: a renamed family, a lost HELP line or a changed
    /// label breaks this test, not a dashboard.
    #[test]
    fn a_snapshot_renders_as_text_format_0_0_4() {
        let mut waits: [Histogram; Priority::LEVELS] = Default::default();
        waits[0].observe(3);
        waits[0].observe(40);
        waits[3].observe(70_000);
        let mut finished = Finished::default();
        finished.count(TaskState::Completed);
        finished.count(TaskState::Rejected);
        let snapshot = Snapshot {
            devices: vec![
                DeviceFigures {
                    id: "dev-\"1\"".into(),
                    online: Some(DeviceLoad {
                        slots: 8,
                        in_flight: 7,
                        credit: 1,
                        reserved: 1,
                    }),
                },
                DeviceFigures {
                    id: "old".into(),
                    online: None,
                },
            ],
            queued: [0, 0, 2, 0, 3, 0],
            oldest_queued_ms: Some(1_500),
            dispatch_waits: waits,
            deadline_misses: 4,
            preemptions: 5,
            finished,
            live: 12,
            outbox: 6,
            submissions_lost: 0,
            sessions: [1, 0, 2, 0],
            broker_connected: true,
            broker_connections: 1,
        };
        let text = render(&snapshot, [0, 9, 3, 0]);
        let golden =
            include_str!("testdata/golden.txt").replace("{VERSION}", env!("CARGO_PKG_VERSION"));
        assert_eq!(text, golden, "\n{text}");
    }
}
