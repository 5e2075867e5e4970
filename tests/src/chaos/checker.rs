//! The checker: reads a run's history and the fenced store's log and says what went wrong, if
//! anything, and how the lock behaved while it recovered.
//!
//! Three questions, answered independently of the code under test:
//!
//! 1. **Fenced safety**, from the store's own log of accepted writes: tokens strictly increase,
//!    the values are `1, 2, …, n` (none twice, none skipped), the register ends at `n`, and every
//!    write a worker saw acknowledged is in the log.
//! 2. **Exclusion in real time**, from the workers' records: a *hold* runs from the grant's answer
//!    (`acquire ok`) to the end of the body (`release invoke`), the loss noticed (`lost`), or the
//!    worker's death (the nemesis's kill). Holds of different processes that overlap are listed
//!    with the faults in force. An overlap is *explained* when a documented cause covers it: the
//!    earlier holder was stopped (SIGSTOP) past its lease — it cannot notice the loss until it
//!    runs again, and the fencing tokens are what stop its writes — or the lock's state was lost
//!    with a master (a restart without persistence, a failover to a replica that had not received
//!    the grant). Any other overlap is a violation.
//! 3. **Availability**: for each fault, how long after it began the next grant came, against a
//!    bound for its kind.

use std::collections::{BTreeMap, HashMap};

use super::history::{Event, Op, Type};

/// A write the fenced store accepted, in the store's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreWrite {
    /// The value written.
    pub value: u64,
    /// The fencing token it was written with.
    pub token: u64,
    /// The writer's lane.
    pub process: String,
    /// The writer's pid.
    pub pid: u32,
}

/// What the fenced store holds at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreState {
    /// Every accepted write, in order.
    pub log: Vec<StoreWrite>,
    /// The register's final value (0 when never written).
    pub register: u64,
    /// Reads the store refused because a newer token had touched it.
    pub rejected_reads: u64,
    /// Writes the store refused because a newer token had touched it.
    pub rejected_writes: u64,
}

/// One hold as its worker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The worker's lane.
    pub process: String,
    /// The worker's pid.
    pub pid: Option<u32>,
    /// The hold's fencing token.
    pub token: u64,
    /// The grant's answer (µs).
    pub start: u64,
    /// The end of the body, the loss noticed, the worker's death, or the end of the history.
    pub end: u64,
    /// How it ended.
    pub ended: HoldEnd,
}

/// How a hold ended, as far as its worker knew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The body ended and the release began.
    Released,
    /// The worker noticed the hold was lost.
    Lost,
    /// The worker died: the nemesis killed it, or it crashed (its lane started a new process;
    /// the hold then ends at the dead process's last record).
    Killed,
    /// The history ended first.
    Open,
}

/// A fault the nemesis injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Its number in the run.
    pub id: u64,
    /// Its kind (`kill-worker`, `pause-holder`, `partition-stall`, `failover-kill`, …).
    pub kind: String,
    /// The lane or node it hit.
    pub target: Option<String>,
    /// The target worker's pid, for faults on a worker.
    pub pid: Option<u32>,
    /// Injected (µs).
    pub start: u64,
    /// Healed (µs); the end of the history when it never was.
    pub end: u64,
    /// How long its main step took (µs): a failover, before the old master was back.
    pub took: Option<u64>,
    /// Its parameters and what the heal found.
    pub detail: Option<String>,
}

/// Whether a fault of `kind` can lose the lock's state on the server, so that a lock is granted
/// again while its holder still believes it holds it, as the documentation says can happen.
pub fn loses_lock_state(kind: &str) -> bool {
    matches!(kind, "restart-master" | "failover-kill" | "failover-pause")
}

/// Two holds of different processes at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The hold granted first.
    pub first: Hold,
    /// The hold granted while the first was still believed held.
    pub second: Hold,
    /// When both were held (µs).
    pub start: u64,
    /// Until when (µs).
    pub end: u64,
    /// The faults in force: injected before the overlap ended, healed less than a lease before
    /// it began.
    pub faults: Vec<u64>,
    /// The documented cause, when one covers it; `None` is a violation.
    pub explained_by: Option<String>,
}

impl Overlap {
    /// How long both were held (µs).
    pub fn duration(&self) -> u64 {
        self.end - self.start
    }
}

