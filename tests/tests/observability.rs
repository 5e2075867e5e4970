//! What relock tells a tracing subscriber and a metrics recorder: the `acquire` span and its
//! fields, the re-entry event (and no span), release and loss events, and the `relock_*` metrics
//! after a known sequence of lock operations.
//!
//! Every test installs its subscriber or recorder for its own thread only and runs its futures on
//! a current-thread runtime there, so that tests running in parallel never see each other's
//! spans or metrics.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use relock::{Error, Locker};
use relock_tests::TestBackend;
use relock_tower::{key, LockLayer};
use tower::{ServiceBuilder, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

type Fields = BTreeMap<String, String>;

#[derive(Debug, Clone)]
struct SpanRecord {
    name: &'static str,
    target: String,
    parent: Option<&'static str>,
    fields: Fields,
}

#[derive(Debug, Clone)]
struct EventRecord {
    level: Level,
    message: String,
    fields: Fields,
}

/// Everything a [`Capture`] layer saw, spans in the order they were created.
#[derive(Debug, Default)]
struct Seen {
    spans: Vec<(Id, SpanRecord)>,
    events: Vec<EventRecord>,
}

impl Seen {
    fn spans(&self, name: &str) -> Vec<SpanRecord> {
        self.spans
            .iter()
            .filter(|(_, span)| span.name == name)
            .map(|(_, span)| span.clone())
            .collect()
    }

    fn events(&self, message: &str) -> Vec<EventRecord> {
        self.events
            .iter()
            .filter(|event| event.message == message)
            .cloned()
            .collect()
    }
}

struct FieldVisitor<'a>(&'a mut Fields);

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// A layer that keeps every span (with its recorded fields) and event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.name());
        let span = SpanRecord {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            parent,
            fields,
        };
        self.0.lock().unwrap().spans.push((id.clone(), span));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some((_, span)) = seen.spans.iter_mut().rev().find(|(span, _)| span == id) {
            values.record(&mut FieldVisitor(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut FieldVisitor(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        self.0.lock().unwrap().events.push(EventRecord {
            level: *event.metadata().level(),
            message,
            fields,
        });
    }
}

/// Runs `test` on a current-thread runtime with a capturing subscriber installed for this thread,
/// and returns what it saw.
fn traced<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Seen {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || runtime.block_on(test()));
    drop(runtime);
    let seen = std::mem::take(&mut *capture.0.lock().unwrap());
    seen
}

#[test]
fn an_acquisition_is_an_acquire_span_with_its_outcome() {
    let token = Arc::new(Mutex::new(0));
    let seen = traced(|| {
        let token = token.clone();
        async move {
            let locker = Locker::in_memory();
            let guard = locker
                .lock("order:42")
                .wait(Duration::from_secs(3))
                .lease(Duration::from_secs(7))
                .await
                .unwrap();
            *token.lock().unwrap() = guard.fencing_token();
            guard.release().await.unwrap();
        }
    });
    let spans = seen.spans("acquire");
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.target, "relock");
    assert_eq!(span.fields["key"], "order:42");
    assert_eq!(span.fields["kind"], "exclusive");
    assert_eq!(span.fields["wait"], "3s");
    assert_eq!(span.fields["lease"], "7s");
    assert_eq!(span.fields["reentrant"], "false");
    assert_eq!(span.fields["outcome"], "acquired");
    assert_eq!(
        span.fields["fencing_token"],
        token.lock().unwrap().to_string()
    );
    assert!(span.fields.contains_key("waited"), "{span:?}");
}

#[test]
fn a_timed_out_request_records_timeout_and_no_fencing_token() {
    let seen = traced(|| async {
        let locker = Locker::in_memory();
        let _held = locker.lock("order:42").await.unwrap();
        let other = locker.clone();
        let waited = tokio::spawn(async move {
            other
                .lock("order:42")
                .wait(Duration::from_millis(30))
                .await
                .map(drop)
        })
        .await
        .unwrap();
        assert!(matches!(waited, Err(Error::Timeout { .. })), "{waited:?}");
    });
    let spans = seen.spans("acquire");
    assert_eq!(spans.len(), 2, "{spans:?}");
    let timed_out = &spans[1];
    assert_eq!(timed_out.fields["outcome"], "timeout");
    assert_eq!(timed_out.fields["wait"], "30ms");
    assert!(!timed_out.fields.contains_key("fencing_token"));
    let waited = &timed_out.fields["waited"];
    assert!(waited.ends_with("ms"), "waited {waited}");
}

