//! Property test: random operation sequences run against the scheduler and against a simple
//! reference model, compared after every step.
//!
//! The model is deliberately naive and written differently from the implementation: tasks live
//! in a `Vec`, the next task is found by scanning, and a task's effective priority is defined
//! by reachability in the wait-for graph — the most urgent "own" priority (base, or ceiling of
//! a held ceiling lock) of any task that reaches it through donating waits — instead of the
//! implementation's incremental fixed-point passes. Agreement after every operation checks the
//! invariant `eff = max(base, ceilings held, eff of every waiter on every lock held)` together
//! with its minimality, the lock owners, states, the executing task, events and timers.

use std::collections::BTreeSet;

use device_core::{
    Acquire, Event, Instant, LockId, LockPolicy, Priority, SchedError, Scheduler, TaskId, TaskSpec,
    TaskState,
};
use proptest::prelude::*;

const N: usize = 6;
const L: usize = 3;
type Sched = Scheduler<N, L>;

#[derive(Clone, Debug)]
struct MTask {
    id: TaskId,
    base: Priority,
    state: TaskState,
    deadline: u64,
    release: u64,
    seq: u64,
    started: bool,
    /// (lock, wait-until or u64::MAX)
    waiting: Option<(usize, u64)>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    tasks: Vec<MTask>,
    owners: [Option<TaskId>; L],
    policies: [LockPolicy; L],
    current: Option<TaskId>,
    seq: u64,
    events: BTreeSet<String>,
    cov: Coverage,
}

/// How often the generated sequences reach the situations the property is about, by name;
/// the `generator_reaches_the_hard_cases` test keeps the generator from drifting into trivia.
type Coverage = std::collections::BTreeMap<&'static str, u32>;

/// The situations counted in [`Coverage`].
const HARD_CASES: [&str; 7] = [
    "transitive boost",    // a holder boosted by a waiter two or more hops away
    "out-of-order unlock", // unlock by a boosted task that still holds another lock
    "deadlock",
    "timed cycle", // a wait closing a cycle that contains a timed wait
    "wait timeout",
    "expiry",
    "ceiling violation",
];

impl Model {
    fn get(&self, id: TaskId) -> Option<&MTask> {
        self.tasks.iter().find(|t| t.id == id)
    }

    fn get_mut(&mut self, id: TaskId) -> &mut MTask {
        self.tasks.iter_mut().find(|t| t.id == id).unwrap()
    }

    fn own(&self, t: &MTask) -> Priority {
        let mut p = t.base;
        for l in 0..L {
            if let (Some(o), LockPolicy::Ceiling(c)) = (self.owners[l], self.policies[l]) {
                if o == t.id {
                    p = p.most_urgent(c);
                }
            }
        }
        p
    }

    /// Effective priority by reachability in the wait-for graph (see the file docs).
    fn eff(&self, id: TaskId) -> Priority {
        let mut reached = vec![id];
        loop {
            let before = reached.len();
            for t in &self.tasks {
                if let (TaskState::Blocked, Some((l, _))) = (t.state, t.waiting) {
                    let donates = self.policies[l] != LockPolicy::Plain;
                    let owner = self.owners[l].unwrap();
                    if donates && reached.contains(&owner) && !reached.contains(&t.id) {
                        reached.push(t.id);
                    }
                }
            }
            if reached.len() == before {
                break;
            }
        }
        reached
            .iter()
            .map(|&r| self.own(self.get(r).unwrap()))
            .min()
            .unwrap()
    }

    /// Ordering key among ready tasks and among waiters: smaller goes first.
    fn key(&self, t: &MTask) -> (Priority, u64, u64) {
        (self.eff(t.id), t.deadline, t.seq)
    }

    fn live(&self, id: TaskId) -> Result<&MTask, SchedError> {
        let t = self.get(id).ok_or(SchedError::UnknownTask)?;
        if is_terminal(t.state) {
            Err(SchedError::Finished)
        } else {
            Ok(t)
        }
    }

    fn executing(&self, id: TaskId) -> Result<(), SchedError> {
        self.live(id)?;
        if self.current == Some(id) {
            Ok(())
        } else {
            Err(SchedError::NotExecuting)
        }
    }

