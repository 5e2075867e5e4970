//! The history of a chaos run: one JSON object per line, appended by every worker and by the
//! nemesis to one file, stamped with a clock all of them share.
//!
//! The shape follows Jepsen's: each operation is an `invoke` followed by its completion, `ok`
//! (it happened), `fail` (it did not) or `info` (nobody knows, or an event with no invocation:
//! a loss noticed, a process started).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Microseconds on `CLOCK_MONOTONIC`: one clock for every process on the machine (it is
/// system-wide on Linux), which never steps when the wall clock is set.
pub fn now_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes into the timespec we own and has no other effect.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// How an operation ended, or that it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    /// The operation begins.
    Invoke,
    /// It took effect.
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// Its effect is unknown, or the event has no invocation (a loss noticed).
    Info,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A worker process started (`info`, with its pid).
    Start,
    /// Taking the register's lock; `ok` carries the hold's fencing token.
    Acquire,
    /// Reading the register through the fenced store with the token; `ok` carries the value.
    Read,
    /// Writing value + 1 with the token; `invoke` carries the value.
    Write,
    /// The end of the body: the worker stops acting as holder at `invoke`.
    Release,
    /// The worker noticed that its hold was lost (`info`): it stops acting as holder here.
    Lost,
    /// A nemesis fault: `invoke` when injected, `ok` when healed.
    Fault,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in µs of the shared clock ([`now_micros`]).
    pub time: u64,
    /// Who: a worker's lane (`w0`…) or `nemesis`.
    pub process: String,
    /// The worker's pid (a lane's worker is replaced after a kill); for a fault, its target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Invocation or completion.
    #[serde(rename = "type")]
    pub kind: Type,
    /// The operation.
    pub f: Op,
    /// The fencing token the operation used or got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The register value read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Why an operation failed (`fail`/`info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A fault's kind (nemesis events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// A fault's number, the same on its `invoke` and `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// A fault's target: a worker's lane, or the Redis node's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How long a fault's main step took, in µs (a failover, before the old master is brought
    /// back as a replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took: Option<u64>,
    /// Free text (a fault's parameters, what a heal found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// An event of `process` at `time` with no optional field set.
    pub fn new(time: u64, process: impl Into<String>, kind: Type, f: Op) -> Event {
        Event {
            time,
            process: process.into(),
            pid: None,
            kind,
            f,
            token: None,
            value: None,
            error: None,
            fault: None,
            id: None,
            target: None,
            took: None,
            detail: None,
        }
    }
}

/// Appends events to a history file shared by several processes: the file is opened with
/// `O_APPEND` and each event goes out in one `write`, so lines of different processes never
/// interleave, and an event is on disk (in the page cache) before the process can be killed.
#[derive(Debug)]
pub struct HistoryWriter {
    file: File,
}

impl HistoryWriter {
    /// Opens (or creates) the history at `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<HistoryWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(HistoryWriter { file })
    }

    /// Appends one event.
    ///
    /// # Panics
    ///
    /// When the file cannot be written: a history with holes would be checked as if complete.
    pub fn append(&self, event: &Event) {
        let mut line = serde_json::to_vec(event).expect("an event serialises");
        line.push(b'\n');
        (&self.file)
            .write_all(&line)
            .unwrap_or_else(|err| panic!("cannot append to the history: {err}"));
    }
}

/// Reads a history file, sorted by time (events of one process keep their order).
///
/// A last line cut short (a process killed in the middle of its `write`) is skipped; any other
/// line that does not parse is an error naming it.
pub fn read_history(path: &Path) -> Result<Vec<Event>, String> {
    let file =
        File::open(path).map_err(|err| format!("cannot open the history {path:?}: {err}"))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|err| format!("cannot read the history {path:?}: {err}"))?;
    let mut events = Vec::with_capacity(lines.len());
    for (number, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(line) {
            Ok(event) => events.push(event),
            Err(_) if number + 1 == lines.len() => {}
            Err(err) => {
                return Err(format!(
                    "{}:{}: not a history event ({err}): {line}",
                    path.display(),
                    number + 1
                ))
            }
        }
    }
    events.sort_by_key(|event| event.time);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_a_line_without_its_empty_fields() {
        let mut event = Event::new(12, "w3", Type::Ok, Op::Acquire);
        event.token = Some(1_733_000_000_000_001);
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(
            line,
            r#"{"time":12,"process":"w3","type":"ok","f":"acquire","token":1733000000000001}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }

    #[test]
    fn a_history_is_read_in_time_order_and_a_torn_last_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("relock-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history.jsonl");
        let _ = std::fs::remove_file(&path);
        let writer = HistoryWriter::open(&path).unwrap();
        writer.append(&Event::new(20, "w1", Type::Invoke, Op::Acquire));
        writer.append(&Event::new(10, "w0", Type::Invoke, Op::Acquire));
        (&writer.file).write_all(br#"{"time":30,"proc"#).unwrap();
        let events = read_history(&path).unwrap();
        assert_eq!(
            events.iter().map(|e| e.time).collect::<Vec<_>>(),
            vec![10, 20]
        );
        std::fs::write(&path, "{\"time\":1}\n{\"time\":2}\n").unwrap();
        let err = read_history(&path).unwrap_err();
        assert!(err.contains(":1: not a history event"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
