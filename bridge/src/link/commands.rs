//! The queue of [`LinkCommand`]s from the core to one link: bounded, first in first out, and
//! holding no room for commands while it holds none.
//!
//! tokio's `mpsc::channel` allocates a block of 32 slots when it is created, whatever its
//! bound: with 64-byte commands that is 2.4 KiB per link (heaptrack, edge-bench phase 9), idle
//! or not, against about 150 bytes here. The core sends with [`CommandSender::try_send`]
//! (never waiting: a full queue is a device not keeping up, and the core deals with the
//! command itself); the link's driver receives with [`CommandReceiver::recv`] inside its
//! `select!`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::sync::mpsc::error::TrySendError;

use super::LinkCommand;

/// A queue of at most `capacity` commands, and its two ends.
pub fn channel(capacity: usize) -> (CommandSender, CommandReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receiving: true,
        }),
        arrived: Notify::new(),
    });
    let sender = CommandSender {
        shared: shared.clone(),
        capacity,
    };
    (sender, CommandReceiver { shared })
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the receiver: a command arrived, or the last sender went away. A notification
    /// with no receiver waiting is kept for its next wait, so none is lost between its look
    /// at the queue and its wait.
    arrived: Notify,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<LinkCommand>,
    /// Senders alive: with none left, the receiver gets `None` once the queue is empty.
    senders: usize,
    /// Whether the receiver is alive: without it, sends are refused as closed.
    receiving: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one holds a valid queue still.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The core's end; cloned for every holder.
#[derive(Debug)]
pub struct CommandSender {
    shared: Arc<Shared>,
    capacity: usize,
}

impl CommandSender {
    /// Queues `command` without waiting, or hands it back: `Full` when `capacity` commands
    /// wait already, `Closed` when the link has ended.
    pub fn try_send(&self, command: LinkCommand) -> Result<(), TrySendError<LinkCommand>> {
        let mut state = self.shared.lock();
        if !state.receiving {
            return Err(TrySendError::Closed(command));
        }
        if state.queue.len() >= self.capacity {
            return Err(TrySendError::Full(command));
        }
        state.queue.push_back(command);
        drop(state);
        self.shared.arrived.notify_one();
        Ok(())
    }
}

impl Clone for CommandSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
            capacity: self.capacity,
        }
    }
}

impl Drop for CommandSender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.shared.arrived.notify_one();
        }
    }
}

/// The link's end.
#[derive(Debug)]
pub struct CommandReceiver {
    shared: Arc<Shared>,
}

impl CommandReceiver {
    /// The next command, in the order they were sent; `None` once every sender is gone and
    /// every command was taken. Cancel-safe (a `select!` branch): a command is taken only by
    /// the poll that returns it.
    pub async fn recv(&mut self) -> Option<LinkCommand> {
        loop {
            {
                let mut state = self.shared.lock();
                if let Some(command) = state.queue.pop_front() {
                    if state.queue.is_empty() {
                        // The room a burst took goes back: an idle link keeps none.
                        state.queue = VecDeque::new();
                    }
                    return Some(command);
                }
                if state.senders == 0 {
                    return None;
                }
            }
            self.shared.arrived.notified().await;
        }
    }

    /// Commands it has room for without allocating.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.shared.lock().queue.capacity()
    }
}

impl Drop for CommandReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiving = false;
        // Commands never taken go now, not with the last sender.
        state.queue = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use device_core::proto::Cancel;

    use super::*;

    fn cancel(handle: u32) -> LinkCommand {
        LinkCommand::Cancel(Cancel { handle })
    }

    fn handle(command: Option<LinkCommand>) -> Option<u32> {
        match command {
            Some(LinkCommand::Cancel(c)) => Some(c.handle),
            other => panic!("expected a Cancel, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn commands_arrive_in_order_and_one_beyond_the_bound_is_handed_back() {
        let (tx, mut rx) = channel(3);
        for h in 1..=3 {
            tx.try_send(cancel(h)).unwrap();
        }
        match tx.try_send(cancel(4)) {
            Err(TrySendError::Full(LinkCommand::Cancel(c))) => assert_eq!(c.handle, 4),
            other => panic!("expected Full with the command, got {other:?}"),
        }
        for h in 1..=3 {
            assert_eq!(handle(rx.recv().await), Some(h));
        }
        tx.try_send(cancel(5)).unwrap();
        assert_eq!(handle(rx.recv().await), Some(5));
    }

    #[tokio::test]
    async fn an_empty_queue_holds_no_room() {
        let (tx, mut rx) = channel(64);
        assert_eq!(rx.room(), 0);
        for h in 0..20 {
            tx.try_send(cancel(h)).unwrap();
        }
        assert!(rx.room() >= 20);
        for _ in 0..20 {
            rx.recv().await.unwrap();
        }
        assert_eq!(rx.room(), 0, "given back once empty");
    }

    /// A waker that records that it was woken.
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Polls `recv` once (it must be waiting), runs `then`, and checks that it woke the
    /// receiver, whose next poll gives what it got.
    fn woken_by(rx: &mut CommandReceiver, then: impl FnOnce()) -> Option<LinkCommand> {
        use std::future::Future;
        use std::sync::atomic::Ordering;
        use std::task::{Context, Poll, Waker};
        let woken = std::sync::Arc::new(Woken(false.into()));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut recv = std::pin::pin!(rx.recv());
        assert!(recv.as_mut().poll(&mut cx).is_pending(), "waiting");
        then();
        assert!(woken.0.load(Ordering::SeqCst), "woken");
        match recv.as_mut().poll(&mut cx) {
            Poll::Ready(got) => got,
            Poll::Pending => panic!("woken, and still waiting"),
        }
    }

    #[test]
    fn the_receiver_waits_for_a_command_sent_later() {
        let (tx, mut rx) = channel(4);
        let got = woken_by(&mut rx, || tx.try_send(cancel(9)).unwrap());
        assert_eq!(handle(got), Some(9));
    }

    #[tokio::test]
    async fn the_queue_ends_after_its_commands_when_every_sender_is_gone() {
        let (tx, mut rx) = channel(4);
        let other = tx.clone();
        tx.try_send(cancel(1)).unwrap();
        drop(tx);
        other.try_send(cancel(2)).unwrap();
        assert_eq!(handle(rx.recv().await), Some(1));
        assert_eq!(handle(rx.recv().await), Some(2));
        assert!(woken_by(&mut rx, || drop(other)).is_none(), "ended");
    }

    #[tokio::test]
    async fn a_send_to_an_ended_link_is_handed_back_as_closed() {
        let (tx, rx) = channel(4);
        drop(rx);
        match tx.try_send(cancel(3)) {
            Err(TrySendError::Closed(LinkCommand::Cancel(c))) => assert_eq!(c.handle, 3),
            other => panic!("expected Closed with the command, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_receive_given_up_loses_no_command() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let (tx, mut rx) = channel(4);
        // Given up while waiting, as a select! gives up its other branches.
        {
            let mut pending = std::pin::pin!(rx.recv());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(pending.as_mut().poll(&mut cx).is_pending());
        }
        // Given up after the command woke it and before it was polled again.
        {
            let mut pending = std::pin::pin!(rx.recv());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(pending.as_mut().poll(&mut cx).is_pending());
            tx.try_send(cancel(7)).unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(handle(got.unwrap()), Some(7));
    }
}