    fn admit(&mut self, id: TaskId, spec: TaskSpec, now: u64) {
        let deadline = spec.deadline.map_or(u64::MAX, Instant::as_millis);
        let release = spec.release_at.map_or(0, Instant::as_millis);
        let state = if deadline <= now {
            self.events.insert(format!("{:?}", Event::Expired(id)));
            TaskState::Expired
        } else if release > now {
            TaskState::Pending
        } else {
            TaskState::Ready
        };
        let seq = self.seq;
        self.seq += 1;
        self.tasks.push(MTask {
            id,
            base: spec.priority,
            state,
            deadline,
            release,
            seq,
            started: false,
            waiting: None,
        });
    }

    fn advance(&mut self, now: u64) {
        let mut events = vec![];
        for t in &mut self.tasks {
            let unstarted = matches!(t.state, TaskState::Pending | TaskState::Ready) && !t.started;
            if unstarted && t.deadline <= now {
                t.state = TaskState::Expired;
                events.push(Event::Expired(t.id));
            } else if t.state == TaskState::Pending && t.release <= now {
                t.state = TaskState::Ready;
            }
            if let (TaskState::Blocked, Some((l, until))) = (t.state, t.waiting) {
                if until <= now {
                    t.state = TaskState::Ready;
                    t.waiting = None;
                    events.push(Event::WaitTimedOut(t.id, LockId::new(l as u8)));
                }
            }
        }
        self.events.extend(events.iter().map(|e| format!("{e:?}")));
    }

    fn best_ready(&self) -> Option<TaskId> {
        let ready = self.tasks.iter().filter(|t| t.state == TaskState::Ready);
        ready.min_by_key(|t| self.key(t)).map(|t| t.id)
    }

    fn next(&mut self, now: u64) -> Option<TaskId> {
        self.advance(now);
        if let Some(cur) = self.current {
            match self.best_ready() {
                Some(r) if self.eff(r).outranks(self.eff(cur)) => {
                    self.get_mut(cur).state = TaskState::Ready;
                    self.current = None;
                }
                _ => return Some(cur),
            }
        }
        let pick = self.best_ready()?;
        let t = self.get_mut(pick);
        t.state = TaskState::Executing;
        t.started = true;
        self.current = Some(pick);
        Some(pick)
    }

    fn check_lock(&self, id: TaskId, l: u8) -> Result<usize, SchedError> {
        self.executing(id)?;
        let l = l as usize;
        if l >= L {
            return Err(SchedError::UnknownLock);
        }
        if self.owners[l] == Some(id) {
            return Err(SchedError::AlreadyHeld);
        }
        if let LockPolicy::Ceiling(c) = self.policies[l] {
            if self.get(id).unwrap().base.outranks(c) {
                return Err(SchedError::CeilingViolated);
            }
        }
        Ok(l)
    }

    fn lock(
        &mut self,
        id: TaskId,
        l: u8,
        until: Option<u64>,
        now: u64,
    ) -> Result<Acquire, SchedError> {
        let l = self.check_lock(id, l)?;
        let Some(mut holder) = self.owners[l] else {
            self.owners[l] = Some(id);
            return Ok(Acquire::Acquired);
        };
        if until.is_some_and(|u| u <= now) {
            return Err(SchedError::WouldBlock);
        }
        // Walk the wait-for chain from the holder; a deadlock is a cycle back to `id` on which
        // no wait has a timeout.
        let mut seen = vec![];
        let mut timed = until.is_some();
        while !seen.contains(&holder) {
            if holder == id {
                if !timed {
                    *self.cov.entry("deadlock").or_default() += 1;
                    return Err(SchedError::Deadlock);
                }
                *self.cov.entry("timed cycle").or_default() += 1;
                break;
            }
            seen.push(holder);
            let h = self.get(holder).unwrap();
            match (h.state, h.waiting) {
                (TaskState::Blocked, Some((hl, hu))) => {
                    timed |= hu != u64::MAX;
                    holder = self.owners[hl].unwrap();
                }
                _ => break,
            }
        }
        let t = self.get_mut(id);
        t.state = TaskState::Blocked;
        t.waiting = Some((l, until.unwrap_or(u64::MAX)));
        self.current = None;
        Ok(Acquire::Blocked)
    }

