//! A worker of the chaos run (`chaos --help`): loops lock → read the register through the fenced
//! store with the fencing token → write value + 1 with the token → release, appending every step
//! to the run's history. The nemesis kills it, stops it and cuts its links; it never exits by
//! itself.
//!
//! `--break double-grant` turns it into a broken lock user on purpose, for the checker's
//! self-test: half of its rounds, when the key is held, it goes ahead as if it had been granted
//! the lock too, with the holder's fencing token — two holders at once, as a locker that granted
//! twice would make.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use relock::Locker;
use relock_tests::chaos::history::{now_micros, Event, HistoryWriter, Op, Type};
use relock_tests::chaos::store::{FencedStore, Stale};

#[derive(Parser, Debug)]
#[command(about = "A worker of the chaos run; started by `chaos`, not by hand")]
struct Args {
    /// This worker's lane: `w0`, `w1`, …
    #[arg(long)]
    process: String,
    /// The lock service: `single:<url>`, `cluster:<url>,<url>,…` or
    /// `sentinel:<master name>:<url>,<url>,…`.
    #[arg(long)]
    lock: String,
    /// The fenced store's URL.
    #[arg(long)]
    store: String,
    /// The register's lock key.
    #[arg(long)]
    key: String,
    /// The lease of every hold, in ms.
    #[arg(long)]
    lease_ms: u64,
    /// How long an acquisition waits, in ms.
    #[arg(long)]
    wait_ms: u64,
    /// Replicas that must acknowledge a grant (0: none).
    #[arg(long, default_value_t = 0)]
    replicas: u32,
    /// The history file to append to.
    #[arg(long)]
    history: PathBuf,
    /// Seeds this worker's pauses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `none`, or `double-grant` (see the crate docs).
    #[arg(long, default_value = "none")]
    r#break: String,
}

fn locker(args: &Args) -> Result<Locker, String> {
    let lease = Duration::from_millis(args.lease_ms);
    let builder = Locker::builder()
        .lease(lease)
        .wait(Duration::from_millis(args.wait_ms))
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(args.lease_ms.clamp(200, 2000)));
    let builder = if let Some(url) = args.lock.strip_prefix("single:") {
        builder.url(url)
    } else if let Some(seeds) = args.lock.strip_prefix("cluster:") {
        builder.cluster(seeds.split(','))
    } else if let Some(rest) = args.lock.strip_prefix("sentinel:") {
        let (name, urls) = rest
            .split_once(':')
            .ok_or_else(|| format!("--lock sentinel:<name>:<urls>, not {:?}", args.lock))?;
        builder.sentinel(urls.split(','), name)
    } else {
        return Err(format!(
            "--lock is `single:<url>`, `cluster:<urls>` or `sentinel:<name>:<urls>`, not {:?}",
            args.lock
        ));
    };
    let builder = if args.replicas > 0 {
        builder.replicas(args.replicas, lease / 4)
    } else {
        builder
    };
    builder.build().map_err(|err| err.to_string())
}

/// splitmix64: pauses only need to vary, reproducibly per seed and lane.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct Recorder {
    history: HistoryWriter,
    process: String,
    pid: u32,
}

impl Recorder {
    fn record(&self, kind: Type, f: Op, fill: impl FnOnce(&mut Event)) {
        let mut event = Event::new(now_micros(), self.process.as_str(), kind, f);
        event.pid = Some(self.pid);
        fill(&mut event);
        self.history.append(&event);
    }
}

