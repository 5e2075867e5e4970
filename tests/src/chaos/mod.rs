//! A Jepsen-style chaos run: worker processes increment a register under a relock lock while a
//! nemesis injects faults on a schedule drawn from a seed; every step goes to a shared history,
//! which a checker reads afterwards (see [`checker`]) and a report draws (see [`report`]).
//!
//! The `chaos` binary drives a run from the command line; `tests/tests/chaos.rs` drives short
//! ones and asserts the verdict.

pub mod checker;
pub mod history;
pub mod link;
pub mod report;
pub mod run;
pub mod store;