    fn try_lock(&mut self, id: TaskId, l: u8) -> Result<(), SchedError> {
        let l = self.check_lock(id, l)?;
        if self.owners[l].is_some() {
            return Err(SchedError::WouldBlock);
        }
        self.owners[l] = Some(id);
        Ok(())
    }

    fn hand_off(&mut self, l: usize) {
        let waiters = self
            .tasks
            .iter()
            .filter(|t| t.waiting.is_some_and(|(wl, _)| wl == l));
        let best = waiters.min_by_key(|t| self.key(t)).map(|t| t.id);
        self.owners[l] = best;
        if let Some(w) = best {
            let w = self.get_mut(w);
            w.waiting = None;
            w.state = TaskState::Ready;
        }
    }

    fn unlock(&mut self, id: TaskId, l: u8) -> Result<(), SchedError> {
        self.executing(id)?;
        let l = l as usize;
        if l >= L {
            return Err(SchedError::UnknownLock);
        }
        if self.owners[l] != Some(id) {
            return Err(SchedError::NotOwner);
        }
        let holds_another = (0..L).any(|k| k != l && self.owners[k] == Some(id));
        if holds_another && self.eff(id) != self.get(id).unwrap().base {
            *self.cov.entry("out-of-order unlock").or_default() += 1;
        }
        self.hand_off(l);
        Ok(())
    }