/// How long the lock stayed unobtainable after one fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The fault.
    pub fault: u64,
    /// The longest stretch without a grant from its start to the first grant after it healed
    /// (µs); `None` when no grant came after it before the history ended.
    pub unavailable: Option<u64>,
    /// What the documentation leads one to expect for its kind (µs).
    pub bound: u64,
    /// The next fault, when it began before that grant: the wait is partly its doing, so it is
    /// not held against this fault's bound.
    pub interrupted_by: Option<u64>,
}

impl Recovery {
    /// Whether the lock stayed unobtainable longer than the bound, this fault alone in force.
    pub fn over_bound(&self) -> bool {
        self.interrupted_by.is_none() && self.unavailable.is_some_and(|took| took > self.bound)
    }
}

/// What the checker found.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The first and last event's time (µs).
    pub span: (u64, u64),
    /// The lease the workers took (µs).
    pub lease: u64,
    /// Events counted by operation and type (`"acquire ok"`).
    pub operations: BTreeMap<String, usize>,
    /// Every hold, by start.
    pub holds: Vec<Hold>,
    /// Every fault, by start.
    pub faults: Vec<Fault>,
    /// Fenced-safety violations, each one sentence.
    pub safety: Vec<String>,
    /// Overlapping holds, by start.
    pub overlaps: Vec<Overlap>,
    /// One per fault.
    pub recoveries: Vec<Recovery>,
    /// The store at the end.
    pub store: StoreState,
    /// Failures of the history itself (an event that contradicts the ones before).
    pub malformed: Vec<String>,
}

impl Analysis {
    /// Whether the run passed: no safety violation, no unexplained overlap, a well-formed history.
    pub fn valid(&self) -> bool {
        self.safety.is_empty() && self.unexplained().next().is_none() && self.malformed.is_empty()
    }

    /// The overlaps no documented cause covers.
    pub fn unexplained(&self) -> impl Iterator<Item = &Overlap> {
        self.overlaps
            .iter()
            .filter(|overlap| overlap.explained_by.is_none())
    }

    /// The fault with number `id`.
    pub fn fault(&self, id: u64) -> Option<&Fault> {
        self.faults.iter().find(|fault| fault.id == id)
    }

    /// How many events of `op` with `kind` (`count("acquire", "ok")`).
    pub fn count(&self, op: &str, kind: &str) -> usize {
        self.operations
            .get(&format!("{op} {kind}"))
            .copied()
            .unwrap_or(0)
    }
}

/// The checker's verdict on `events` (sorted by time) and the store, for workers taking holds
/// of `lease` µs.
pub fn check(events: &[Event], store: StoreState, lease: u64) -> Analysis {
    let span = (
        events.first().map_or(0, |e| e.time),
        events.last().map_or(0, |e| e.time),
    );
    let mut operations = BTreeMap::new();
    for event in events {
        *operations
            .entry(format!("{} {}", name(event.f), type_name(event.kind)))
            .or_insert(0) += 1;
    }
    let mut malformed = Vec::new();
    let faults = faults(events, span.1, &mut malformed);
    let holds = holds(events, span.1, &mut malformed);
    let safety = fenced_safety(events, &store);
    let overlaps = overlaps(&holds, &faults, lease);
    let recoveries = recoveries(events, &faults, lease);
    Analysis {
        span,
        lease,
        operations,
        holds,
        faults,
        safety,
        overlaps,
        recoveries,
        store,
        malformed,
    }
}

/// An operation's name in the history.
pub fn name(op: Op) -> &'static str {
    match op {
        Op::Start => "start",
        Op::Acquire => "acquire",
        Op::Read => "read",
        Op::Write => "write",
        Op::Release => "release",
        Op::Lost => "lost",
        Op::Fault => "fault",
    }
}

/// A type's name in the history.
pub fn type_name(kind: Type) -> &'static str {
    match kind {
        Type::Invoke => "invoke",
        Type::Ok => "ok",
        Type::Fail => "fail",
        Type::Info => "info",
    }
}