#[test]
fn re_entry_is_a_trace_event_and_no_span() {
    let seen = traced(|| async {
        let locker = Locker::in_memory();
        locker
            .lock("order:42")
            .run(async {
                let inner = locker.lock("order:42").await.unwrap();
                assert!(inner.is_reentrant());
            })
            .await
            .unwrap();
    });
    assert_eq!(seen.spans("acquire").len(), 1, "only the outer lock");
    let events = seen.events("relock: re-entered");
    assert_eq!(events.len(), 1, "{:?}", seen.events);
    assert_eq!(events[0].level, Level::TRACE);
    assert_eq!(events[0].fields["key"], "order:42");
    assert_eq!(events[0].fields["reentrant"], "true");
}

#[test]
fn releases_are_debug_events_naming_their_mode() {
    let seen = traced(|| async {
        let locker = Locker::in_memory();
        let explicit = locker.lock("order:1").await.unwrap();
        explicit.release().await.unwrap();
        let dropped = locker.lock("order:2").await.unwrap();
        drop(dropped);
    });
    let events = seen.events("relock: released");
    assert_eq!(events.len(), 2, "{:?}", seen.events);
    for (event, (key, mode)) in events
        .iter()
        .zip([("order:1", "explicit"), ("order:2", "background")])
    {
        assert_eq!(event.level, Level::DEBUG);
        assert_eq!(event.fields["key"], key);
        assert_eq!(event.fields["mode"], mode);
        assert!(event.fields.contains_key("held_for"), "{event:?}");
    }
    assert!(seen.events("relock: lock lost").is_empty());
}

#[test]
fn a_lost_hold_is_a_warning_with_the_time_since_its_last_renewal() {
    let seen = traced(|| async {
        let locker = Locker::in_memory();
        let guard = locker.lock("order:42").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(locker.force_release("order:42").await.unwrap());
        assert!(!guard.is_held());
        assert!(matches!(guard.release().await, Err(Error::Lost { .. })));
    });
    let lost = seen.events("relock: lock lost");
    assert_eq!(lost.len(), 1, "reported once: {:?}", seen.events);
    let event = &lost[0];
    assert_eq!(event.level, Level::WARN);
    assert_eq!(event.fields["key"], "order:42");
    assert_eq!(event.fields["cause"], "force-released");
    let since: String = event.fields["since_renewal"].clone();
    assert!(since.ends_with("ms"), "since_renewal {since}");
    let millis: f64 = since.trim_end_matches("ms").parse().unwrap();
    assert!(millis >= 20.0, "since_renewal {since}");
}

#[test]
fn a_release_that_finds_the_hold_gone_reports_the_loss() {
    let seen = traced(|| async {
        // On Redis the other locker is another process: the holder's locker hears of nothing.
        let backend = TestBackend::redis().await;
        let guard = backend.locker.lock("order:42").await.unwrap();
        assert!(backend.other.force_release("order:42").await.unwrap());
        assert!(guard.is_held(), "not noticed yet");
        assert!(matches!(guard.release().await, Err(Error::Lost { .. })));
    });
    let lost = seen.events("relock: lock lost");
    assert_eq!(lost.len(), 1, "{:?}", seen.events);
    assert_eq!(lost[0].fields["cause"], "the server no longer had it");
    let released = seen.events("relock: released");
    assert_eq!(released.len(), 1, "{:?}", seen.events);
    assert_eq!(released[0].fields["mode"], "explicit");
}

#[test]
fn spans_and_events_name_the_kind_of_hold() {
    let seen = traced(|| async {
        let locker = Locker::in_memory();
        let guard = locker.read("order:42").await.unwrap();
        guard.release().await.unwrap();
        let permit = locker.semaphore("order:43", 2).acquire().await.unwrap();
        permit.release().await.unwrap();
        let guard = locker.lock("order:44").await.unwrap();
        guard.release().await.unwrap();
    });
    let kinds = |fields: Vec<&Fields>| -> Vec<(String, String)> {
        fields
            .iter()
            .map(|fields| (fields["key"].clone(), fields["kind"].clone()))
            .collect()
    };
    let expected = [
        ("order:42", "read"),
        ("order:43", "permit"),
        ("order:44", "exclusive"),
    ]
    .map(|(key, kind)| (key.to_owned(), kind.to_owned()))
    .to_vec();
    let spans = seen.spans("acquire");
    assert_eq!(
        kinds(spans.iter().map(|span| &span.fields).collect()),
        expected
    );
    let released = seen.events("relock: released");
    assert_eq!(
        kinds(released.iter().map(|event| &event.fields).collect()),
        expected
    );
}

