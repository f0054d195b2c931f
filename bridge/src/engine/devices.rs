//! The registry of online devices: sessions opening and ending, a device moving to a new
//! link, another device taking over a link.

use std::collections::{BTreeMap, HashMap};

use device_core::proto::{Hello, Preemption};

use super::Engine;
use crate::api::DeviceDocument;
use crate::dispatch::DeviceView;
use crate::link::{LinkCommand, LinkId};
use crate::queue::OutboxEntry;
use crate::time::Now;

/// An online device.
#[derive(Debug)]
pub(super) struct Online {
    /// The link its current session runs on: where its commands go.
    pub(super) link: LinkId,
    /// What it declared: capabilities, locks, slots, largest payload.
    pub(super) hello: Hello,
    /// `Assign`s its session can take now (its free slots, as last reported, less the
    /// `Assign`s sent since).
    pub(super) credit: u32,
    /// Of its slots, how many only urgent tasks may take (from the urgency policy, fixed for
    /// the session).
    pub(super) reserve: u32,
}

/// How device `hello` lets a started task of `capability` be preempted (protocol 2 declares it
/// per capability; older devices never stop a started task).
pub(super) fn preemption(hello: &Hello, capability: &str) -> Preemption {
    hello
        .capabilities
        .iter()
        .position(|c| c.as_str() == capability)
        .map_or(Preemption::Never, |i| {
            Preemption::of(i, hello.resumable, hello.restartable)
        })
}

impl Online {
    /// What the dispatch policy needs to know of it.
    /// `reserve_left`: its reserved slots not held by urgent tasks now.
    pub(super) fn view(&self, in_flight: u32, reserve_left: u32) -> DeviceView {
        DeviceView {
            capabilities: self
                .hello
                .capabilities
                .iter()
                .map(|c| c.to_string())
                .collect(),
            credit: self.credit,
            reserve: reserve_left,
            in_flight,
            max_payload: usize::from(self.hello.max_payload),
            locks: self.hello.locks.iter().map(|l| l.to_string()).collect(),
        }
    }
}

/// Online devices by id, and which device each link carries. Two maps because both questions
/// are asked: dispatch goes from a device to its link, a link's events from the link to its
/// device (and a link may carry a device's earlier session while its new one is elsewhere).
#[derive(Debug, Default)]
pub(super) struct Registry {
    by_id: BTreeMap<String, Online>,
    by_link: HashMap<LinkId, String>,
    /// `Assign`s sent to each open link: a link's credit report says how many it had taken
    /// when it counted, and the ones still on their way are not free slots.
    assigns_sent: HashMap<LinkId, u64>,
}

