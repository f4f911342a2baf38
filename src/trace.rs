//! The `tracing` span of one batch (feature `tracing`; without it, nothing):
//! `chunked_batch` for a scan's batch, `chunked_write_batch` for a write
//! job's. The drivers run a batch's statements inside it; its fields are
//! recorded by the scan's core and by the write machine.

use crate::engine::BatchPlan;
use crate::error::Error;

/// The span of one batch.
#[derive(Default)]
pub(crate) struct Trace {
    #[cfg(feature = "tracing")]
    span: Option<tracing::Span>,
    #[cfg(feature = "tracing")]
    started: Option<std::time::Instant>,
}

#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
impl Trace {
    /// No span: before a job's first batch.
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// The span of a scan's batch `plan`, by key `key` after `after`.
    pub(crate) fn read<V: std::fmt::Debug>(plan: &BatchPlan, key: &str, after: Option<&V>) -> Self {
        #[cfg(feature = "tracing")]
        return Self::with(tracing::info_span!(
            "chunked_batch",
            batch = plan.batch,
            key = %key,
            after = ?after,
            until = tracing::field::Empty,
            limit = plan.limit,
            rows = tracing::field::Empty,
            attempt = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
            error = tracing::field::Empty,
        ));
        #[cfg(not(feature = "tracing"))]
        Self::default()
    }

    /// The span of a write job's batch `plan`, by key `key` after `after`.
    pub(crate) fn write<V: std::fmt::Debug>(
        plan: &BatchPlan,
        key: &str,
        after: Option<&V>,
    ) -> Self {
        #[cfg(feature = "tracing")]
        return Self::with(tracing::info_span!(
            "chunked_write_batch",
            batch = plan.batch,
            key = %key,
            after = ?after,
            limit = plan.limit,
            rows = tracing::field::Empty,
            written = tracing::field::Empty,
            waited_ms = tracing::field::Empty,
            waited_for = tracing::field::Empty,
            attempt = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
            error = tracing::field::Empty,
        ));
        #[cfg(not(feature = "tracing"))]
        Self::default()
    }

    /// Records how long the batch waited on health signals before it ran,
    /// and why (`reasons`: the waits, as they display).
    pub(crate) fn waited(&self, d: std::time::Duration, reasons: &str) {
        #[cfg(feature = "tracing")]
        if let (Some(span), false) = (&self.span, d.is_zero()) {
            span.record("waited_ms", d.as_secs_f64() * 1000.0);
            span.record("waited_for", reasons);
        }
    }

    #[cfg(feature = "tracing")]
    fn with(span: tracing::Span) -> Self {
        Self {
            span: Some(span),
            started: Some(std::time::Instant::now()),
        }
    }

    /// Enters the span (a blocking driver, for the whole attempt).
    #[cfg(feature = "tracing")]
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.span.as_ref().map(|s| s.enter())
    }

    /// Enters the span (a blocking driver, for the whole attempt).
    #[cfg(not(feature = "tracing"))]
    pub(crate) fn enter(&self) -> Option<()> {
        None
    }

    /// `future`, run inside the span (an async driver).
    #[cfg(feature = "async")]
    pub(crate) fn instrument<F: std::future::Future>(&self, future: F) -> Instrumented<F> {
        #[cfg(feature = "tracing")]
        return tracing::Instrument::instrument(
            future,
            self.span.clone().unwrap_or_else(tracing::Span::none),
        );
        #[cfg(not(feature = "tracing"))]
        future
    }

    /// Records the attempt that runs now.
    pub(crate) fn attempt(&self, attempt: u32) {
        self.record("attempt", attempt);
    }

    /// Records the error the batch ended the scan with.
    pub(crate) fn failed(&self, e: &Error) {
        #[cfg(feature = "tracing")]
        {
            self.record("error", tracing::field::display(e));
            self.elapsed();
        }
    }

    /// Records a loaded batch of `rows` rows ending at `until`.
    pub(crate) fn loaded<V: std::fmt::Debug>(&self, rows: usize, until: Option<&V>) {
        #[cfg(feature = "tracing")]
        {
            self.record("rows", rows);
            self.elapsed();
            if let Some(until) = until {
                self.record("until", tracing::field::debug(until));
            }
        }
    }

    /// Records a committed write batch of `rows` rows that wrote `written`.
    pub(crate) fn committed(&self, rows: usize, written: u64) {
        #[cfg(feature = "tracing")]
        {
            self.record("rows", rows);
            self.record("written", written);
            self.elapsed();
        }
    }

    #[cfg(feature = "tracing")]
    fn elapsed(&self) {
        if let Some(started) = self.started {
            self.record("elapsed_ms", started.elapsed().as_secs_f64() * 1000.0);
        }
    }

    fn record<T: RecordValue>(&self, field: &str, value: T) {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            span.record(field, value);
        }
    }
}

/// What [`Trace::instrument`] returns.
#[cfg(all(feature = "async", feature = "tracing"))]
pub(crate) type Instrumented<F> = tracing::instrument::Instrumented<F>;
/// What [`Trace::instrument`] returns.
#[cfg(all(feature = "async", not(feature = "tracing")))]
pub(crate) type Instrumented<F> = F;

/// A value a span field records.
#[cfg(feature = "tracing")]
pub(crate) trait RecordValue: tracing::Value {}
#[cfg(feature = "tracing")]
impl<T: tracing::Value> RecordValue for T {}
/// A value a span field records.
#[cfg(not(feature = "tracing"))]
pub(crate) trait RecordValue {}
#[cfg(not(feature = "tracing"))]
impl<T> RecordValue for T {}

/// An event `chunked_health_wait` (target `diesel_chunked_iterator::health`):
/// batch `batch` waits on `signal`, over its limit (`reading`) or unreadable
/// (`error`).
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn health_wait(
    signal: &str,
    batch: u64,
    reading: Option<&crate::health::Reading>,
    error: Option<&str>,
) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        name: "chunked_health_wait",
        target: "diesel_chunked_iterator::health",
        signal,
        batch,
        source = reading.map(|r| r.source.as_str()),
        value = reading.map(|r| r.value),
        limit = reading.map(|r| r.limit),
        error,
        "waiting on {signal}"
    );
}
