//! The chaos run: `cargo run --release -p relock-tests --bin chaos -- --topology single
//! --duration 10m --seed 1 --out target/chaos/single`.
//!
//! Starts its own Redis topology, a fenced store and worker processes (`chaos_worker`, each
//! reaching Redis through proxies of its own), injects faults on a schedule drawn from the seed,
//! then checks the history and writes `report.md`, `timeline.svg` (and `overlap-<n>.svg` around
//! the first overlaps), `history.jsonl` and `store.jsonl` into `--out`. Exits 0 when the checker
//! passes the run, 1 when it does not, 2 on bad arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use relock_tests::chaos::run::{recheck, run, RunConfig, Topology};

#[derive(Parser, Debug)]
#[command(
    about = "A Jepsen-style chaos run of relock: faults on a seeded schedule, a checker over the history, a report"
)]
struct Args {
    /// `single`, `sentinel` or `cluster`.
    #[arg(long, value_parser = Topology::parse)]
    topology: Topology,
    /// How long the nemesis runs: `90s`, `10m`, or seconds.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Draws the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the history and the report go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// The lease of every hold, in ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=30_000))]
    lease_ms: u64,
    /// How many worker processes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=32))]
    workers: u64,
    /// Replicas that must acknowledge each grant (`Locker::builder().replicas(n, ..)`).
    #[arg(long, default_value_t = 0)]
    replicas: u32,
    /// The pause between two faults, `<min>..<max>` in ms.
    #[arg(long, value_parser = parse_gap, default_value = "100..700")]
    gap_ms: (Duration, Duration),
    /// Only these fault kinds, comma-separated (default: all of the topology's).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Break the workers on purpose to see the checker fail: `double-grant` (a second holder
    /// beside the real one, with its token).
    #[arg(long, default_value = "none", value_parser = ["none", "double-grant"])]
    r#break: String,
    /// Run nothing: check the run whose files are in `--out` again and rewrite its report (give
    /// the run's own flags, which the report repeats).
    #[arg(long)]
    recheck: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("a duration is `<n>s`, `<n>m` or seconds, not {text:?}");
    let (number, unit) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    if number == 0 {
        return Err(format!("the duration must be above zero, not {text:?}"));
    }
    Ok(Duration::from_secs(number * unit))
}

fn parse_gap(text: &str) -> Result<(Duration, Duration), String> {
    let bad = || format!("a gap is `<min>..<max>` in ms with min <= max, not {text:?}");
    let (low, high) = text.split_once("..").ok_or_else(bad)?;
    let (low, high): (u64, u64) = (
        low.parse().map_err(|_| bad())?,
        high.parse().map_err(|_| bad())?,
    );
    if low > high {
        return Err(bad());
    }
    Ok((Duration::from_millis(low), Duration::from_millis(high)))
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let worker_exe = std::env::current_exe()
        .expect("the chaos binary's path")
        .with_file_name("chaos_worker");
    if !worker_exe.exists() && !args.recheck {
        eprintln!(
            "chaos: {worker_exe:?} is missing; build both binaries: cargo build --release -p relock-tests --bins"
        );
        std::process::exit(2);
    }
    let config = RunConfig {
        topology: args.topology,
        duration: args.duration,
        seed: args.seed,
        out: args.out,
        lease: Duration::from_millis(args.lease_ms),
        workers: args.workers as usize,
        replicas: args.replicas,
        break_mode: args.r#break,
        worker_exe,
        gap: args.gap_ms,
        only: args.only,
    };
    let outcome = if args.recheck {
        recheck(&config)
    } else {
        run(&config).await
    };
    match outcome {
        Ok(outcome) => {
            let analysis = &outcome.analysis;
            println!(
                "{}: {} faults, {} accepted writes, {} safety violations, {} overlaps ({} unexplained); report {}",
                if analysis.valid() { "PASS" } else { "FAIL" },
                analysis.faults.len(),
                analysis.store.log.len(),
                analysis.safety.len(),
                analysis.overlaps.len(),
                analysis.unexplained().count(),
                outcome.report.display()
            );
            std::process::exit(if analysis.valid() { 0 } else { 1 });
        }
        Err(err) => {
            eprintln!("chaos: {err}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_gaps_parse_and_bad_ones_are_named() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
        assert!(parse_duration("ten").unwrap_err().contains("\"ten\""));
        assert_eq!(
            parse_gap("200..1200"),
            Ok((Duration::from_millis(200), Duration::from_millis(1200)))
        );
        assert!(parse_gap("900..100").is_err());
        assert!(parse_gap("5").is_err());
    }
}