impl Registry {
    pub(super) fn get(&self, id: &str) -> Option<&Online> {
        self.by_id.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut Online> {
        self.by_id.get_mut(id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Online)> {
        self.by_id.iter()
    }

    /// The device `link` carries.
    pub(super) fn device_on(&self, link: LinkId) -> Option<&String> {
        self.by_link.get(&link)
    }

    /// The link device `id` is online on.
    pub(super) fn link_of(&self, id: &str) -> Option<LinkId> {
        self.by_id.get(id).map(|o| o.link)
    }

    /// The link counted `credit` free slots after taking `taken` `Assign`s: those sent since
    /// will take some of them.
    pub(super) fn set_credit(&mut self, link: LinkId, credit: u8, taken: u64) {
        let in_transit = self.assigns_sent(link).saturating_sub(taken);
        if let Some(online) = self.by_link.get(&link).and_then(|d| self.by_id.get_mut(d)) {
            online.credit =
                u32::from(credit).saturating_sub(in_transit.min(u64::from(u32::MAX)) as u32);
        }
    }

    /// `Assign`s sent to `link` since it opened.
    pub(super) fn assigns_sent(&self, link: LinkId) -> u64 {
        self.assigns_sent.get(&link).copied().unwrap_or(0)
    }

    /// One more `Assign` goes to `link`.
    pub(super) fn count_assign(&mut self, link: LinkId) {
        *self.assigns_sent.entry(link).or_default() += 1;
    }

    /// Whether some device could take an `Assign` now.
    pub(super) fn any_credit(&self) -> bool {
        self.by_id.values().any(|o| o.credit > 0)
    }
}

impl Engine {
    /// A device opened a session on `link`.
    pub(super) fn device_up(
        &mut self,
        link: LinkId,
        peer: &str,
        hello: Hello,
        rebooted: bool,
        credit: u8,
        now: Now,
    ) {
        let id = hello.device_id.to_string();
        // A link carries one device at a time: a session for another id on it (a serial
        // port whose device was swapped) ends the previous device's.
        if let Some(previous) = self
            .devices
            .by_link
            .get(&link)
            .filter(|d| **d != id)
            .cloned()
        {
            tracing::info!(device = %previous, link, by = %id, "another device took over the link");
            self.device_down(link, &format!("{id} opened a session on its link"), now);
        }
        if let Some(old) = self.devices.by_id.remove(&id) {
            if old.link == link {
                // A new session on the same link (a device that restarted behind a serial
                // port, or handshook again after the bridge went silent): the link stays.
                tracing::info!(device = %id, link, "device started a new session on its link");
            } else {
                tracing::info!(device = %id, old_link = old.link, "device reconnected; closing its previous link");
                self.staged.commands.push((old.link, LinkCommand::Close));
            }
            self.devices.by_link.remove(&old.link);
        }
        tracing::info!(device = %id, %peer, rebooted, credit, caps = ?hello.capabilities, locks = ?hello.locks, "device online");
        self.queue.set_offline(&id, Some(ONLINE));
        self.device_back(link, &hello, rebooted, now);
        let doc = DeviceDocument::new(
            &id,
            Some(&hello),
            true,
            &format!("connected from {peer}"),
            now.wall_ms,
        );
        self.queue
            .notify(OutboxEntry::new(format!("devices/{id}"), &doc, true));
        self.devices.by_link.insert(link, id.clone());
        self.discovery.touch(&id);
        let reserve = self.urgency.reserve_for(&id, hello.slots);
        self.devices.by_id.insert(
            id.clone(),
            Online {
                link,
                hello,
                credit: u32::from(credit),
                reserve,
            },
        );
        self.clamp_credit(&id);
    }

    /// Keeps device `id`'s credit within what it declared: its slots less the tasks the
    /// bridge knows are on it, whatever credit it advertises (a buggy or hostile device cannot
    /// take more work than its slots).
    pub(super) fn clamp_credit(&mut self, id: &str) {
        let on_it = self.queue.in_flight(id).min(usize::from(u8::MAX)) as u32;
        if let Some(online) = self.devices.by_id.get_mut(id) {
            let room = u32::from(online.hello.slots).saturating_sub(on_it);
            online.credit = online.credit.min(room);
        }
    }

    /// The connection of `link` ended.
    pub(super) fn device_down(&mut self, link: LinkId, reason: &str, now: Now) {
        self.devices.assigns_sent.remove(&link);
        self.freed_for.retain(|_, l| *l != link);
        let Some(device) = self.devices.by_link.remove(&link) else {
            return;
        };
        if self
            .devices
            .by_id
            .get(&device)
            .is_some_and(|o| o.link == link)
        {
            let old = self.devices.by_id.remove(&device);
            self.discovery.touch(&device);
            tracing::info!(%device, %reason, "device offline");
            let left: Vec<String> = self
                .queue
                .on_device(&device)
                .map(|t| t.sub.id.clone())
                .collect();
            for id in &left {
                self.take_back_over(id);
            }
            let doc = DeviceDocument::new(
                &device,
                old.as_ref().map(|o| &o.hello),
                false,
                reason,
                now.wall_ms,
            );
            self.queue
                .notify(OutboxEntry::new(format!("devices/{device}"), &doc, true));
            self.queue.set_offline(&device, Some(now.ms));
            self.device_gone(&device, now);
        }
    }

    /// Clears the retained document of every device offline for `devices.forget_after`
    /// (after a restart, a device that was online counts as offline from the first turn).
    /// Returns when the next one is due.
    pub(super) fn forget_devices(&mut self, now: Now) -> Option<u64> {
        if !self.offline_resumed {
            self.offline_resumed = true;
            let were_online: Vec<String> = self
                .queue
                .offline()
                .iter()
                .filter(|(id, since)| **since == ONLINE && self.devices.get(id).is_none())
                .map(|(id, _)| id.clone())
                .collect();
            for id in were_online {
                self.queue.set_offline(&id, Some(now.ms));
            }
        }
        if self.forget_after_ms == 0 {
            return None;
        }
        while let Some((since, id)) = self.queue.longest_offline() {
            let due = since.saturating_add(self.forget_after_ms);
            if due > now.ms {
                return Some(due);
            }
            let id = id.to_owned();
            tracing::info!(device = %id, after_ms = self.forget_after_ms, "device offline for devices.forget_after; its retained document is cleared");
            self.queue.notify(OutboxEntry {
                subtopic: format!("devices/{id}"),
                payload: String::new(),
                retain: true,
            });
            self.queue.set_offline(&id, None);
        }
        None
    }
}

/// In the queue's record of offline devices: online now (so offline from a restart on, if it
/// does not come back).
pub(super) const ONLINE: u64 = u64::MAX;