fn faults(events: &[Event], last: u64, malformed: &mut Vec<String>) -> Vec<Fault> {
    let mut faults: Vec<Fault> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    for event in events.iter().filter(|e| e.f == Op::Fault) {
        let Some(id) = event.id else {
            malformed.push(format!("a fault event without an id at {}", event.time));
            continue;
        };
        match event.kind {
            Type::Invoke => {
                open.insert(id, faults.len());
                faults.push(Fault {
                    id,
                    kind: event.fault.clone().unwrap_or_default(),
                    target: event.target.clone(),
                    pid: event.pid,
                    start: event.time,
                    end: last,
                    took: None,
                    detail: event.detail.clone(),
                });
            }
            _ => match open.remove(&id) {
                Some(index) => {
                    let fault = &mut faults[index];
                    fault.end = event.time;
                    fault.took = event.took;
                    if let Some(detail) = &event.detail {
                        fault.detail = Some(match &fault.detail {
                            Some(before) => format!("{before}; {detail}"),
                            None => detail.clone(),
                        });
                    }
                }
                None => malformed.push(format!("fault {id} healed but never injected")),
            },
        }
    }
    faults
}

fn holds(events: &[Event], last: u64, malformed: &mut Vec<String>) -> Vec<Hold> {
    let mut holds = Vec::new();
    // Open holds by (lane, pid).
    let mut open: HashMap<(String, Option<u32>), Hold> = HashMap::new();
    let mut close = |open: &mut HashMap<_, Hold>, key: &(String, Option<u32>), at, ended| {
        if let Some(mut hold) = open.remove(key) {
            hold.end = at;
            hold.ended = ended;
            holds.push(hold);
        }
    };
    // When each process was last heard of: a worker that died without the nemesis (a crash)
    // is known dead once its lane starts a new process, and took no step after its last record
    // (every step is recorded before it is taken).
    let mut last_seen: HashMap<(String, Option<u32>), u64> = HashMap::new();
    for event in events {
        let key = (event.process.clone(), event.pid);
        if event.f == Op::Start {
            let dead: Vec<(String, Option<u32>)> = open
                .keys()
                .filter(|(lane, pid)| *lane == event.process && *pid != event.pid)
                .cloned()
                .collect();
            for gone in dead {
                let at = last_seen.get(&gone).copied().unwrap_or(event.time);
                close(&mut open, &gone, at, HoldEnd::Killed);
            }
        }
        if event.process != "nemesis" {
            last_seen.insert(key.clone(), event.time);
        }
        match (event.f, event.kind) {
            (Op::Acquire, Type::Ok) => {
                let Some(token) = event.token else {
                    malformed.push(format!(
                        "{} pid {:?}: a grant without a token at {}",
                        event.process, event.pid, event.time
                    ));
                    continue;
                };
                if open.contains_key(&key) {
                    malformed.push(format!(
                        "{} pid {:?}: granted at {} while its previous hold was still open",
                        event.process, event.pid, event.time
                    ));
                    close(&mut open, &key, event.time, HoldEnd::Released);
                }
                open.insert(
                    key,
                    Hold {
                        process: event.process.clone(),
                        pid: event.pid,
                        token,
                        start: event.time,
                        end: last,
                        ended: HoldEnd::Open,
                    },
                );
            }
            (Op::Release, Type::Invoke) => close(&mut open, &key, event.time, HoldEnd::Released),
            (Op::Lost, _) => close(&mut open, &key, event.time, HoldEnd::Lost),
            (Op::Fault, Type::Invoke) if event.fault.as_deref() == Some("kill-worker") => {
                if let Some(target) = &event.target {
                    close(
                        &mut open,
                        &(target.clone(), event.pid),
                        event.time,
                        HoldEnd::Killed,
                    );
                }
            }
            _ => {}
        }
    }
    let mut rest: Vec<Hold> = open.into_values().collect();
    rest.iter_mut().for_each(|hold| hold.end = last);
    holds.extend(rest);
    holds.sort_by_key(|hold| (hold.start, hold.end));
    holds
}

