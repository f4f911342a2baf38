//! The `tracing` feature: one span per batch, named `chunked_batch`, with the key
//! range, the rows, the attempt and the elapsed time, recorded by a subscriber
//! that keeps every span's fields.
#![cfg(feature = "tracing")]

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

type Fields = BTreeMap<String, String>;

/// Keeps the name and fields of every span.
#[derive(Default, Clone)]
struct Capture {
    spans: Arc<Mutex<Vec<(String, Fields)>>>,
    events: Arc<Mutex<Vec<(String, Fields)>>>,
    next: Arc<AtomicU64>,
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_string(), fields));
        self.next.store(spans.len() as u64, Ordering::SeqCst);
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let i = usize::try_from(span.into_u64()).unwrap() - 1;
        values.record(&mut Visitor(&mut spans[i].1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        let name = event.metadata().name().to_string();
        self.events.lock().unwrap().push((name, fields));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    fn named(&self, name: &str, events: bool) -> Vec<Fields> {
        let all = if events { &self.events } else { &self.spans };
        all.lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn batches(&self) -> Vec<Fields> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| name == "chunked_batch")
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// The binary's global subscriber: it records nothing but keeps every callsite
/// `sometimes` interesting. Without it, a thread with no subscriber that reaches
/// the batch span first (another test) can cache the callsite as never
/// interesting while a single scoped `Capture` is registered, and a capturing
/// test then sees no spans at all.
struct Quiet;

impl Subscriber for Quiet {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Runs `f` with `capture` as the thread's subscriber, once the global
/// [`Quiet`] subscriber is in place.
fn capturing<T>(capture: &Capture, f: impl FnOnce() -> T) -> T {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        // Another global subscriber already set is as good: it only has to exist.
        let _ = tracing::subscriber::set_global_default(Quiet);
    });
    tracing::subscriber::with_default(capture.clone(), || {
        tracing::callsite::rebuild_interest_cache();
        f()
    })
}

fn field<'a>(f: &'a Fields, name: &str) -> &'a str {
    f.get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no field {name} in {f:?}"))
}

/// Over its limit for its first `n` reads, then fine.
struct OverFor(std::sync::atomic::AtomicUsize);

impl diesel_chunked_iterator::health::Signal for OverFor {
    fn name(&self) -> String {
        "queue".into()
    }
    fn read(&self) -> Result<Vec<diesel_chunked_iterator::health::Reading>, String> {
        let left = self.0.load(Ordering::SeqCst);
        if left > 0 {
            self.0.store(left - 1, Ordering::SeqCst);
        }
        let value = if left > 0 { 50.0 } else { 1.0 };
        Ok(vec![diesel_chunked_iterator::health::Reading::new(
            "jobs", value, 10.0,
        )])
    }
}

backend_tests! {
    fn each_health_wait_is_an_event_and_the_batch_span_records_the_wait(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=5);
        let capture = Capture::default();
        let report = capturing(&capture, || {
            posts::table
                .chunked_by(posts::id)
                .batch_size(10)
                .health_interval(std::time::Duration::from_millis(20))
                .throttle_on(OverFor(std::sync::atomic::AtomicUsize::new(2)))
                .update_all(&mut conn, posts::published.eq(true))
                .unwrap()
        });
        assert_eq!(report.rows, 5);
        let events = capture.named("chunked_health_wait", true);
        assert_eq!(events.len(), 2, "{events:#?}");
        for e in &events {
            assert_eq!(field(e, "signal"), "queue");
            assert_eq!(field(e, "batch"), "1");
            assert_eq!(field(e, "source"), "jobs");
            assert_eq!(field(e, "value"), "50");
            assert_eq!(field(e, "limit"), "10");
            assert_eq!(field(e, "message"), "waiting on queue");
        }
        let spans = capture.named("chunked_write_batch", false);
        assert_eq!(spans.len(), 1, "{spans:#?}");
        let waited: f64 = field(&spans[0], "waited_ms").parse().unwrap();
        assert!(waited >= 40.0, "two waits of 20 ms at least: {waited}");
        let reason = field(&spans[0], "waited_for");
        assert!(reason.starts_with("queue: jobs: 50 > 10, waited "), "{reason}");
        assert_eq!(report.waits.len(), 1);
    }

    fn one_span_per_batch_with_range_rows_attempt_and_time(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=25);
        let capture = Capture::default();
        let ids: Vec<i32> = capturing(&capture, || {
            posts::table
                .chunked_by(posts::id)
                .batch_size(10)
                .load_iter::<Post>(&mut conn)
                .map(|p| p.unwrap().id)
                .collect()
        });
        assert_eq!(ids, (1..=25).collect::<Vec<_>>());
        let spans = capture.batches();
        assert_eq!(spans.len(), 3, "{spans:#?}");
        let expected = [("1", "None", "10", "10"), ("2", "Some(10)", "20", "10"), ("3", "Some(20)", "25", "5")];
        for (span, (batch, after, until, rows)) in spans.iter().zip(expected) {
            assert_eq!(field(span, "batch"), batch, "{span:?}");
            assert_eq!(field(span, "key"), "posts.id");
            assert_eq!(field(span, "after"), after, "{span:?}");
            assert_eq!(field(span, "until"), until, "{span:?}");
            assert_eq!(field(span, "rows"), rows, "{span:?}");
            assert_eq!(field(span, "limit"), "10");
            assert_eq!(field(span, "attempt"), "1");
            let ms: f64 = field(span, "elapsed_ms").parse().unwrap();
            assert!(ms >= 0.0);
            assert!(!span.contains_key("error"), "{span:?}");
        }
    }

    fn a_failed_batch_records_its_error(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=15);
        let capture = Capture::default();
        let mut other = connect::<B>(&db);
        capturing(&capture, || {
            let mut it = posts::table.chunked_by(posts::id).batch_size(10).load_batches::<Post>(&mut conn);
            assert_eq!(it.next().unwrap().unwrap().len(), 10);
            diesel::sql_query("DROP TABLE posts").execute(&mut other).unwrap();
            assert!(it.next().unwrap().is_err());
        });
        let spans = capture.batches();
        assert_eq!(spans.len(), 2, "{spans:#?}");
        assert_eq!(field(&spans[1], "batch"), "2");
        assert_eq!(field(&spans[1], "after"), "Some(10)");
        assert_eq!(field(&spans[1], "attempt"), "1");
        assert!(field(&spans[1], "error").contains("posts"), "{:?}", spans[1]);
        assert!(!spans[1].contains_key("rows"));
    }
}
