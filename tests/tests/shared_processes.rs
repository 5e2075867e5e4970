//! Readers and permit holders in processes of their own, SIGKILLed or SIGSTOPped past their
//! leases (the `hold_lock` binary in `read` and `permits:<n>` modes).
//!
//! A killed holder renews nothing and releases nothing: its share must stay taken until its lease
//! ends — never longer than about one lease — and the next owner's fencing token must be larger.
//! A stopped holder's lease ends on the server while it sleeps: another owner takes its place, and
//! when the holder wakes it must learn the loss (`LOST`) without its late renewal bringing its
//! share back, so the key never has more holders than it allows.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use relock::{LockGuard, LockMode, Locker};
use relock_tests::{bounded, unique_key, RedisServer};

const TEST_LIMIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_millis(1500);
/// Loose upper bounds on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(3);

/// The `hold_lock` process; killed when dropped, so a failing test leaves no holder behind.
struct Holder {
    child: Child,
    lines: Option<Lines<BufReader<ChildStdout>>>,
}

impl Holder {
    fn spawn(server: &RedisServer, key: &str, mode: &str) -> Holder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hold_lock"))
            .arg(server.url())
            .arg(key)
            .arg(LEASE.as_millis().to_string())
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hold_lock");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Holder {
            child,
            lines: Some(lines),
        }
    }

    /// The next line the holder prints, within `within`.
    async fn line(&mut self, within: Duration) -> String {
        let mut lines = self.lines.take().expect("one reader at a time");
        let read = tokio::task::spawn_blocking(move || {
            let line = lines.next();
            (lines, line)
        });
        let (lines, line) = tokio::time::timeout(within, read)
            .await
            .expect("hold_lock printed nothing in time")
            .expect("the reader thread panicked");
        self.lines = Some(lines);
        line.expect("hold_lock's stdout ended")
            .expect("read hold_lock's stdout")
    }

    /// Waits for `HELD <token>`.
    async fn held(&mut self) -> u64 {
        let line = self.line(Duration::from_secs(20)).await;
        line.strip_prefix("HELD ")
            .and_then(|token| token.trim().parse().ok())
            .unwrap_or_else(|| panic!("hold_lock printed {line:?}, expected `HELD <token>`"))
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test takes in the holder's place: the write lock beside a reader, or the only
/// permit of a semaphore of one.
async fn take_the_place(locker: &Locker, key: &str, mode: &str) -> LockGuardOrPermit {
    if mode == "read" {
        LockGuardOrPermit::Guard(
            locker
                .lock(key)
                .wait(Duration::from_secs(20))
                .await
                .unwrap(),
        )
    } else {
        LockGuardOrPermit::Permit(
            locker
                .semaphore(key, 1)
                .acquire()
                .wait(Duration::from_secs(20))
                .await
                .unwrap(),
        )
    }
}

enum LockGuardOrPermit {
    Guard(LockGuard),
    Permit(relock::Permit),
}

impl LockGuardOrPermit {
    fn fencing_token(&self) -> u64 {
        match self {
            Self::Guard(guard) => guard.fencing_token(),
            Self::Permit(permit) => permit.fencing_token(),
        }
    }

    fn is_held(&self) -> bool {
        match self {
            Self::Guard(guard) => guard.is_held(),
            Self::Permit(permit) => permit.is_held(),
        }
    }

    async fn release(self) {
        match self {
            Self::Guard(guard) => guard.release().await.unwrap(),
            Self::Permit(permit) => permit.release().await.unwrap(),
        }
    }
}

fn expected_mode(mode: &str) -> LockMode {
    if mode == "read" {
        LockMode::Read
    } else {
        LockMode::Permits(1)
    }
}

async fn a_killed_holders_share_frees_within_one_lease_and_not_before(mode: &'static str) {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("killed-shared");
        let mut holder = Holder::spawn(&server, &key, mode);
        let token = holder.held().await;

        // A live holder renews: its share outlives its first lease.
        tokio::time::sleep(LEASE + Duration::from_millis(300)).await;
        let info = locker.inspect(&key).await.unwrap().expect("still held");
        assert_eq!(info.mode, expected_mode(mode));
        assert_eq!(info.holds, 1);

        holder.child.kill().expect("SIGKILL hold_lock");
        holder.child.wait().expect("reap hold_lock");
        let killed_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            locker.inspect(&key).await.unwrap().is_some(),
            "a killed process releases nothing: its share stays until its lease ends"
        );
        let taken = take_the_place(&locker, &key, mode).await;
        let after = killed_at.elapsed();
        assert!(
            after < LEASE + SLACK,
            "the share came back {after:?} after the kill"
        );
        assert!(
            taken.fencing_token() > token,
            "the next owner's token is larger"
        );
        taken.release().await;
    })
    .await;
}

async fn a_stopped_holder_is_replaced_after_its_lease_and_learns_its_loss(mode: &'static str) {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("stopped-shared");
        let mut holder = Holder::spawn(&server, &key, mode);
        let token = holder.held().await;

        holder.signal(libc::SIGSTOP);
        let stopped_at = Instant::now();
        let taken = take_the_place(&locker, &key, mode).await;
        let after = stopped_at.elapsed();
        assert!(
            after < LEASE + SLACK,
            "the stopped holder's share came back {after:?} after the stop"
        );
        assert!(taken.fencing_token() > token);

        // Woken past its lease, the holder learns the loss; its late renewal must not bring its
        // share back beside the new owner.
        holder.signal(libc::SIGCONT);
        assert_eq!(holder.line(Duration::from_secs(10)).await, "LOST");
        tokio::time::sleep(LEASE / 2).await;
        assert!(taken.is_held());
        let info = locker
            .inspect(&key)
            .await
            .unwrap()
            .expect("held by the new owner");
        assert_eq!(
            info.holds, 1,
            "one holder, not the stopped one beside it: {info:?}"
        );
        if mode == "read" {
            assert_eq!(info.mode, LockMode::Exclusive);
        } else {
            assert_eq!(info.mode, LockMode::Permits(1));
        }
        taken.release().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_readers_hold_frees_within_one_lease_and_not_before() {
    a_killed_holders_share_frees_within_one_lease_and_not_before("read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_processs_permit_comes_back_within_one_lease_and_not_before() {
    a_killed_holders_share_frees_within_one_lease_and_not_before("permits:1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reader_is_replaced_by_a_writer_and_learns_its_loss() {
    a_stopped_holder_is_replaced_after_its_lease_and_learns_its_loss("read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_permit_holder_is_replaced_and_learns_its_loss() {
    a_stopped_holder_is_replaced_after_its_lease_and_learns_its_loss("permits:1").await;
}
