//! The report of a run: a Markdown summary and SVG timelines a person can read at a glance.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::checker::{Analysis, Hold, HoldEnd, Overlap};
use super::run::RunConfig;

fn ms(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

fn secs(micros: u64) -> String {
    format!("{:.2} s", micros as f64 / 1e6)
}

/// The Markdown summary of `analysis`, for the run `config` describes.
pub fn markdown(analysis: &Analysis, config: &RunConfig, notes: &[String]) -> String {
    let mut out = String::new();
    let at = |t: u64| secs(t.saturating_sub(analysis.span.0));
    let _ = writeln!(
        out,
        "# Chaos run: {}, seed {}\n",
        config.topology.name(),
        config.seed
    );
    let mut command = format!(
        "cargo run --release -p relock-tests --bin chaos -- --topology {} --duration {} --seed {} --lease-ms {}",
        config.topology.name(),
        match config.duration.as_secs() {
            seconds if seconds % 60 == 0 => format!("{}m", seconds / 60),
            seconds => format!("{seconds}s"),
        },
        config.seed,
        config.lease.as_millis()
    );
    let _ = write!(
        command,
        " --gap-ms {}..{}",
        config.gap.0.as_millis(),
        config.gap.1.as_millis()
    );
    if config.workers != 5 {
        let _ = write!(command, " --workers {}", config.workers);
    }
    if config.replicas > 0 {
        let _ = write!(command, " --replicas {}", config.replicas);
    }
    if config.break_mode != "none" {
        let _ = write!(command, " --break {}", config.break_mode);
    }
    if !config.only.is_empty() {
        let _ = write!(command, " --only {}", config.only.join(","));
    }
    let _ = writeln!(out, "`{command}`\n");
    let unexplained = analysis.unexplained().count();
    let _ = writeln!(
        out,
        "**Verdict: {}** — {} fenced-safety violations, {} overlaps ({} unexplained), {} \
         malformed history entries; {} workers, lease {}, {} of history, {} faults.\n",
        if analysis.valid() { "PASS" } else { "FAIL" },
        analysis.safety.len(),
        analysis.overlaps.len(),
        unexplained,
        analysis.malformed.len(),
        config.workers,
        ms(analysis.lease),
        secs(analysis.span.1 - analysis.span.0),
        analysis.faults.len()
    );
    for note in notes {
        let _ = writeln!(out, "> **Note:** {note}\n");
    }
    let _ = writeln!(out, "![timeline](timeline.svg)\n");

    let _ = writeln!(out, "## Operations\n");
    let _ = writeln!(
        out,
        "| operation | invoke | ok | fail | info |\n|---|---|---|---|---|"
    );
    for op in ["acquire", "read", "write", "release", "lost", "start"] {
        let _ = writeln!(
            out,
            "| {op} | {} | {} | {} | {} |",
            analysis.count(op, "invoke"),
            analysis.count(op, "ok"),
            analysis.count(op, "fail"),
            analysis.count(op, "info")
        );
    }
    let ended = |how: HoldEnd| analysis.holds.iter().filter(|h| h.ended == how).count();
    let _ = writeln!(
        out,
        "\n{} holds: {} released, {} lost (noticed by the worker), {} ended by a kill, {} open \
         at the end.\n",
        analysis.holds.len(),
        ended(HoldEnd::Released),
        ended(HoldEnd::Lost),
        ended(HoldEnd::Killed),
        ended(HoldEnd::Open)
    );

    let _ = writeln!(out, "## Faults\n");
    let mut by_kind: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for fault in &analysis.faults {
        by_kind
            .entry(fault.kind.as_str())
            .or_default()
            .push(fault.end - fault.start);
    }
    let _ = writeln!(
        out,
        "| kind | count | total time | longest |\n|---|---|---|---|"
    );
    for (kind, lengths) in &by_kind {
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} |",
            lengths.len(),
            secs(lengths.iter().sum()),
            secs(lengths.iter().copied().max().unwrap_or(0))
        );
    }

    let _ = writeln!(out, "\n## Fenced safety\n");
    let _ = writeln!(
        out,
        "The store accepted {} writes; the register ends at {}; it refused {} stale reads and \
         {} stale writes (a newer token had touched it).\n",
        analysis.store.log.len(),
        analysis.store.register,
        analysis.store.rejected_reads,
        analysis.store.rejected_writes
    );
    if analysis.safety.is_empty() {
        let _ = writeln!(
            out,
            "No violation: tokens strictly increase over the accepted writes, the values are \
             1..={} with none twice, and every acknowledged write is in the store.",
            analysis.store.log.len()
        );
    } else {
        let _ = writeln!(out, "{} violations:\n", analysis.safety.len());
        for violation in analysis.safety.iter().take(30) {
            let _ = writeln!(out, "* {violation}");
        }
        if analysis.safety.len() > 30 {
            let _ = writeln!(out, "* … and {} more", analysis.safety.len() - 30);
        }
    }
    for malformed in &analysis.malformed {
        let _ = writeln!(out, "* malformed history: {malformed}");
    }

    let _ = writeln!(out, "\n## Exclusion in real time\n");
    if analysis.overlaps.is_empty() {
        let _ = writeln!(
            out,
            "No two workers believed they held the lock at the same time."
        );
    } else {
        let total: u64 = analysis.overlaps.iter().map(|o| o.duration()).sum();
        let _ = writeln!(
            out,
            "{} overlaps, {} in all ({} unexplained). Each is two holds — from the grant's answer \
             to the end of the body or the loss noticed — of different processes.\n",
            analysis.overlaps.len(),
            ms(total),
            unexplained
        );
        // A holder stopped past its lease overlaps every hold granted meanwhile: one row per
        // such earlier hold, with the later holds it overlapped.
        let mut episodes: Vec<(&Hold, Vec<&Overlap>)> = Vec::new();
        for overlap in &analysis.overlaps {
            match episodes
                .iter_mut()
                .find(|(first, _)| **first == overlap.first)
            {
                Some((_, overlaps)) => overlaps.push(overlap),
                None => episodes.push((&overlap.first, vec![overlap])),
            }
        }
        let _ = writeln!(
            out,
            "Grouped by the earlier hold, {} episodes:\n",
            episodes.len()
        );
        let _ = writeln!(
            out,
            "| at | for | earlier holder (token, how its hold ended) | later holds overlapped | faults in force | cause |\n|---|---|---|---|---|---|"
        );
        for (first, overlaps) in episodes.iter().take(60) {
            let start = overlaps.iter().map(|o| o.start).min().unwrap_or(0);
            let end = overlaps.iter().map(|o| o.end).max().unwrap_or(0);
            let mut faults: Vec<u64> = overlaps.iter().flat_map(|o| o.faults.clone()).collect();
            faults.sort_unstable();
            faults.dedup();
            let faults: Vec<String> = faults
                .iter()
                .filter_map(|id| analysis.fault(*id))
                .map(|f| format!("#{} {} {}", f.id, f.kind, f.target.as_deref().unwrap_or("")))
                .collect();
            let mut by_lane: BTreeMap<&str, usize> = BTreeMap::new();
            for overlap in overlaps {
                *by_lane.entry(overlap.second.process.as_str()).or_default() += 1;
            }
            let later: Vec<String> = by_lane
                .iter()
                .map(|(lane, n)| format!("{lane} ×{n}"))
                .collect();
            let cause = match overlaps.iter().find(|o| o.explained_by.is_none()) {
                Some(_) => "**UNEXPLAINED**".to_owned(),
                None => overlaps[0].explained_by.clone().unwrap_or_default(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} pid {} ({}, {:?}) | {} ({}) | {} | {} |",
                at(start),
                ms(end - start),
                first.process,
                first.pid.unwrap_or(0),
                first.token,
                first.ended,
                overlaps.len(),
                later.join(", "),
                faults.join(", "),
                cause
            );
        }
        if episodes.len() > 60 {
            let _ = writeln!(out, "\n… and {} more.", episodes.len() - 60);
        }
        let _ = writeln!(out, "\nCloser looks:\n");
        for (n, (first, overlaps)) in zoom_choices(analysis).into_iter().enumerate() {
            let _ = writeln!(
                out,
                "* [overlap-{}.svg](overlap-{}.svg): {}'s hold from {}, {} later holds; {}",
                n + 1,
                n + 1,
                first.process,
                at(first.start),
                overlaps.len(),
                match overlaps.iter().find(|o| o.explained_by.is_none()) {
                    Some(_) => "**UNEXPLAINED**",
                    None => overlaps[0].explained_by.as_deref().unwrap_or_default(),
                }
            );
        }
    }

    let _ = writeln!(out, "\n## Availability\n");
    let _ = writeln!(
        out,
        "For each fault, the longest stretch without a grant to any worker, from the fault's \
         start until the first grant after it healed, against the bound its kind allows: a \
         dead, stopped or cut-off holder keeps the lock for up to a lease; a stopped master for \
         the stop, a failing-over one for the failover (until the replica is promoted); plus a \
         third of the lease either way.\n"
    );
    let _ = writeln!(
        out,
        "| kind | faults | median | p95 | max | over its bound |\n|---|---|---|---|---|---|"
    );
    // Per kind: (unavailable, over the bound) of the faults that were alone in force until
    // the next grant.
    let mut recoveries: BTreeMap<&str, Vec<(u64, bool)>> = BTreeMap::new();
    let (mut never, mut interrupted) = (0, 0);
    for recovery in &analysis.recoveries {
        let Some(fault) = analysis.fault(recovery.fault) else {
            continue;
        };
        match (recovery.unavailable, recovery.interrupted_by) {
            (_, Some(_)) => interrupted += 1,
            (Some(took), None) => recoveries
                .entry(fault.kind.as_str())
                .or_default()
                .push((took, recovery.over_bound())),
            (None, None) => never += 1,
        }
    }
    for (kind, values) in &recoveries {
        let mut sorted: Vec<u64> = values.iter().map(|(took, _)| *took).collect();
        sorted.sort_unstable();
        let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let over = values.iter().filter(|(_, over)| *over).count();
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} | {} | {over} |",
            values.len(),
            ms(pick(0.5)),
            ms(pick(0.95)),
            ms(pick(1.0))
        );
    }
    if interrupted > 0 {
        let _ = writeln!(
            out,
            "\n{interrupted} faults are left out: the next fault began before the lock was \
             granted again."
        );
    }
    if never > 0 {
        let _ = writeln!(
            out,
            "\n{never} faults were followed by no grant before the run ended."
        );
    }
    let over: Vec<String> = analysis
        .recoveries
        .iter()
        .filter(|r| r.over_bound())
        .filter_map(|r| {
            let fault = analysis.fault(r.fault)?;
            Some(format!(
                "* #{} {} at {} ({}): unobtainable for {}, bound {}",
                fault.id,
                fault.kind,
                at(fault.start),
                fault.detail.as_deref().unwrap_or(""),
                ms(r.unavailable.unwrap_or(0)),
                ms(r.bound)
            ))
        })
        .collect();
    if !over.is_empty() {
        let _ = writeln!(out, "\nOver their bound:\n");
        for line in over.iter().take(30) {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

const WIDTH: f64 = 1600.0;
const LEFT: f64 = 70.0;
const LANE: f64 = 22.0;
const TOP: f64 = 30.0;

fn colour(kind: &str) -> &'static str {
    match kind {
        "kill-worker" => "#444444",
        "pause-holder" | "pause-worker" => "#f0a030",
        k if k.starts_with("partition") => "#8060c0",
        "move-slot" => "#30a0c0",
        _ => "#c05050",
    }
}

/// An SVG timeline of `analysis`: a lane per worker with its holds (green; amber when the hold
/// ended in a loss), the nemesis's faults as bands (in the target's lane, or across every lane
/// for a fault of the service), overlaps in red. `window` (µs of the shared clock) zooms in.
pub fn svg(analysis: &Analysis, window: Option<(u64, u64)>) -> String {
    let (from, to) = window.unwrap_or(analysis.span);
    let to = to.max(from + 1);
    let mut lanes: Vec<&str> = analysis.holds.iter().map(|h| h.process.as_str()).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let lane_of = |process: &str| lanes.iter().position(|l| *l == process);
    let height = TOP + LANE * (lanes.len() as f64 + 1.0) + 40.0;
    let x = |t: u64| {
        LEFT + (t.clamp(from, to) - from) as f64 / (to - from) as f64 * (WIDTH - LEFT - 10.0)
    };
    let y = |lane: usize| TOP + LANE * (lane as f64 + 1.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="16">holds (green; amber: ended in a loss), faults (bands: grey kill, orange stop, purple partition, red master, blue slot move), overlaps (red)</text>"#
    );
    let _ = writeln!(out, r#"<text x="4" y="{}">service</text>"#, TOP + 15.0);
    for (i, lane) in lanes.iter().enumerate() {
        let _ = writeln!(out, r#"<text x="4" y="{}">{lane}</text>"#, y(i) + 15.0);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="#dddddd"/>"##,
            WIDTH - 10.0,
            y(i) + LANE,
            y(i) + LANE
        );
    }
    let bottom = y(lanes.len());
    for fault in &analysis.faults {
        if fault.end < from || fault.start > to {
            continue;
        }
        let (x0, x1) = (x(fault.start), x(fault.end).max(x(fault.start) + 1.5));
        let title = format!(
            "#{} {} {} {}",
            fault.id,
            fault.kind,
            fault.target.as_deref().unwrap_or(""),
            fault.detail.as_deref().unwrap_or("")
        );
        let (y0, y1) = match fault.target.as_deref().and_then(lane_of) {
            Some(lane) if fault.pid.is_some() => (y(lane), y(lane) + LANE),
            _ => (TOP, bottom),
        };
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{y0}" width="{:.1}" height="{}" fill="{}" fill-opacity="0.35"><title>{}</title></rect>"#,
            x1 - x0,
            y1 - y0,
            colour(&fault.kind),
            escape(&title)
        );
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{LANE}" fill="{}"/>"#,
            x1 - x0,
            colour(&fault.kind)
        );
    }
    // Holds shorter than a pixel are merged with their neighbours in the lane.
    for (i, lane) in lanes.iter().enumerate() {
        for lost in [false, true] {
            let mut run: Option<(f64, f64)> = None;
            let flush = |run: Option<(f64, f64)>, out: &mut String| {
                if let Some((a, b)) = run {
                    let _ = writeln!(
                        out,
                        r#"<rect x="{a:.1}" y="{}" width="{:.1}" height="{}" fill="{}"/>"#,
                        y(i) + 4.0,
                        (b - a).max(0.6),
                        LANE - 8.0,
                        if lost { "#e0a000" } else { "#40a040" }
                    );
                }
            };
            for hold in analysis.holds.iter().filter(|h| {
                h.process == *lane
                    && (h.ended == HoldEnd::Lost) == lost
                    && h.end >= from
                    && h.start <= to
            }) {
                let (a, b) = (x(hold.start), x(hold.end));
                run = match run {
                    Some((ra, rb)) if a <= rb + 1.0 => Some((ra, rb.max(b))),
                    other => {
                        flush(other, &mut out);
                        Some((a, b))
                    }
                };
            }
            flush(run, &mut out);
        }
    }
    // One red bar per lane and episode (an earlier hold and the later holds it overlapped): a
    // stopped holder overlaps dozens of holds, which would otherwise be dozens of shapes.
    let mut bars: Vec<(usize, u64, u64, String)> = Vec::new();
    for (first, overlaps) in episodes(analysis) {
        let visible: Vec<&Overlap> = overlaps
            .into_iter()
            .filter(|o| o.end >= from && o.start <= to)
            .collect();
        if visible.is_empty() {
            continue;
        }
        let title = format!(
            "{} pid {} (token {}) overlapped by {} later holds: {}",
            first.process,
            first.pid.unwrap_or(0),
            first.token,
            visible.len(),
            match visible.iter().find(|o| o.explained_by.is_none()) {
                Some(_) => "UNEXPLAINED",
                None => visible[0].explained_by.as_deref().unwrap_or_default(),
            }
        );
        let mut lanes_hit: Vec<(&str, u64, u64)> = vec![(
            first.process.as_str(),
            visible.iter().map(|o| o.start).min().unwrap_or(0),
            visible.iter().map(|o| o.end).max().unwrap_or(0),
        )];
        for overlap in &visible {
            match lanes_hit
                .iter_mut()
                .skip(1)
                .find(|(lane, _, _)| *lane == overlap.second.process)
            {
                Some((_, start, end)) => {
                    *start = (*start).min(overlap.start);
                    *end = (*end).max(overlap.end);
                }
                None => lanes_hit.push((&overlap.second.process, overlap.start, overlap.end)),
            }
        }
        for (lane, start, end) in lanes_hit {
            if let Some(lane) = lane_of(lane) {
                bars.push((lane, start, end, title.clone()));
            }
        }
    }
    for (lane, start, end, title) in bars {
        let (x0, x1) = (x(start), x(end));
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{}" width="{:.1}" height="{}" fill="red"><title>{}</title></rect>"#,
            y(lane) + 2.0,
            (x1 - x0).max(2.0),
            LANE - 4.0,
            escape(&title)
        );
    }
    // Time axis, in seconds since the history began.
    let span = (to - from) as f64 / 1e6;
    let step = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0]
        .into_iter()
        .find(|step| span / step <= 20.0)
        .unwrap_or(300.0);
    let first = ((from - analysis.span.0) as f64 / 1e6 / step).ceil() as u64;
    let mut tick = first;
    loop {
        let seconds = tick as f64 * step;
        let t = analysis.span.0 + (seconds * 1e6) as u64;
        if t > to {
            break;
        }
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1}" stroke="#bbbbbb" stroke-dasharray="2,3"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3} s</text>"##,
            x(t),
            bottom,
            bottom + 14.0,
            (seconds * 100.0).round() / 100.0
        );
        tick += 1;
    }
    out.push_str("</svg>\n");
    out
}