fn fenced_safety(events: &[Event], store: &StoreState) -> Vec<String> {
    let mut violations = Vec::new();
    let log = &store.log;
    for (at, pair) in log.windows(2).enumerate() {
        if pair[1].token <= pair[0].token {
            violations.push(format!(
                "accepted write #{} (value {} by {} pid {}) has token {}, not above the token {} \
                 of write #{} (value {} by {} pid {})",
                at + 2,
                pair[1].value,
                pair[1].process,
                pair[1].pid,
                pair[1].token,
                pair[0].token,
                at + 1,
                pair[0].value,
                pair[0].process,
                pair[0].pid
            ));
        }
    }
    let mut writers: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (at, write) in log.iter().enumerate() {
        writers.entry(write.value).or_default().push(at);
    }
    for (value, at) in writers.iter().filter(|(_, at)| at.len() > 1) {
        let who: Vec<String> = at
            .iter()
            .map(|&i| {
                format!(
                    "#{} by {} pid {} token {}",
                    i + 1,
                    log[i].process,
                    log[i].pid,
                    log[i].token
                )
            })
            .collect();
        violations.push(format!(
            "value {value} written {} times: {}",
            at.len(),
            who.join(", ")
        ));
    }
    for (at, write) in log.iter().enumerate() {
        let expected = at as u64 + 1;
        let twice = writers.get(&write.value).is_some_and(|w| w.len() > 1);
        if write.value != expected && !twice {
            violations.push(format!(
                "accepted write #{} wrote {}, not {expected}: an update was lost or reordered",
                at + 1,
                write.value
            ));
        }
    }
    if store.register != log.len() as u64 {
        violations.push(format!(
            "the register ends at {}, but the store accepted {} writes",
            store.register,
            log.len()
        ));
    }
    for event in events
        .iter()
        .filter(|e| e.f == Op::Write && e.kind == Type::Ok)
    {
        let found = log.iter().any(|write| {
            Some(write.value) == event.value
                && Some(write.token) == event.token
                && write.process == event.process
                && Some(write.pid) == event.pid
        });
        if !found {
            violations.push(format!(
                "acknowledged write lost: {} pid {:?} wrote {:?} with token {:?} at {}, and the \
                 store has no such write",
                event.process, event.pid, event.value, event.token, event.time
            ));
        }
    }
    violations
}

fn overlaps(holds: &[Hold], faults: &[Fault], lease: u64) -> Vec<Overlap> {
    let mut overlaps = Vec::new();
    for (i, second) in holds.iter().enumerate() {
        for first in &holds[..i] {
            let same_process = first.process == second.process && first.pid == second.pid;
            if same_process || first.end <= second.start {
                continue;
            }
            let (start, end) = (second.start, first.end.min(second.end));
            if end <= start {
                continue;
            }
            let in_force: Vec<&Fault> = faults
                .iter()
                .filter(|fault| fault.start <= end && start <= fault.end + lease)
                .collect();
            let explained_by = in_force.iter().find_map(|fault| {
                let stalled_first = fault.kind.starts_with("pause-")
                    && fault.kind != "pause-master"
                    && fault.target.as_deref() == Some(first.process.as_str())
                    && fault.pid == first.pid;
                if stalled_first {
                    Some(format!(
                        "fault {} stopped {}'s process past its lease; its writes are fenced",
                        fault.id, first.process
                    ))
                } else if loses_lock_state(&fault.kind) {
                    Some(format!(
                        "fault {} ({}) lost the lock's state on the server",
                        fault.id, fault.kind
                    ))
                } else {
                    None
                }
            });
            overlaps.push(Overlap {
                first: first.clone(),
                second: second.clone(),
                start,
                end,
                faults: in_force.iter().map(|fault| fault.id).collect(),
                explained_by,
            });
        }
    }
    overlaps.sort_by_key(|overlap| overlap.start);
    overlaps
}

/// What to expect after a fault of `kind` that lasted `duration` µs (a failover: until the
/// replica was promoted), with holds of `lease` µs:
/// a dead, stopped or cut-off holder keeps the lock until its lease ends; a server that is gone
/// or being replaced keeps it for the fault's duration; either way the waiters need up to a third
/// of the lease more (a retry, a reconnection, a renewal cycle).
pub fn recovery_bound(kind: &str, duration: u64, lease: u64) -> u64 {
    let slack = lease / 3;
    match kind {
        "kill-worker" | "pause-holder" | "pause-worker" => lease + slack,
        kind if kind.starts_with("partition") => lease + slack,
        "restart-master" | "move-slot" => slack,
        _ => duration + slack,
    }
}