    fn finish(&mut self, id: TaskId, end: TaskState) {
        if self.current == Some(id) {
            self.current = None;
        }
        let t = self.get_mut(id);
        t.state = end;
        t.waiting = None;
        for l in 0..L {
            if self.owners[l] == Some(id) {
                self.hand_off(l);
            }
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        let times = self.tasks.iter().filter_map(|t| match t.state {
            TaskState::Pending => Some(t.release.min(t.deadline)),
            TaskState::Ready if !t.started => Some(t.deadline),
            TaskState::Blocked => Some(t.waiting.unwrap().1),
            _ => None,
        });
        times.filter(|&t| t != u64::MAX).min()
    }
}

fn is_terminal(s: TaskState) -> bool {
    s.is_terminal()
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Current,
    Any(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Admit {
        prio: u8,
        deadline: Option<u8>,
        release: Option<u8>,
    },
    Tick(u8),
    Lock(Who, u8, Option<u8>),
    TryLock(Who, u8),
    Unlock(Who, u8),
    Complete(Who),
    Fail(Who),
    Cancel(Who),
    SetBase(Who, u8),
    Remove(Who),
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![3 => Just(Who::Current), 2 => (0..64usize).prop_map(Who::Any)]
}

fn op() -> impl Strategy<Value = Op> {
    let lock = 0..=(L as u8); // L itself is out of range on purpose
    // Weighted towards lock traffic so that chains, cycles and timeouts are common (checked by
    // `generator_reaches_the_hard_cases`); finishing ops are rarer so that chains can grow.
    prop_oneof![
        6 => (0..6u8, proptest::option::weighted(0.2, 0..40u8), proptest::option::weighted(0.1, 0..10u8))
            .prop_map(|(prio, deadline, release)| Op::Admit { prio, deadline, release }),
        6 => (0..4u8).prop_map(Op::Tick),
        16 => (who(), lock.clone(), proptest::option::weighted(0.3, 0..12u8))
            .prop_map(|(w, l, t)| Op::Lock(w, l, t)),
        2 => (who(), lock.clone()).prop_map(|(w, l)| Op::TryLock(w, l)),
        5 => (who(), lock).prop_map(|(w, l)| Op::Unlock(w, l)),
        2 => who().prop_map(Op::Complete),
        1 => who().prop_map(Op::Fail),
        1 => who().prop_map(Op::Cancel),
        3 => (who(), 0..6u8).prop_map(|(w, p)| Op::SetBase(w, p)),
        2 => who().prop_map(Op::Remove),
    ]
}

fn policy() -> impl Strategy<Value = LockPolicy> {
    prop_oneof![
        4 => Just(LockPolicy::Inherit),
        1 => (0..6u8).prop_map(|p| LockPolicy::Ceiling(Priority::from_level(p).unwrap())),
        1 => Just(LockPolicy::Plain),
    ]
}

fn prio(p: u8) -> Priority {
    Priority::from_level(p).unwrap()
}

/// Compares everything observable, after every operation.
fn compare(s: &mut Sched, m: &mut Model, step: usize) {
    for t in &m.tasks {
        let id = t.id;
        assert_eq!(s.state(id), Some(t.state), "step {step}: state of {id:?}");
        assert_eq!(
            s.base_priority(id),
            Some(t.base),
            "step {step}: base of {id:?}"
        );
        assert_eq!(
            s.effective_priority(id),
            Some(m.eff(id)),
            "step {step}: eff of {id:?}"
        );
        let waiting = t.waiting.map(|(l, _)| LockId::new(l as u8));
        assert_eq!(s.waiting_on(id), waiting, "step {step}: wait of {id:?}");
    }
    for (l, owner) in m.owners.iter().enumerate() {
        assert_eq!(
            s.lock_owner(LockId::new(l as u8)),
            *owner,
            "step {step}: owner of lock {l}"
        );
    }
    assert_eq!(s.current(), m.current, "step {step}: executing task");
    assert_eq!(s.free_slots(), N - m.tasks.len(), "step {step}: free slots");
    assert_eq!(
        s.poll_timeout().map(Instant::as_millis),
        m.poll_timeout(),
        "step {step}: timer"
    );
    // Coverage: a holder boosted beyond what its direct waiters own is a transitive boost.
    let transitive = m.tasks.iter().any(|t| {
        let direct = m.tasks.iter().filter(|w| {
            w.waiting.is_some_and(|(l, _)| {
                m.owners[l] == Some(t.id) && m.policies[l] != LockPolicy::Plain
            })
        });
        let direct = direct.map(|w| m.own(w)).chain([m.own(t)]).min().unwrap();
        m.eff(t.id).outranks(direct)
    });
    *m.cov.entry("transitive boost").or_default() += u32::from(transitive);
    for e in &m.events {
        let case = if e.starts_with("Expired") {
            "expiry"
        } else {
            "wait timeout"
        };
        *m.cov.entry(case).or_default() += 1;
    }
    let mut events = BTreeSet::new();
    while let Some(e) = s.poll_event() {
        events.insert(format!("{e:?}"));
    }
    assert_eq!(events, std::mem::take(&mut m.events), "step {step}: events");
}

fn run(policies: [LockPolicy; L], ops: Vec<Op>) -> Coverage {
    let mut s = Sched::new();
    let mut m = Model {
        policies,
        ..Model::default()
    };
    for (l, p) in policies.iter().enumerate() {
        s.set_lock_policy(LockId::new(l as u8), *p).unwrap();
    }
    let mut ids: Vec<TaskId> = vec![];
    let mut now = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        // `Current` is the executing task, or any task when none executes; indexes wrap over
        // every handle ever issued, so stale handles are exercised too.
        let pick = |w: Who, s: &Sched| match (w, s.current()) {
            (Who::Current, Some(c)) => Some(c),
            _ if ids.is_empty() => None,
            (Who::Any(i), _) => Some(ids[i % ids.len()]),
            (Who::Current, None) => Some(ids[ids.len() - 1]),
        };
        match op {
            Op::Admit {
                prio: p,
                deadline,
                release,
            } => {
                let mut spec = TaskSpec::new(prio(p));
                if let Some(d) = deadline {
                    spec = spec.deadline(Instant::from_millis(now + u64::from(d)));
                }
                if let Some(r) = release {
                    spec = spec.release_at(Instant::from_millis(now + u64::from(r)));
                }
                match s.admit(spec, Instant::from_millis(now)) {
                    Ok(id) => {
                        assert!(m.tasks.len() < N, "step {step}: admitted beyond capacity");
                        ids.push(id);
                        m.admit(id, spec, now);
                    }
                    Err(back) => {
                        assert_eq!(back, spec, "step {step}: the spec is handed back");
                        assert_eq!(m.tasks.len(), N, "step {step}: refused with a free slot");
                    }
                }
            }
            Op::Tick(dt) => {
                now += u64::from(dt);
                let got = s.next(Instant::from_millis(now));
                assert_eq!(got, m.next(now), "step {step}: next()");
                assert!(
                    !s.should_preempt(),
                    "step {step}: next() left a preemption pending"
                );
            }
            Op::Lock(w, l, t) => {
                let Some(id) = pick(w, &s) else { continue };
                let until = t.map(|t| now + u64::from(t));
                let got = s.lock(
                    id,
                    LockId::new(l),
                    until.map(Instant::from_millis),
                    Instant::from_millis(now),
                );
                assert_eq!(got, m.lock(id, l, until, now), "step {step}: lock");
                if got == Err(SchedError::CeilingViolated) {
                    *m.cov.entry("ceiling violation").or_default() += 1;
                }
            }
            Op::TryLock(w, l) => {
                let Some(id) = pick(w, &s) else { continue };
                assert_eq!(
                    s.try_lock(id, LockId::new(l)),
                    m.try_lock(id, l),
                    "step {step}: try_lock"
                );
            }
            Op::Unlock(w, l) => {
                let Some(id) = pick(w, &s) else { continue };
                assert_eq!(
                    s.unlock(id, LockId::new(l)),
                    m.unlock(id, l),
                    "step {step}: unlock"
                );
            }
            Op::Complete(w) => {
                let Some(id) = pick(w, &s) else { continue };
                let want = m.executing(id).map(|()| m.finish(id, TaskState::Completed));
                assert_eq!(s.complete(id), want, "step {step}: complete");
            }
            Op::Fail(w) | Op::Cancel(w) => {
                let Some(id) = pick(w, &s) else { continue };
                let end = if matches!(op, Op::Fail(_)) {
                    TaskState::Failed
                } else {
                    TaskState::Cancelled
                };
                let want = m.live(id).map(drop).map(|()| m.finish(id, end));
                let got = if end == TaskState::Failed {
                    s.fail(id)
                } else {
                    s.cancel(id)
                };
                assert_eq!(got, want, "step {step}: {op:?}");
            }
            Op::SetBase(w, p) => {
                let Some(id) = pick(w, &s) else { continue };
                let want = m.live(id).map(drop).map(|()| m.get_mut(id).base = prio(p));
                assert_eq!(
                    s.set_base_priority(id, prio(p)),
                    want,
                    "step {step}: set_base_priority"
                );
            }
            Op::Remove(w) => {
                let Some(id) = pick(w, &s) else { continue };
                let want = match m.get(id) {
                    None => Err(SchedError::UnknownTask),
                    Some(t) if !is_terminal(t.state) => Err(SchedError::NotFinished),
                    Some(t) => {
                        let st = t.state;
                        m.tasks.retain(|t| t.id != id);
                        Ok(st)
                    }
                };
                assert_eq!(s.remove(id), want, "step {step}: remove");
            }
        }
        compare(&mut s, &mut m, step);
    }
    m.cov
}

fn cases() -> impl Strategy<Value = ([LockPolicy; L], Vec<Op>)> {
    (
        [policy(), policy(), policy()],
        proptest::collection::vec(op(), 1..120),
    )
}

#[test]
fn generator_reaches_the_hard_cases() {
    use proptest::strategy::ValueTree;
    let mut total = Coverage::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..2_000 {
        let (policies, ops) = cases().new_tree(&mut runner).unwrap().current();
        for (case, n) in run(policies, ops) {
            *total.entry(case).or_default() += n;
        }
    }
    println!("coverage over 2,000 generated sequences: {total:?}");
    for case in HARD_CASES {
        let n = total.get(case).copied().unwrap_or(0);
        assert!(n >= 10, "the generator reached {case} only {n} times");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn scheduler_matches_reference_model((policies, ops) in cases()) {
        run(policies, ops);
    }
}