/// The overlaps grouped by their earlier hold, in order.
fn episodes(analysis: &Analysis) -> Vec<(&Hold, Vec<&Overlap>)> {
    let mut episodes: Vec<(&Hold, Vec<&Overlap>)> = Vec::new();
    let mut index: std::collections::HashMap<(&str, Option<u32>, u64), usize> =
        std::collections::HashMap::new();
    for overlap in &analysis.overlaps {
        let key = (
            overlap.first.process.as_str(),
            overlap.first.pid,
            overlap.first.token,
        );
        match index.get(&key) {
            Some(&at) => episodes[at].1.push(overlap),
            None => {
                index.insert(key, episodes.len());
                episodes.push((&overlap.first, vec![overlap]));
            }
        }
    }
    episodes
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The overlap episodes worth a closer look: every unexplained one first, then the first two of
/// each cause (a stalled holder; a fault of the service that lost the lock's state), at most 6.
fn zoom_choices(analysis: &Analysis) -> Vec<(&Hold, Vec<&Overlap>)> {
    let all = episodes(analysis);
    let cause = |overlaps: &[&Overlap]| -> Option<&'static str> {
        let explained: Vec<&str> = overlaps
            .iter()
            .map(|o| o.explained_by.as_deref())
            .collect::<Option<_>>()?;
        Some(if explained.iter().all(|e| e.contains("stopped")) {
            "stalled"
        } else {
            "lost state"
        })
    };
    let mut chosen: Vec<(&Hold, Vec<&Overlap>)> = all
        .iter()
        .filter(|(_, overlaps)| cause(overlaps).is_none())
        .cloned()
        .collect();
    for wanted in ["lost state", "stalled"] {
        chosen.extend(
            all.iter()
                .filter(|(_, overlaps)| cause(overlaps) == Some(wanted))
                .take(2)
                .cloned(),
        );
    }
    chosen.truncate(6);
    chosen
}