/// The body of a round, under the lock (or, broken, beside it): read, pause, write, and the
/// `release invoke` that marks where the worker stops acting as holder.
async fn body(
    recorder: &Recorder,
    store: &mut FencedStore,
    token: u64,
    pause: Duration,
    blocking: bool,
) {
    recorder.record(Type::Invoke, Op::Read, |e| e.token = Some(token));
    let value = match store.read(token).await {
        Ok(Ok(value)) => {
            recorder.record(Type::Ok, Op::Read, |e| {
                e.token = Some(token);
                e.value = Some(value);
            });
            value
        }
        Ok(Err(Stale(max))) => {
            recorder.record(Type::Fail, Op::Read, |e| {
                e.token = Some(token);
                e.error = Some(format!("stale: the store has seen token {max}"));
            });
            recorder.record(Type::Invoke, Op::Release, |_| {});
            return;
        }
        Err(err) => {
            recorder.record(Type::Info, Op::Read, |e| e.error = Some(err.to_string()));
            recorder.record(Type::Invoke, Op::Release, |_| {});
            return;
        }
    };
    // A blocking pause is a step relock cannot interrupt (CPU-bound work, a GC pause): a SIGSTOP
    // landing in it wakes straight into the write, which only the fencing token can stop. An
    // async pause gives relock the chance to abort the body when the hold is lost.
    if blocking {
        std::thread::sleep(pause);
    } else {
        tokio::time::sleep(pause).await;
    }
    let next = value + 1;
    recorder.record(Type::Invoke, Op::Write, |e| {
        e.token = Some(token);
        e.value = Some(next);
    });
    match store
        .write(token, next, &recorder.process, recorder.pid)
        .await
    {
        Ok(Ok(_)) => recorder.record(Type::Ok, Op::Write, |e| {
            e.token = Some(token);
            e.value = Some(next);
        }),
        Ok(Err(Stale(max))) => recorder.record(Type::Fail, Op::Write, |e| {
            e.token = Some(token);
            e.value = Some(next);
            e.error = Some(format!("stale: the store has seen token {max}"));
        }),
        Err(err) => recorder.record(Type::Info, Op::Write, |e| {
            e.token = Some(token);
            e.value = Some(next);
            e.error = Some(err.to_string());
        }),
    }
    recorder.record(Type::Invoke, Op::Release, |_| {});
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let double_grant = match args.r#break.as_str() {
        "none" => false,
        "double-grant" => true,
        other => {
            eprintln!("chaos_worker: --break is `none` or `double-grant`, not {other:?}");
            std::process::exit(2);
        }
    };
    let locker = locker(&args).unwrap_or_else(|err| {
        eprintln!("chaos_worker {}: {err}", args.process);
        std::process::exit(2);
    });
    let recorder = Recorder {
        history: HistoryWriter::open(&args.history).unwrap_or_else(|err| {
            eprintln!("chaos_worker: cannot open {:?}: {err}", args.history);
            std::process::exit(2);
        }),
        process: args.process.clone(),
        pid: std::process::id(),
    };
    let mut store = FencedStore::connect(&args.store)
        .await
        .unwrap_or_else(|err| {
            eprintln!("chaos_worker: cannot connect to the store: {err}");
            std::process::exit(2);
        });
    recorder.record(Type::Info, Op::Start, |_| {});
    let lane: u64 = args.process.trim_start_matches('w').parse().unwrap_or(0);
    let mut rng = Rng(args.seed ^ (lane << 32) ^ u64::from(recorder.pid));
    let key = args.key.as_str();

    loop {
        let pause = Duration::from_millis(5 + rng.next() % 21);
        let blocking = rng.next().is_multiple_of(2);
        if double_grant && rng.next().is_multiple_of(2) {
            if let Ok(Some(info)) = locker.inspect(key).await {
                // Broken on purpose: the key is held, and this worker goes ahead anyway as a
                // second holder with the same token.
                let token = info.fencing_token;
                recorder.record(Type::Invoke, Op::Acquire, |_| {});
                recorder.record(Type::Ok, Op::Acquire, |e| e.token = Some(token));
                body(&recorder, &mut store, token, pause, blocking).await;
                recorder.record(Type::Ok, Op::Release, |_| {});
                continue;
            }
        }
        let granted = Cell::new(false);
        let body_done = Cell::new(false);
        recorder.record(Type::Invoke, Op::Acquire, |_| {});
        let round = locker
            .lock(key)
            .run(async {
                // Re-entering the key inside `run` makes no round trip and carries the hold's
                // fencing token (the public contract), so the worker needs nothing else.
                let token = match locker.lock(key).await {
                    Ok(guard) => guard.fencing_token(),
                    Err(err) => {
                        // The hold ended before the body began: nothing was done under it.
                        recorder.record(Type::Info, Op::Acquire, |e| {
                            e.error = Some(format!("re-entering the hold: {err}"))
                        });
                        return;
                    }
                };
                granted.set(true);
                recorder.record(Type::Ok, Op::Acquire, |e| e.token = Some(token));
                body(&recorder, &mut store, token, pause, blocking).await;
                body_done.set(true);
            })
            .await;
        match (round, granted.get(), body_done.get()) {
            (Ok(()), true, _) => recorder.record(Type::Ok, Op::Release, |_| {}),
            (Ok(()), false, _) => {}
            (Err(err), false, _) => {
                // Timed out or refused: certainly not granted. A backend error may hide a grant
                // (relock releases such a hold in the background), which nobody acts on.
                let kind = match err {
                    relock::Error::Timeout { .. } => Type::Fail,
                    _ => Type::Info,
                };
                recorder.record(kind, Op::Acquire, |e| e.error = Some(err.to_string()));
                if kind == Type::Info {
                    // A backend failing at once (a dropped link) would otherwise spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (Err(err), true, false) => {
                recorder.record(Type::Info, Op::Lost, |e| e.error = Some(err.to_string()))
            }
            (Err(err @ relock::Error::Lost { .. }), true, true) => {
                recorder.record(Type::Fail, Op::Release, |e| e.error = Some(err.to_string()))
            }
            (Err(err), true, true) => {
                recorder.record(Type::Info, Op::Release, |e| e.error = Some(err.to_string()))
            }
        }
    }
}