#[test]
fn a_lease_that_ends_unrenewed_is_reported_lost_by_time() {
    let seen = traced(|| async {
        let locker = Locker::in_memory();
        let guard = locker
            .lock("order:42")
            .lease(Duration::from_millis(100))
            .await
            .unwrap();
        // Block the only thread past the lease: the watchdog cannot renew it.
        std::thread::sleep(Duration::from_millis(150));
        assert!(!guard.is_held());
    });
    let lost = seen.events("relock: lock lost");
    assert_eq!(lost.len(), 1, "{:?}", seen.events);
    assert_eq!(lost[0].fields["cause"], "the lease ended without a renewal");
    assert_eq!(lost[0].fields["kind"], "exclusive");
}

#[test]
fn the_acquire_span_nests_in_lock_layers_request_span() {
    let seen = traced(|| async {
        let locker = Locker::in_memory();
        let service = ServiceBuilder::new()
            .layer(LockLayer::new(key::path_segment(2).prefix("order:")).locker(locker))
            .service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            });
        let request = Request::post("/orders/42/pay").body(Body::empty()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert!(response.status().is_success());
    });
    let acquire = seen.spans("acquire");
    assert_eq!(acquire.len(), 1, "{:?}", seen.spans);
    assert_eq!(acquire[0].parent, Some("lock"));
    assert_eq!(acquire[0].fields["key"], "order:42");
    assert_eq!(acquire[0].fields["outcome"], "acquired");
}

/// One metric read from a [`DebuggingRecorder`].
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: DebugValue,
}

fn snapshot(snapshotter: &Snapshotter) -> Vec<Sample> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let labels = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            Sample {
                name: key.name().to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

/// The value of the metric `name` whose labels are exactly `labels`.
fn metric<'a>(
    snapshot: &'a [Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|sample| {
            sample.name == name
                && sample.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|sample| &sample.value)
}

fn counter(snapshot: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    match metric(snapshot, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        other => panic!("{name} is not a counter: {other:?}"),
    }
}

