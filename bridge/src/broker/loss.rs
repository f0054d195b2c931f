//! Messages the embedded broker dropped before a subscriber read them.
//!
//! rumqttd keeps, per subscription filter, an in-memory log of bounded size, and it never
//! slows a publisher down: it acknowledges each message (PUBACK) as soon as it is in the log.
//! When a subscriber reads more slowly than publishers write, the log drops its oldest
//! segment, and the subscriber's read cursor jumps past every message it had not read yet.
//! Those messages are gone, and their publishers were told they had arrived.
//!
//! rumqttd says so only in a log event ("Read cursor start jumped", with the cursor before and
//! after the jump; the alert it also raises says `lost: 0` in 0.20). A cursor is (segment,
//! offset), the offset counting messages appended to the filter's log since it was created,
//! so the difference of the two offsets is the number of messages skipped. This module's
//! [`LossLayer`] watches that event and hands each jump to the run loop as a [`CursorJump`].
//!
//! The event's fields are rumqttd's own, so the `rumqttd` version is pinned exactly in the
//! workspace manifest, and `tests/tests/burst.rs` checks that a forced overflow is reported
//! with its exact count.

use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Where rumqttd's router logs from.
const ROUTER_TARGET: &str = "rumqttd::router::routing";
/// The router's span around one read of a filter's log for one connection.
const READ_SPAN: &str = "outgoing_publish";

/// A subscriber's read cursor jumped over messages that had left the broker's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorJump {
    /// The client whose subscription skipped them.
    pub client_id: String,
    /// The subscription's filter.
    pub filter: String,
    /// Messages skipped.
    pub lost: u64,
}

/// A `tracing` layer that sees rumqttd's cursor jumps (whatever the log filter lets through to
/// the log itself: it filters for itself) and sends them on.
#[derive(Debug)]
pub struct LossLayer {
    jumps: mpsc::UnboundedSender<CursorJump>,
}

/// The layer (with the filter that lets only the router's reads and warnings reach it) and the
/// receiving end of its jumps.
pub fn layer<S>() -> (
    Filtered<LossLayer, FilterFn, S>,
    mpsc::UnboundedReceiver<CursorJump>,
)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let (jumps, received) = mpsc::unbounded_channel();
    let only_router = FilterFn::new(from_router as fn(&Metadata<'_>) -> bool);
    (LossLayer { jumps }.with_filter(only_router), received)
}

/// The router's read spans and its warnings: all the layer looks at.
fn from_router(m: &Metadata<'_>) -> bool {
    m.target() == ROUTER_TARGET
        && ((m.is_span() && m.name() == READ_SPAN) || (m.is_event() && *m.level() == Level::WARN))
}

/// The client id of a read span, kept in the span's extensions.
struct ReaderId(String);

impl<S> Layer<S> for LossLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != READ_SPAN {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(client_id), Some(span)) = (fields.client_id, ctx.span(id)) {
            span.extensions_mut().insert(ReaderId(client_id));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(jump) = fields.jump() else { return };
        let client_id = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .from_root()
                    .find_map(|span| span.extensions().get::<ReaderId>().map(|r| r.0.clone()))
            })
            .unwrap_or_default();
        let _ = self.jumps.send(CursorJump { client_id, ..jump });
    }
}

/// The fields this module reads, from a span or an event.
#[derive(Debug, Default)]
struct Fields {
    client_id: Option<String>,
    request_cursor: Option<(u64, u64)>,
    start_cursor: Option<(u64, u64)>,
    /// "Read cursor start jumped from … to … on {filter}".
    error: Option<String>,
}

impl Fields {
    /// The jump this event reports, if it is one (its client id still unknown).
    fn jump(self) -> Option<CursorJump> {
        let (from, to) = (self.request_cursor?, self.start_cursor?);
        let filter = self.error?.rsplit_once(" on ")?.1.to_owned();
        Some(CursorJump {
            client_id: String::new(),
            filter,
            lost: to.1.saturating_sub(from.1),
        })
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "client_id" => self.client_id = Some(value.to_owned()),
            "error" => self.error = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "request_cursor" => self.request_cursor = parse_cursor(&format!("{value:?}")),
            "start_cursor" => self.start_cursor = parse_cursor(&format!("{value:?}")),
            "client_id" | "error" => self.record_str(field, format!("{value:?}").trim_matches('"')),
            _ => {}
        }
    }
}

/// `(segment, offset)` as rumqttd's cursors print.
fn parse_cursor(text: &str) -> Option<(u64, u64)> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let (segment, offset) = inner.split_once(',')?;
    Some((segment.trim().parse().ok()?, offset.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn cursors_parse_as_rumqttd_prints_them() {
        assert_eq!(parse_cursor("(0, 10946)"), Some((0, 10946)));
        assert_eq!(parse_cursor("(3,44492)"), Some((3, 44492)));
        assert_eq!(parse_cursor("0, 1"), None);
        assert_eq!(parse_cursor("(a, 1)"), None);
    }

    /// The event as rumqttd 0.20 emits it (`router/routing.rs`, `forward_device_data`), inside
    /// its read span: the jump of the burst test's first overflow.
    #[test]
    fn a_cursor_jump_is_counted_for_the_client_whose_read_skipped() {
        let (layer, mut jumps) = layer();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let client_id = String::from("edge-bridge-b");
            let span = tracing::info_span!(target: ROUTER_TARGET, READ_SPAN, client_id);
            let _read = span.enter();
            let (request, start) = ((0u64, 10_946u64), (1u64, 14_718u64));
            let error = format!(
                "Read cursor start jumped from {request:?} to {start:?} on edge/b/tasks/submit"
            );
            tracing::warn!(target: ROUTER_TARGET, request_cursor = ?request, start_cursor = ?start, error);
            // Other warnings of the router are no jumps.
            tracing::warn!(target: ROUTER_TARGET, "no-connection id 2 is already gone");
        });
        assert_eq!(
            jumps.try_recv().ok(),
            Some(CursorJump {
                client_id: "edge-bridge-b".into(),
                filter: "edge/b/tasks/submit".into(),
                lost: 3_772,
            })
        );
        assert!(jumps.try_recv().is_err());
    }
}