fn recoveries(events: &[Event], faults: &[Fault], lease: u64) -> Vec<Recovery> {
    let grants: Vec<u64> = events
        .iter()
        .filter(|e| e.f == Op::Acquire && e.kind == Type::Ok)
        .map(|e| e.time)
        .collect();
    faults
        .iter()
        .enumerate()
        .map(|(at, fault)| {
            // The longest stretch without a grant from the fault's start to the first grant
            // after it healed: a master fault's outage may begin after its start (the harness
            // finds the master first) and a grant already in flight may land inside it.
            let from = grants.partition_point(|&t| t < fault.start);
            let after = grants.partition_point(|&t| t <= fault.end);
            let grant = grants.get(after).copied();
            let unavailable = grant.map(|grant| {
                std::iter::once(fault.start)
                    .chain(grants[from..after].iter().copied())
                    .chain(std::iter::once(grant))
                    .collect::<Vec<u64>>()
                    .windows(2)
                    .map(|pair| pair[1] - pair[0])
                    .max()
                    .unwrap_or(0)
            });
            let interrupted_by = faults
                .get(at + 1)
                .filter(|next| grant.is_none_or(|grant| next.start < grant))
                .map(|next| next.id);
            Recovery {
                fault: fault.id,
                unavailable,
                bound: recovery_bound(
                    &fault.kind,
                    fault.took.unwrap_or(fault.end - fault.start),
                    lease,
                ),
                interrupted_by,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: u64 = 1_000_000;

    /// A tiny history builder: events are appended in time order.
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
        log: Vec<StoreWrite>,
    }

    impl H {
        fn ev(&mut self, time: u64, process: &str, kind: Type, f: Op) -> &mut Event {
            let mut event = Event::new(time, process, kind, f);
            event.pid = Some(pid(process));
            self.events.push(event);
            self.events.last_mut().unwrap()
        }

        /// A whole round of `process`: granted at `start` with `token`, writes `value`, ends at
        /// `end`; the store accepts the write when `accepted`.
        fn round(&mut self, process: &str, start: u64, end: u64, token: u64, value: u64) {
            self.ev(start - 5, process, Type::Invoke, Op::Acquire);
            self.ev(start, process, Type::Ok, Op::Acquire).token = Some(token);
            self.ev(start + 1, process, Type::Invoke, Op::Write).value = Some(value);
            let ok = self.ev(start + 2, process, Type::Ok, Op::Write);
            ok.value = Some(value);
            ok.token = Some(token);
            self.log.push(StoreWrite {
                value,
                token,
                process: process.to_owned(),
                pid: pid(process),
            });
            self.ev(end, process, Type::Invoke, Op::Release);
            self.ev(end + 3, process, Type::Ok, Op::Release);
        }

        fn fault(&mut self, id: u64, kind: &str, target: &str, start: u64, end: u64) {
            let event = self.ev(start, "nemesis", Type::Invoke, Op::Fault);
            event.id = Some(id);
            event.fault = Some(kind.to_owned());
            event.target = Some(target.to_owned());
            event.pid = target.starts_with('w').then(|| pid(target));
            let event = self.ev(end, "nemesis", Type::Ok, Op::Fault);
            event.id = Some(id);
            event.pid = None;
        }

        fn check(&mut self) -> Analysis {
            self.events.sort_by_key(|e| e.time);
            let register = self.log.last().map_or(0, |w| w.value);
            check(
                &self.events,
                StoreState {
                    log: self.log.clone(),
                    register,
                    ..StoreState::default()
                },
                LEASE,
            )
        }
    }

    fn pid(process: &str) -> u32 {
        process.trim_start_matches('w').parse::<u32>().unwrap_or(0) + 100
    }

    #[test]
    fn holds_taken_in_turn_pass() {
        let mut h = H::default();
        h.round("w0", 100, 200, 10, 1);
        h.round("w1", 210, 300, 11, 2);
        h.round("w0", 305, 400, 12, 3);
        let analysis = h.check();
        assert!(analysis.valid(), "{:?}", analysis.safety);
        assert_eq!(analysis.holds.len(), 3);
        assert!(analysis.overlaps.is_empty());
        assert_eq!(analysis.count("acquire", "ok"), 3);
    }

    #[test]
    fn a_second_grant_during_a_hold_with_no_fault_is_an_unexplained_overlap() {
        let mut h = H::default();
        h.round("w0", 100, 200, 10, 1);
        h.round("w1", 150, 300, 11, 2);
        let analysis = h.check();
        assert!(!analysis.valid());
        let overlap = analysis.unexplained().next().expect("an overlap");
        assert_eq!(
            (
                overlap.first.process.as_str(),
                overlap.second.process.as_str()
            ),
            ("w0", "w1")
        );
        assert_eq!(
            (overlap.start, overlap.end, overlap.duration()),
            (150, 200, 50)
        );
        assert!(overlap.faults.is_empty());
    }

    #[test]
    fn an_overlap_while_the_first_holder_was_stopped_is_explained_but_one_of_another_worker_is_not()
    {
        let mut h = H::default();
        h.fault(1, "pause-holder", "w0", 120, 2_500_000);
        h.round("w0", 100, 2_500_010, 10, 1);
        h.round("w1", 1_100_000, 1_100_100, 11, 2);
        let analysis = h.check();
        assert_eq!(analysis.overlaps.len(), 1);
        assert!(analysis.overlaps[0]
            .explained_by
            .as_deref()
            .unwrap()
            .contains("stopped w0"));
        assert_eq!(analysis.overlaps[0].faults, vec![1]);
        assert!(analysis.valid());

        // The same overlap with another worker stopped is not the stall's doing.
        let mut h = H::default();
        h.fault(1, "pause-holder", "w2", 120, 2_500_000);
        h.round("w0", 100, 2_500_010, 10, 1);
        h.round("w1", 1_100_000, 1_100_100, 11, 2);
        let analysis = h.check();
        assert_eq!(analysis.unexplained().count(), 1);
        assert!(!analysis.valid());
    }

    #[test]
    fn an_overlap_after_a_failover_is_explained_until_a_lease_after_it_healed() {
        let mut h = H::default();
        h.fault(1, "failover-kill", "7001", 50, 3_000_000);
        h.round("w0", 100, 3_500_000, 10, 1);
        h.round("w1", 3_200_000, 3_600_000, 11, 2);
        h.round("w2", 3_550_000, 5_000_000, 12, 3);
        h.round("w3", 4_500_000, 4_600_000, 13, 4);
        let analysis = h.check();
        let explained: Vec<bool> = analysis
            .overlaps
            .iter()
            .map(|o| o.explained_by.is_some())
            .collect();
        // w0/w1 and w1/w2 begin within a lease of the heal; w2/w3 begins 1.5 leases after it.
        assert_eq!(explained, vec![true, true, false]);
    }

    #[test]
    fn a_killed_holder_holds_until_its_death_and_the_wait_after_is_measured() {
        let mut h = H::default();
        h.ev(90, "w0", Type::Invoke, Op::Acquire);
        h.ev(100, "w0", Type::Ok, Op::Acquire).token = Some(10);
        h.fault(1, "kill-worker", "w0", 500, 600);
        h.ev(700, "w1", Type::Invoke, Op::Acquire);
        h.ev(1_000_600, "w1", Type::Ok, Op::Acquire).token = Some(11);
        h.ev(1_000_700, "w1", Type::Invoke, Op::Release);
        let analysis = h.check();
        assert!(analysis.valid());
        assert_eq!(analysis.holds[0].ended, HoldEnd::Killed);
        assert_eq!(analysis.holds[0].end, 500);
        assert_eq!(analysis.recoveries[0].unavailable, Some(1_000_100));
        assert_eq!(analysis.recoveries[0].bound, LEASE + LEASE / 3);
        assert!(!analysis.recoveries[0].over_bound());
    }

    #[test]
    fn a_master_fault_is_measured_by_its_longest_stretch_without_a_grant() {
        let mut h = H::default();
        h.fault(1, "failover-kill", "7001", 1_000, 5_000_000);
        for (time, token) in [
            (1_500, 10),
            (3_001_500, 11),
            (4_000_000, 12),
            (5_000_100, 13),
        ] {
            h.ev(time, "w0", Type::Ok, Op::Acquire).token = Some(token);
            h.ev(time + 10, "w0", Type::Invoke, Op::Release);
        }
        let analysis = h.check();
        assert_eq!(analysis.recoveries[0].unavailable, Some(3_000_000));
    }

    #[test]
    fn a_wait_past_the_bound_counts_unless_the_next_fault_began_during_it() {
        let mut h = H::default();
        h.ev(100, "w0", Type::Ok, Op::Acquire).token = Some(10);
        h.fault(1, "kill-worker", "w0", 500, 600);
        h.fault(2, "kill-worker", "w1", 1_500_000, 1_500_100);
        h.ev(3_000_000, "w2", Type::Ok, Op::Acquire).token = Some(11);
        let analysis = h.check();
        let (first, second) = (&analysis.recoveries[0], &analysis.recoveries[1]);
        assert_eq!(first.interrupted_by, Some(2));
        assert!(!first.over_bound());
        assert_eq!(second.interrupted_by, None);
        assert_eq!(second.unavailable, Some(1_500_000));
        assert!(second.over_bound());
    }

    #[test]
    fn a_worker_that_died_by_itself_holds_until_its_last_record() {
        let mut h = H::default();
        h.ev(100, "w0", Type::Ok, Op::Acquire).token = Some(10);
        h.ev(150, "w0", Type::Invoke, Op::Write).value = Some(1);
        let start = h.ev(2_000, "w0", Type::Info, Op::Start);
        start.pid = Some(999);
        h.round("w1", 1_000, 1_500, 11, 1);
        h.log.clear();
        h.log.push(StoreWrite {
            value: 1,
            token: 11,
            process: "w1".into(),
            pid: pid("w1"),
        });
        let analysis = h.check();
        let dead = &analysis.holds[0];
        assert_eq!((dead.end, dead.ended), (150, HoldEnd::Killed));
        assert!(analysis.overlaps.is_empty());
        assert!(analysis.valid(), "{:?}", analysis.safety);
    }

    #[test]
    fn a_value_written_twice_is_a_safety_violation() {
        let mut h = H::default();
        h.round("w0", 100, 200, 10, 1);
        h.round("w1", 210, 300, 11, 1);
        let analysis = h.check();
        assert!(!analysis.valid());
        assert!(
            analysis
                .safety
                .iter()
                .any(|v| v.starts_with("value 1 written 2 times")),
            "{:?}",
            analysis.safety
        );
        assert!(analysis
            .safety
            .iter()
            .any(|v| v.contains("register ends at 1")));
    }

    #[test]
    fn a_token_that_does_not_increase_is_a_safety_violation() {
        let mut h = H::default();
        h.round("w0", 100, 200, 10, 1);
        h.round("w1", 210, 300, 10, 2);
        let analysis = h.check();
        assert!(
            analysis
                .safety
                .iter()
                .any(|v| v.contains("not above the token 10")),
            "{:?}",
            analysis.safety
        );
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_store_is_lost() {
        let mut h = H::default();
        h.round("w0", 100, 200, 10, 1);
        h.round("w1", 210, 300, 11, 2);
        h.log.pop();
        let analysis = h.check();
        assert_eq!(analysis.safety.len(), 1, "{:?}", analysis.safety);
        assert!(analysis.safety[0].starts_with("acknowledged write lost: w1"));
    }

    #[test]
    fn a_skipped_value_is_a_lost_update() {
        let mut h = H::default();
        h.round("w0", 100, 200, 10, 1);
        h.round("w1", 210, 300, 11, 3);
        let analysis = h.check();
        assert!(
            analysis.safety.iter().any(|v| v.contains("wrote 3, not 2")),
            "{:?}",
            analysis.safety
        );
    }

    #[test]
    fn a_loss_noticed_ends_the_hold() {
        let mut h = H::default();
        h.ev(100, "w0", Type::Ok, Op::Acquire).token = Some(10);
        h.ev(1_000, "w0", Type::Info, Op::Lost);
        h.round("w1", 1_010, 2_000, 11, 1);
        let analysis = h.check();
        assert!(analysis.valid());
        assert_eq!(analysis.holds[0].ended, HoldEnd::Lost);
        assert!(analysis.overlaps.is_empty());
    }

    #[test]
    fn a_heal_without_an_injection_makes_the_history_malformed() {
        let mut h = H::default();
        let event = h.ev(100, "nemesis", Type::Ok, Op::Fault);
        event.id = Some(4);
        let analysis = h.check();
        assert!(!analysis.valid());
        assert_eq!(
            analysis.malformed,
            vec!["fault 4 healed but never injected"]
        );
    }
}