fn samples(snapshot: &[Sample], name: &str, labels: &[(&str, &str)]) -> usize {
    match metric(snapshot, name, labels) {
        Some(DebugValue::Histogram(values)) => values.len(),
        None => 0,
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

#[test]
fn metrics_count_a_known_sequence_of_lock_operations() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let locker = Locker::in_memory();
            // Acquisition 1, one re-entry, an explicit release at the end of `run`.
            locker
                .lock("order:1")
                .run(async {
                    let inner = locker.lock("order:1").await.unwrap();
                    assert!(inner.is_reentrant());
                })
                .await
                .unwrap();
            // Acquisition 2; another task times out waiting for it.
            let held = locker.lock("order:2").await.unwrap();
            let other = locker.clone();
            let waited = tokio::spawn(async move {
                other
                    .lock("order:2")
                    .wait(Duration::from_millis(20))
                    .await
                    .map(drop)
            })
            .await
            .unwrap();
            assert!(matches!(waited, Err(Error::Timeout { .. })));
            // Lost to a force-release, then dropped: released in the background.
            assert!(locker.force_release("order:2").await.unwrap());
            assert!(!held.is_held());
            drop(held);

            // A read hold, re-entered by a read inside it, released explicitly.
            locker
                .read("order:3")
                .run(async {
                    let inner = locker.read("order:3").await.unwrap();
                    assert!(inner.is_reentrant());
                })
                .await
                .unwrap();
            // Permits: one taken and returned explicitly, another dropped (returned in the
            // background) after a request for a third timed out.
            let exports = locker.semaphore("order:4", 2);
            let first = exports.acquire().await.unwrap();
            let second = exports.acquire().await.unwrap();
            let over = exports.acquire().wait(Duration::from_millis(20)).await;
            assert!(matches!(over, Err(Error::Timeout { .. })));
            first.release().await.unwrap();
            drop(second);
        })
    });
    let snapshot = snapshot(&snapshotter);
    let exclusive = ("kind", "exclusive");
    let (read, permit) = (("kind", "read"), ("kind", "permit"));
    assert_eq!(counter(&snapshot, "relock_acquired_total", &[exclusive]), 2);
    assert_eq!(counter(&snapshot, "relock_acquired_total", &[read]), 1);
    assert_eq!(counter(&snapshot, "relock_acquired_total", &[permit]), 2);
    assert_eq!(
        counter(&snapshot, "relock_reentered_total", &[exclusive]),
        1
    );
    assert_eq!(counter(&snapshot, "relock_reentered_total", &[read]), 1);
    assert_eq!(counter(&snapshot, "relock_timeouts_total", &[exclusive]), 1);
    assert_eq!(counter(&snapshot, "relock_timeouts_total", &[permit]), 1);
    assert_eq!(counter(&snapshot, "relock_lost_total", &[exclusive]), 1);
    for (kind, explicit, background) in [(exclusive, 1, 1), (read, 1, 0), (permit, 1, 1)] {
        assert_eq!(
            counter(
                &snapshot,
                "relock_released_total",
                &[("mode", "explicit"), kind]
            ),
            explicit,
            "{kind:?}"
        );
        assert_eq!(
            counter(
                &snapshot,
                "relock_released_total",
                &[("mode", "background"), kind]
            ),
            background,
            "{kind:?}"
        );
    }
    for (kind, acquired, timeout) in [(exclusive, 2, 1), (read, 1, 0), (permit, 2, 1)] {
        assert_eq!(
            samples(
                &snapshot,
                "relock_wait_seconds",
                &[("result", "acquired"), kind]
            ),
            acquired,
            "{kind:?}"
        );
        assert_eq!(
            samples(
                &snapshot,
                "relock_wait_seconds",
                &[("result", "timeout"), kind]
            ),
            timeout,
            "{kind:?}"
        );
        assert_eq!(
            samples(&snapshot, "relock_hold_seconds", &[kind]),
            acquired,
            "{kind:?}"
        );
        // A permit request that times out asks the server at least once; the exclusive one
        // waited on its process's own holder without asking.
        let round_trips = samples(&snapshot, "relock_acquire_round_trip_seconds", &[kind]);
        if kind == exclusive {
            assert_eq!(round_trips, 2);
        } else {
            assert!(round_trips >= acquired + timeout, "{kind:?}: {round_trips}");
        }
        match metric(&snapshot, "relock_holds", &[kind]) {
            Some(DebugValue::Gauge(holds)) => assert_eq!(holds.0, 0.0, "{kind:?}"),
            other => panic!("relock_holds {kind:?}: {other:?}"),
        }
    }
    for sample in &snapshot {
        assert!(sample.name.starts_with("relock_"), "{sample:?}");
        assert!(
            sample.labels.iter().any(|(key, value)| key == "kind"
                && ["exclusive", "read", "permit"].contains(&value.as_str())),
            "every metric has its kind: {sample:?}"
        );
        assert!(
            sample
                .labels
                .iter()
                .all(|(_, value)| !value.contains("order:")),
            "no key as a label: {sample:?}"
        );
    }
}

#[test]
fn metrics_count_renewals() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let locker = Locker::in_memory();
            let guard = locker
                .lock("order:1")
                .lease(Duration::from_millis(150))
                .await
                .unwrap();
            let permit = locker
                .semaphore("order:2", 3)
                .acquire()
                .lease(Duration::from_millis(150))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
            guard.release().await.unwrap();
            permit.release().await.unwrap();
        })
    });
    let snapshot = snapshot(&snapshotter);
    for kind in ["exclusive", "permit"] {
        let renewed = counter(
            &snapshot,
            "relock_renewals_total",
            &[("result", "ok"), ("kind", kind)],
        );
        assert!(renewed >= 1, "{kind}: {renewed}");
    }
    assert_eq!(
        counter(
            &snapshot,
            "relock_renewals_total",
            &[("result", "ok"), ("kind", "read")]
        ),
        0
    );
}