/// Writes `overlap-<n>.svg`, a timeline of a few seconds around each episode
/// [`zoom_choices`] picks, into `out`.
pub fn write_zooms(analysis: &Analysis, out: &Path) -> Result<(), String> {
    for (n, (first, overlaps)) in zoom_choices(analysis).into_iter().enumerate() {
        let margin = 2 * analysis.lease;
        let end = overlaps.iter().map(|o| o.end).max().unwrap_or(first.end);
        let window = (
            first.start.saturating_sub(margin / 2).max(analysis.span.0),
            (end + margin).min(analysis.span.1),
        );
        let name = format!("overlap-{}.svg", n + 1);
        let path = out.join(&name);
        std::fs::write(&path, svg(analysis, Some(window)))
            .map_err(|err| format!("cannot write {path:?}: {err}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::chaos::checker::{check, StoreState, StoreWrite};
    use crate::chaos::history::{Event, Op, Type};
    use crate::chaos::run::Topology;

    /// Two workers granted at once, with no fault: the report must say FAIL and draw the overlap.
    fn overlapping() -> Analysis {
        let mut events = Vec::new();
        for (process, start, end, token) in [("w0", 100, 5_000, 10), ("w1", 2_000, 9_000, 11)] {
            let mut ok = Event::new(start, process, Type::Ok, Op::Acquire);
            ok.pid = Some(1);
            ok.token = Some(token);
            events.push(ok);
            let mut release = Event::new(end, process, Type::Invoke, Op::Release);
            release.pid = Some(1);
            events.push(release);
        }
        events.sort_by_key(|e| e.time);
        let store = StoreState {
            log: vec![StoreWrite {
                value: 1,
                token: 10,
                process: "w0".into(),
                pid: 1,
            }],
            register: 1,
            ..StoreState::default()
        };
        check(&events, store, 1_000_000)
    }

    #[test]
    fn an_unexplained_overlap_fails_the_report_and_is_drawn_in_red() {
        let analysis = overlapping();
        let config = RunConfig {
            topology: Topology::Single,
            duration: Duration::from_secs(600),
            seed: 9,
            out: std::env::temp_dir(),
            lease: Duration::from_secs(1),
            workers: 2,
            replicas: 0,
            break_mode: "none".into(),
            worker_exe: "chaos_worker".into(),
            gap: (Duration::from_millis(100), Duration::from_millis(700)),
            only: Vec::new(),
        };
        let text = markdown(&analysis, &config, &["a note".to_owned()]);
        assert!(text.contains("**Verdict: FAIL**"), "{text}");
        assert!(text.contains("--duration 10m --seed 9"), "{text}");
        assert!(text.contains("> **Note:** a note"), "{text}");
        assert!(
            text.contains("| w0 pid 1 (10, Released) | 1 (w1 ×1) |  | **UNEXPLAINED** |"),
            "{text}"
        );
        let picture = svg(&analysis, None);
        assert_eq!(picture.matches(r#"fill="red""#).count(), 2, "{picture}");
        assert!(picture.contains("UNEXPLAINED"));
    }
}
