//! The health gate of a write job: between batches, whether its signals are
//! due to be read, and what their readings mean (go on, wait, or stop).
//! No I/O: the driver reads the signals ([`Step::Probe`](super::Step::Probe))
//! and hands the outcomes to [`Gate::probed`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::health::{HealthWait, Outcome, Reading, Unread};

/// The default of [`health_interval`](crate::Chunked::health_interval).
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The default of [`unreadable_limit`](crate::Chunked::unreadable_limit).
pub(crate) const DEFAULT_UNREADABLE_LIMIT: Duration = Duration::from_secs(60);

/// One signal's wait, open until a reading lets the job go on.
#[derive(Debug)]
struct Episode {
    signal: String,
    since: Instant,
    reading: Option<Reading>,
    error: Option<String>,
}

/// Whether and when a job's signals are read, and the waits they caused.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Whether the job has signals.
    enabled: bool,
    interval: Duration,
    limit: Duration,
    /// The last probe that let the job go on.
    clear_at: Option<Instant>,
    /// Signals (by their place in the job's list: two signals may share a
    /// name) unreadable since.
    unreadable: BTreeMap<usize, Instant>,
    /// Signals (by place) that say wait.
    open: BTreeMap<usize, Episode>,
    /// The first probe of the current wait.
    waiting_since: Option<Instant>,
    /// The waits closed so far.
    pub(crate) closed: Vec<HealthWait>,
    /// The wait before the next batch, once it is over.
    before_batch: Duration,
    /// All the waits, as time on the clock (waits on two signals at once
    /// count once).
    waited: Duration,
}

impl Gate {
    pub(crate) fn new(enabled: bool, interval: Option<Duration>, limit: Option<Duration>) -> Self {
        Self {
            enabled,
            interval: interval.unwrap_or(DEFAULT_INTERVAL),
            limit: limit.unwrap_or(DEFAULT_UNREADABLE_LIMIT),
            clear_at: None,
            unreadable: BTreeMap::new(),
            open: BTreeMap::new(),
            waiting_since: None,
            closed: Vec::new(),
            before_batch: Duration::ZERO,
            waited: Duration::ZERO,
        }
    }

    /// Whether the signals are read before the next batch: always before
    /// the first and while they say wait, otherwise once the interval since
    /// the last reading that let the job go on is over.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.enabled
            && self
                .clear_at
                .is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
    }

    /// Judges the signals as read at `now` (one outcome per signal, in the
    /// job's order), before batch `batch`: `None`,
    /// go on; `Some(d)`, wait `d` and read them again. A signal that is not
    /// available, or unreadable for the whole limit, stops the job.
    pub(crate) fn probed(
        &mut self,
        outcomes: Vec<Outcome>,
        now: Instant,
        batch: u64,
    ) -> Result<Option<Duration>, Error> {
        let mut wait = false;
        for (i, Outcome { signal, read }) in outcomes.into_iter().enumerate() {
            match read {
                Err(Unread::Unsupported(reason)) => {
                    return Err(Error::HealthUnsupported { signal, reason });
                }
                Err(Unread::Failed(reason)) => {
                    let since = *self.unreadable.entry(i).or_insert(now);
                    let unread_for = now.saturating_duration_since(since);
                    if unread_for >= self.limit {
                        return Err(Error::HealthUnreadable {
                            signal,
                            reason,
                            waited: unread_for,
                        });
                    }
                    crate::trace::health_wait(&signal, batch, None, Some(&reason));
                    let episode = self.open.entry(i).or_insert(Episode {
                        signal,
                        since: now,
                        reading: None,
                        error: None,
                    });
                    episode.error = Some(reason);
                    wait = true;
                }
                Ok(readings) => {
                    self.unreadable.remove(&i);
                    let worst = readings
                        .into_iter()
                        .filter(Reading::is_over)
                        .max_by(|a, b| a.value.total_cmp(&b.value));
                    match worst {
                        Some(r) => {
                            crate::trace::health_wait(&signal, batch, Some(&r), None);
                            let episode = self.open.entry(i).or_insert(Episode {
                                signal,
                                since: now,
                                reading: None,
                                error: None,
                            });
                            if episode
                                .reading
                                .as_ref()
                                .is_none_or(|old| r.value > old.value)
                            {
                                episode.reading = Some(r);
                            }
                            wait = true;
                        }
                        None => self.close(i, now, batch),
                    }
                }
            }
        }
        if wait {
            self.waiting_since.get_or_insert(now);
            return Ok(Some(self.interval.max(crate::control::POLL)));
        }
        self.clear_at = Some(now);
        if let Some(since) = self.waiting_since.take() {
            let d = now.saturating_duration_since(since);
            self.before_batch += d;
            self.waited += d;
        }
        Ok(None)
    }

    fn close(&mut self, i: usize, now: Instant, batch: u64) {
        if let Some(e) = self.open.remove(&i) {
            self.closed.push(HealthWait {
                signal: e.signal,
                batch,
                waited: now.saturating_duration_since(e.since),
                reading: e.reading,
                error: e.error,
            });
        }
    }

    /// The job ends (cancelled while it waited, or stopped): the open waits
    /// are closed at `now`.
    pub(crate) fn close_all(&mut self, now: Instant, batch: u64) {
        let open: Vec<usize> = self.open.keys().copied().collect();
        for i in open {
            self.close(i, now, batch);
        }
        if let Some(since) = self.waiting_since.take() {
            let d = now.saturating_duration_since(since);
            self.before_batch += d;
            self.waited += d;
        }
    }

    /// How long the batch about to run waited on the signals.
    pub(crate) fn take_before_batch(&mut self) -> Duration {
        std::mem::take(&mut self.before_batch)
    }

    /// The waits that held back batch `batch`.
    pub(crate) fn closed_before(&self, batch: u64) -> Vec<HealthWait> {
        let from = self
            .closed
            .iter()
            .rposition(|w| w.batch != batch)
            .map_or(0, |i| i + 1);
        self.closed[from..].to_vec()
    }

    /// All the waits so far.
    pub(crate) fn total(&self) -> Duration {
        self.waited
    }
}
