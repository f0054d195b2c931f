//! Discovery by capability: the retained `{root}/capabilities/{name}` documents, kept current
//! as devices come and go and their slots fill and free.
//!
//! A device whose session begins or ends, or whose free slots may have changed, is marked
//! touched; at the end of each dispatch the capabilities it offers (or offered) are looked at
//! again. A capability that gained or lost a device is published at once; one whose figures
//! only changed is published at most once per [`SLOTS_EVERY_MS`], so a busy bridge does not
//! write a document per task. Documents go through the durable outbox, like the devices' own,
//! and the names of those on the broker are kept in the queue, so a restart clears the
//! documents of capabilities no online device offers any more.

use std::collections::{BTreeMap, BTreeSet};

use super::Engine;
use crate::api::{self, CapabilityDevice, CapabilityDocument, MAX_LISTED};
use crate::queue::OutboxEntry;
use crate::time::Now;

/// Shortest time between two documents of a capability whose devices stayed the same.
pub(super) const SLOTS_EVERY_MS: u64 = 1000;

#[derive(Debug, Default)]
pub(super) struct Discovery {
    /// Devices whose session began or ended, or whose free slots may have changed, since the
    /// last refresh.
    touched: BTreeSet<String>,
    /// The capabilities each device is listed under now (so a device that went offline is
    /// taken out of them without its `Hello`).
    listed_under: BTreeMap<String, Vec<String>>,
    /// The online devices offering each capability.
    members: BTreeMap<String, BTreeSet<String>>,
    /// Each capability's last document, and when it was made (timer clock ms): a document is
    /// published only when its figures change.
    last: BTreeMap<String, (CapabilityDocument, u64)>,
    /// Capabilities whose figures changed too soon after their last document: published then.
    due: BTreeMap<String, u64>,
    /// Whether the documents left from before the start were looked at.
    resumed: bool,
}

impl Discovery {
    /// Device `id`'s session began or ended, or its free slots may have changed.
    pub(super) fn touch(&mut self, id: &str) {
        if !self.touched.contains(id) {
            self.touched.insert(id.to_owned());
        }
    }
}

impl Engine {
    /// Publishes the capability documents that changed (staged in the outbox, out after the
    /// next commit). Returns when the next delayed one is due (timer clock).
    pub(super) fn refresh_discovery(&mut self, now: Now) -> Option<u64> {
        let mut joined_or_left = BTreeSet::new();
        let mut figures = BTreeSet::new();
        for id in std::mem::take(&mut self.discovery.touched) {
            let offered: Vec<String> = self
                .devices
                .get(&id)
                .map(|o| {
                    o.hello
                        .capabilities
                        .iter()
                        .map(|c| c.as_str().to_owned())
                        // A name that is no single topic level gets no document.
                        .filter(|c| api::valid_id(c))
                        .collect()
                })
                .unwrap_or_default();
            let before = self.discovery.listed_under.remove(&id).unwrap_or_default();
            for c in &before {
                if !offered.contains(c) {
                    if let Some(m) = self.discovery.members.get_mut(c) {
                        m.remove(&id);
                    }
                    joined_or_left.insert(c.clone());
                }
            }
            for c in &offered {
                if before.contains(c) {
                    figures.insert(c.clone());
                } else {
                    let m = self.discovery.members.entry(c.clone()).or_default();
                    m.insert(id.clone());
                    joined_or_left.insert(c.clone());
                }
            }
            if !offered.is_empty() {
                self.discovery.listed_under.insert(id, offered);
            }
        }
        if !self.discovery.resumed {
            // Documents published before this start: their devices are offline until they
            // come back, so each is cleared unless a device offers it already.
            self.discovery.resumed = true;
            joined_or_left.extend(self.queue.capability_docs().iter().cloned());
        }
        for c in &joined_or_left {
            self.discovery.due.remove(c);
            self.publish_capability(c, now);
        }
        for c in figures.difference(&joined_or_left) {
            let since = self.discovery.last.get(c).map(|(_, at)| *at);
            match since {
                Some(at) if now.ms < at.saturating_add(SLOTS_EVERY_MS) => {
                    let due = at.saturating_add(SLOTS_EVERY_MS);
                    self.discovery.due.entry(c.clone()).or_insert(due);
                }
                _ => self.publish_capability(c, now),
            }
        }
        let ready: Vec<String> = self
            .discovery
            .due
            .iter()
            .filter(|(_, at)| **at <= now.ms)
            .map(|(c, _)| c.clone())
            .collect();
        for c in ready {
            self.discovery.due.remove(&c);
            self.publish_capability(&c, now);
        }
        self.discovery.due.values().min().copied()
    }

    /// Publishes capability `name`'s document if it differs from the last one, or clears it
    /// when no online device offers it.
    fn publish_capability(&mut self, name: &str, now: Now) {
        let mut devices: Vec<CapabilityDevice> = self
            .discovery
            .members
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let o = self.devices.get(id)?;
                Some(CapabilityDevice {
                    device_id: id.clone(),
                    free: o.credit,
                    in_flight: self.queue.in_flight(id).min(u32::MAX as usize) as u32,
                    // As dispatch counts it.
                    reserved: self.reserve_left(id, o),
                    slots: o.hello.slots,
                })
            })
            .collect();
        let subtopic = format!("capabilities/{name}");
        if devices.is_empty() {
            self.discovery.members.remove(name);
            self.discovery.last.remove(name);
            if self.queue.capability_docs().contains(name) {
                self.queue.notify(OutboxEntry {
                    subtopic,
                    payload: String::new(),
                    retain: true,
                });
                self.queue.set_capability_doc(name, false);
            }
            return;
        }
        let free = devices.iter().map(|d| d.free).sum();
        let online = devices.len().min(u32::MAX as usize) as u32;
        if devices.len() > MAX_LISTED {
            // The devices with the most room, listed by id.
            devices
                .sort_unstable_by(|a, b| b.free.cmp(&a.free).then(a.device_id.cmp(&b.device_id)));
            devices.truncate(MAX_LISTED);
            devices.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
        }
        let doc = CapabilityDocument {
            capability: name.to_owned(),
            devices,
            free,
            online,
            ts_ms: now.wall_ms,
        };
        if self
            .discovery
            .last
            .get(name)
            .is_some_and(|(last, _)| same_figures(last, &doc))
        {
            return;
        }
        self.queue.notify(OutboxEntry::new(subtopic, &doc, true));
        self.queue.set_capability_doc(name, true);
        self.discovery.last.insert(name.to_owned(), (doc, now.ms));
    }
}

/// Whether two documents of a capability say the same (their times aside).
fn same_figures(a: &CapabilityDocument, b: &CapabilityDocument) -> bool {
    a.devices == b.devices && a.free == b.free && a.online == b.online
}
