//! The outbox pump: which committed outbox entries to hand the MQTT driver next.
//!
//! Entries leave the outbox only when the broker acknowledged them, so the pump only decides
//! what to *offer*: at most a window of entries at a time (so the driver never blocks on its
//! own queue), nothing while disconnected, and after a reconnect everything unacknowledged
//! again from the oldest (rumqttc forgets its in-flight publishes on an error, and delivery
//! is at least once).
//!
//! The outbox is read in key order, and keys begin with a class (the task's priority, see
//! `queue::outbox_key`), so a P0's events are offered before a P4 backlog. An entry of a
//! more urgent class can land below where the pump read last: the pump then reads again
//! from there ([`OutboxPump::appended`]), passing over what it has offered already. Every
//! committed key below the read position has been offered, so one class's entries — one
//! task's events — are offered in the order they were made.

use std::collections::HashSet;

/// What has been offered to the MQTT driver and not acknowledged, and where to read next.
#[derive(Debug)]
pub(super) struct OutboxPump {
    /// Entries offered and not acknowledged, at most.
    window: usize,
    /// Whether the driver is connected: offers made while it is not would only be dropped.
    connected: bool,
    /// Keys offered and not yet acknowledged.
    offered: HashSet<u64>,
    /// The outbox key the next read starts at.
    next: u64,
}

impl OutboxPump {
    pub(super) fn new(window: usize) -> Self {
        Self {
            window,
            connected: false,
            offered: HashSet::new(),
            next: 0,
        }
    }

    /// The driver connected (again): everything unacknowledged is offered again, oldest
    /// first.
    pub(super) fn connected(&mut self) {
        self.connected = true;
        self.offered.clear();
        self.next = 0;
    }

    /// The driver lost its connection; `true` if it had one.
    pub(super) fn disconnected(&mut self) -> bool {
        std::mem::replace(&mut self.connected, false)
    }

    pub(super) fn is_connected(&self) -> bool {
        self.connected
    }

    /// The broker acknowledged these keys: their room in the window is free again.
    pub(super) fn published(&mut self, keys: &[u64]) {
        for k in keys {
            self.offered.remove(k);
        }
    }

    /// Where the next read of the outbox starts and how many entries to read, if the pump
    /// can offer any now.
    pub(super) fn want(&self) -> Option<(u64, usize)> {
        let room = self.window.saturating_sub(self.offered.len());
        (self.connected && room > 0).then_some((self.next, room))
    }

    /// Entries were committed from `key` on: read again from there if that is below the
    /// read position (a more urgent class than the one being read).
    pub(super) fn appended(&mut self, key: u64) {
        self.next = self.next.min(key);
    }

    /// Whether `key` was offered and not acknowledged (not to be offered twice).
    pub(super) fn is_offered(&self, key: u64) -> bool {
        self.offered.contains(&key)
    }

    /// `key` was handed to the driver.
    pub(super) fn offered(&mut self, key: u64) {
        self.offered.insert(key);
        self.next = key + 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// One round of the run loop against an outbox holding `outbox`: offers what the pump
    /// wants, returns the keys offered.
    fn round(pump: &mut OutboxPump, outbox: &BTreeSet<u64>) -> Vec<u64> {
        let Some((from, max)) = pump.want() else {
            return vec![];
        };
        let keys: Vec<u64> = outbox
            .range(from..)
            .filter(|k| !pump.is_offered(**k))
            .take(max)
            .copied()
            .collect();
        for &k in &keys {
            pump.offered(k);
        }
        keys
    }

    #[test]
    fn nothing_is_offered_before_the_first_connection() {
        let mut pump = OutboxPump::new(4);
        assert_eq!(pump.want(), None);
        assert!(!pump.disconnected(), "it was never connected");
    }

    #[test]
    fn at_most_a_window_is_offered_and_each_acknowledgement_frees_one_place() {
        let mut pump = OutboxPump::new(3);
        let mut outbox: BTreeSet<u64> = (1..=10).collect();
        pump.connected();
        assert_eq!(round(&mut pump, &outbox), [1, 2, 3]);
        assert_eq!(
            round(&mut pump, &outbox),
            [] as [u64; 0],
            "the window is full"
        );
        // The broker acknowledges 2: it leaves the outbox, and one more entry goes out.
        pump.published(&[2]);
        outbox.remove(&2);
        assert_eq!(round(&mut pump, &outbox), [4]);
        // Entries appended later are offered in order once there is room.
        outbox.insert(11);
        pump.published(&[1, 3, 4]);
        outbox.retain(|k| ![1, 3, 4].contains(k));
        assert_eq!(round(&mut pump, &outbox), [5, 6, 7]);
    }

    #[test]
    fn a_reconnection_offers_every_unacknowledged_entry_again_from_the_oldest() {
        let mut pump = OutboxPump::new(3);
        let mut outbox: BTreeSet<u64> = (1..=5).collect();
        pump.connected();
        assert_eq!(round(&mut pump, &outbox), [1, 2, 3]);
        pump.published(&[1]);
        outbox.remove(&1);
        assert!(pump.disconnected());
        assert_eq!(
            round(&mut pump, &outbox),
            [] as [u64; 0],
            "nothing while disconnected"
        );
        pump.connected();
        assert_eq!(
            round(&mut pump, &outbox),
            [2, 3, 4],
            "2 and 3 were never acknowledged"
        );
    }

    /// Keys as the queue makes them: class in the top byte.
    fn key(class: u64, seq: u64) -> u64 {
        (class << 56) | seq
    }

    #[test]
    fn an_urgent_entry_committed_below_the_read_position_is_offered_next() {
        let mut pump = OutboxPump::new(3);
        let mut outbox: BTreeSet<u64> = (1..=6).map(|s| key(4, s)).collect();
        pump.connected();
        assert_eq!(round(&mut pump, &outbox), [key(4, 1), key(4, 2), key(4, 3)]);
        pump.published(&[key(4, 1)]);
        outbox.remove(&key(4, 1));
        // A P0 event is committed: its key is below everything offered.
        outbox.insert(key(0, 7));
        pump.appended(key(0, 7));
        assert_eq!(
            round(&mut pump, &outbox),
            [key(0, 7)],
            "the P0 event first, the offered P4 events not again"
        );
        pump.published(&[key(4, 2), key(4, 3)]);
        outbox.remove(&key(4, 2));
        outbox.remove(&key(4, 3));
        assert_eq!(
            round(&mut pump, &outbox),
            [key(4, 4), key(4, 5)],
            "then the P4 backlog, in order"
        );
    }
}
