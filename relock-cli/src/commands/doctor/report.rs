//! What a check found, and how the checks are printed and summed up into an exit code.

use std::process::ExitCode;

use crate::failure::Failure;
use crate::json::Fields;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Status {
    /// Nothing to change.
    Ok,
    /// Works, with a risk or a cost worth knowing.
    Warning,
    /// Breaks locks, or keeps relock from working.
    Failure,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warning => "⚠",
            Status::Failure => "✗",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failure => "failure",
        }
    }
}

/// One line of the report: a check's name, its status, what it found, and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) status: Status,
    pub(crate) found: String,
    pub(crate) fix: Option<String>,
}

impl Check {
    pub(crate) fn ok(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    pub(crate) fn warning(
        name: &'static str,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Warning,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn failure(
        name: &'static str,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Failure,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    /// The worst of several findings of one check (one per node), their texts joined.
    pub(crate) fn worst(name: &'static str, findings: Vec<Check>) -> Check {
        if findings.is_empty() {
            return Check::warning(
                name,
                "no master reached to check",
                "see the connection check",
            );
        }
        let status = findings
            .iter()
            .map(|check| check.status)
            .max()
            .unwrap_or(Status::Ok);
        // The nodes that are fine need no mention beside one that is not.
        let shown: Vec<&Check> = findings
            .iter()
            .filter(|check| check.status == status)
            .collect();
        // Nodes that say the same are said once.
        let mut found: Vec<&str> = Vec::new();
        for text in shown.iter().map(|check| check.found.as_str()) {
            if !found.contains(&text) {
                found.push(text);
            }
        }
        let found = found.join("; ");
        let mut fixes: Vec<&str> = Vec::new();
        for fix in shown.iter().filter_map(|check| check.fix.as_deref()) {
            if !fixes.contains(&fix) {
                fixes.push(fix);
            }
        }
        Check {
            name,
            status,
            found,
            fix: (!fixes.is_empty()).then(|| fixes.join("; ")),
        }
    }

    fn line(&self, width: usize) -> String {
        // One line per check, whatever a server put into a message.
        let fold = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let fix = self
            .fix
            .as_deref()
            .map(|fix| format!(" → {}", fold(fix)))
            .unwrap_or_default();
        let name = self.name;
        format!(
            "{} {name:width$}  {}{fix}",
            self.status.mark(),
            fold(&self.found)
        )
    }

    fn fields(&self) -> Fields {
        vec![
            ("check", self.name.into()),
            ("status", self.status.word().into()),
            ("found", self.found.clone().into()),
            ("fix", self.fix.clone().into()),
        ]
    }
}

/// Prints `checks` (a line each, then a summary; or a JSON object each) and returns the exit
/// code: 0 all passed, [`Failure::WARNINGS`] some warn, [`Failure::FAILURES`] some fail.
pub(crate) fn print(checks: &[Check], json: bool) -> ExitCode {
    let count = |status| checks.iter().filter(|check| check.status == status).count();
    let (failures, warnings) = (count(Status::Failure), count(Status::Warning));
    if json {
        for check in checks {
            println!("{}", crate::json::line(&check.fields()));
        }
    } else {
        let width = checks
            .iter()
            .map(|check| check.name.len())
            .max()
            .unwrap_or(0);
        for check in checks {
            println!("{}", check.line(width));
        }
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let summary = match (failures, warnings) {
            (0, 0) => format!("all {} checks passed", checks.len()),
            (0, w) => plural(w, "warning"),
            (f, 0) => plural(f, "failure"),
            (f, w) => format!("{}, {}", plural(f, "failure"), plural(w, "warning")),
        };
        println!("relock doctor: {summary}");
    }
    ExitCode::from(match (failures, warnings) {
        (0, 0) => 0,
        (0, _) => Failure::WARNINGS,
        _ => Failure::FAILURES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_wins_and_names_only_its_nodes() {
        let check = Check::worst(
            "eviction",
            vec![
                Check::ok("eviction", "a: noeviction"),
                Check::failure("eviction", "b: allkeys-lru", "set noeviction"),
                Check::warning("eviction", "c: unreadable", "read it"),
                Check::failure("eviction", "d: volatile-lru", "set noeviction"),
            ],
        );
        assert_eq!(check.status, Status::Failure);
        assert_eq!(check.found, "b: allkeys-lru; d: volatile-lru");
        assert_eq!(check.fix.as_deref(), Some("set noeviction"));
    }

    #[test]
    fn a_line_is_one_line_with_mark_finding_and_fix() {
        let check = Check::failure("eviction", "policy\nallkeys-lru", "set noeviction");
        assert_eq!(
            check.line(9),
            "✗ eviction   policy allkeys-lru → set noeviction"
        );
        assert_eq!(Check::ok("version", "7.0.15").line(0), "✓ version  7.0.15");
    }
}
