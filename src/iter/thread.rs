//! A blocking scan on a thread of its own, reading batches ahead of the one
//! being handed out ([`LoadIter::on_thread`], [`LoadBatches::on_thread`]).
//!
//! The thread runs the same [`Scan`] driver as the iterators, unchanged: the
//! same statements, checks and retries. It sends each batch through a
//! bounded channel as soon as it is loaded and starts the next, and stops
//! when the channel is full: at most `prefetch` batches (at least one) wait
//! loaded while the caller works through the current one. Dropping the
//! iterator closes the channel and returns at once; the thread stops after
//! the batch it is loading.

use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::{LoadBatches, LoadIter, Scan};
use crate::backend::KeysetBackend;
use crate::builder::Db;
use crate::engine::{Counters, EndReason, Handed, Progress};
use crate::error::Error;
use crate::key::Key;
use crate::rows::{LoadedRow, Rows};
use crate::source::ConnectionSource;
use crate::stored::StoredKey;
use crate::unique::UniqueIndexes;

/// One message of the scan's thread: a batch (or the end, or the error), and
/// the scan's counters once it was loaded.
struct Loaded<P> {
    batch: Option<Result<P, Error>>,
    counters: Counters,
}

/// A batch as a row iterator takes it: each item with its key.
type Keyed<T, V> = Vec<(StoredKey<V>, T)>;
/// A batch as a batch iterator takes it: the items, and the last one's key.
type Items<T, V> = (Vec<T>, Option<StoredKey<V>>);

/// The receiving side both iterators share: the channel, the thread, what
/// was handed out, and the counters.
struct Ahead<P, V> {
    rx: Option<Receiver<Loaded<P>>>,
    thread: Option<JoinHandle<()>>,
    handed: Handed<V>,
    counters: Counters,
    /// The scan has ended (its last message was received).
    over: bool,
}

impl<P: Send + 'static, V> Ahead<P, V> {
    /// Moves `scan` to a new thread that loads batches, turns each into `P`
    /// with `shape` and sends it into a channel of `prefetch` batches (at
    /// least one), and takes over `handed`.
    fn spawn<S, B, K, R>(
        mut scan: Scan<S, B, K, R>,
        handed: Handed<V>,
        shape: fn(Vec<R::Loaded>) -> P,
    ) -> Self
    where
        Scan<S, B, K, R>: Send + 'static,
        S: ConnectionSource,
        S::Connection: UniqueIndexes,
        Db<S>: KeysetBackend,
        K: Key<Value = V>,
        R: Rows<S::Connection, B, K>,
    {
        let counters = scan.core.engine.counters();
        let ahead = scan
            .core
            .engine
            .config
            .prefetch
            .clamp(1, crate::engine::MAX_PREFETCH);
        // The thread holds one loaded batch while it waits to send it: the
        // channel holds the others.
        let (tx, rx) = sync_channel(ahead - 1);
        let thread = std::thread::Builder::new()
            .name("chunked-scan".into())
            .spawn(move || run(&mut scan, &tx, shape));
        // No thread: the first `next()` is `Error::Thread`.
        let (rx, thread) = match thread {
            Ok(thread) => (Some(rx), Some(thread)),
            Err(_) => (None, None),
        };
        Self {
            rx,
            thread,
            handed,
            counters,
            over: false,
        }
    }

    /// The next batch: `None` at the end. Re-raises a panic of the thread
    /// (a key closure's) here, where the caller can see it.
    fn next_batch(&mut self) -> Option<Result<P, Error>> {
        if self.over {
            return None;
        }
        let received = self.rx.as_ref().and_then(|rx| rx.recv().ok());
        match received {
            Some(Loaded { batch, counters }) => {
                self.counters = counters;
                if !matches!(batch, Some(Ok(_))) {
                    self.over = true;
                }
                batch
            }
            None => {
                self.over = true;
                self.counters.end = Some(EndReason::Failed);
                self.join();
                Some(Err(Error::Thread))
            }
        }
    }
}

impl<P, V> Ahead<P, V> {
    fn join(&mut self) {
        self.rx = None;
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    fn progress(&self) -> Progress<V>
    where
        V: Clone,
    {
        self.handed.progress_as_of(&self.counters)
    }

    /// Why the scan ended, as of the last batch received: the scan's thread
    /// knows it with the last batch (its end or `limit_total`), before the
    /// message that ends the channel.
    fn end_reason(&self) -> Option<EndReason> {
        self.counters.end
    }
}

// Dropping the iterator closes the channel and does not wait: the thread
// finishes the batch it is loading (its connection then goes back to the
// pool), finds the channel closed and ends. Waiting here could block the
// caller for as long as that batch takes, or for ever if the caller holds
// what the batch waits for (the pool's last connection, a lock).

/// The scan's thread: loads batches and sends them until the scan ends or the
/// iterator is dropped.
fn run<S, B, K, R, P>(
    scan: &mut Scan<S, B, K, R>,
    tx: &SyncSender<Loaded<P>>,
    shape: fn(Vec<R::Loaded>) -> P,
) where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    loop {
        let batch = scan.next_batch().map(|b| b.map(shape));
        let last = !matches!(batch, Some(Ok(_)));
        let counters = scan.core.engine.counters();
        if tx.send(Loaded { batch, counters }).is_err() || last {
            return;
        }
    }
}

/// Yields rows one at a time, reading batches ahead on a thread of its own;
/// made by [`LoadIter::on_thread`].
///
/// Holds the batch being handed out and at most `prefetch` (at least one)
/// loaded ones. Dropping it returns at once; its thread stops after the
/// batch it is loading, and then gives its connection back.
pub struct ThreadIter<T, V> {
    ahead: Ahead<Keyed<T, V>, V>,
    buffer: std::vec::IntoIter<(StoredKey<V>, T)>,
}

/// Yields one `Vec` per query, reading batches ahead on a thread of its own;
/// made by [`LoadBatches::on_thread`].
pub struct ThreadBatches<T, V> {
    ahead: Ahead<Items<T, V>, V>,
}

impl<S, B, K, R> LoadIter<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
    R::Item: Send + 'static,
    K::Value: Send + 'static,
{
    /// Moves the scan to a thread of its own, which loads the next batches
    /// while you work through this one: up to the scan's
    /// [`prefetch`](crate::Chunked::prefetch) batches ahead, at least one.
    /// Same rows, order, checks and retries as this iterator; `last_key()` is
    /// the key of the last row handed out.
    ///
    /// The scan must be able to move to the thread (`Send + 'static`): a
    /// source the thread can own, such as an r2d2 pool by value
    /// (`pool.clone()`), and a query that borrows nothing. A connection you
    /// lend (`&mut conn`) is a compile error here.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let path = std::env::temp_dir().join(format!("doc-thread-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let pool = Pool::new(ConnectionManager::<SqliteConnection>::new(&url))?;
    /// let titles: Vec<String> = posts::table
    ///     .filter(posts::published.eq(true))
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .prefetch(2)
    ///     .load_iter::<Post>(pool.clone())
    ///     .on_thread()
    ///     .map(|p| p.map(|p| p.title))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(titles, ["one", "three", "five"]);
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn on_thread(self) -> ThreadIter<R::Item, K::Value>
    where
        Scan<S, B, K, R>: Send + 'static,
    {
        let LoadIter {
            scan,
            buffer,
            handed,
        } = self;
        let buffer: Keyed<R::Item, K::Value> = buffer.map(LoadedRow::into_parts).collect();
        ThreadIter {
            ahead: Ahead::spawn(scan, handed, |rows| {
                rows.into_iter().map(LoadedRow::into_parts).collect()
            }),
            buffer: buffer.into_iter(),
        }
    }
}

impl<S, B, K, R> LoadBatches<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
    R::Item: Send + 'static,
    K::Value: Send + 'static,
{
    /// Moves the scan to a thread of its own that loads up to
    /// [`prefetch`](crate::Chunked::prefetch) batches (at least one) ahead of
    /// the one you hold: see [`LoadIter::on_thread`].
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let path = std::env::temp_dir().join(format!("doc-thread-b-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let pool = Pool::new(ConnectionManager::<SqliteConnection>::new(&url))?;
    /// let sizes: Vec<usize> = posts::table
    ///     .chunked_by(posts::id)
    ///     .batch_size(2)
    ///     .load_batches::<Post>(pool.clone())
    ///     .on_thread()
    ///     .map(|b| b.map(|b| b.len()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(sizes, [2, 2, 1]);
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn on_thread(self) -> ThreadBatches<R::Item, K::Value>
    where
        Scan<S, B, K, R>: Send + 'static,
    {
        let LoadBatches { scan, handed } = self;
        ThreadBatches {
            ahead: Ahead::spawn(scan, handed, |rows| {
                let last = rows.last().map(|r| r.key().clone());
                (rows.into_iter().map(|r| r.into_parts().1).collect(), last)
            }),
        }
    }
}

/// The accessors both iterators share.
macro_rules! accessors {
    ($($iter:ident),*) => {$(
        impl<T, V: Clone> $iter<T, V> {
            /// The key of the last row handed to the caller (by a batch
            /// iterator: the last row of the last batch), not of the last row
            /// loaded: `start_after(last_key)` resumes with exactly the next
            /// unprocessed row.
            pub fn last_key(&self) -> Option<&V> {
                self.ahead.handed.last_key()
            }

            /// [`last_key`](Self::last_key) as the database stored it (see
            /// [`LoadIter::last_stored_key`]).
            pub fn last_stored_key(&self) -> Option<&StoredKey<V>> {
                self.ahead.handed.last_stored_key()
            }

            /// Counters of the scan: rows handed out so far; batches, queries
            /// and retries as of the last batch received from the thread.
            pub fn progress(&self) -> Progress<V> {
                self.ahead.progress()
            }
        }

        impl<T, V: Clone + fmt::Debug> fmt::Debug for $iter<T, V> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($iter))
                    .field("progress", &self.ahead.progress())
                    .finish_non_exhaustive()
            }
        }
    )*};
}

accessors!(ThreadIter, ThreadBatches);

impl<T, V> ThreadIter<T, V> {
    /// Why the scan ended, once it has (and its last batch is used up).
    pub fn end_reason(&self) -> Option<EndReason> {
        if self.buffer.len() > 0 {
            return None;
        }
        self.ahead.end_reason()
    }
}

impl<T, V> ThreadBatches<T, V> {
    /// Why the scan ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.ahead.end_reason()
    }
}

impl<T: Send + 'static, V: Send + 'static> Iterator for ThreadIter<T, V> {
    type Item = Result<T, Error>;

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.ahead.over || self.ahead.counters.end.is_some() {
            // only the rows in hand are left
            true => (self.buffer.len(), Some(self.buffer.len())),
            false => (self.buffer.len(), None),
        }
    }

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, t)) = self.buffer.next() {
                self.ahead.handed.handed_out(1, Some(k));
                return Some(Ok(t));
            }
            match self.ahead.next_batch()? {
                Ok(rows) => self.buffer = rows.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl<T: Send + 'static, V: Send + 'static> Iterator for ThreadBatches<T, V> {
    type Item = Result<Vec<T>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let (items, last) = match self.ahead.next_batch()? {
            Ok(batch) => batch,
            Err(e) => return Some(Err(e)),
        };
        self.ahead.handed.handed_out(items.len() as u64, last);
        Some(Ok(items))
    }
}

impl<T, V> std::iter::FusedIterator for ThreadIter<T, V> where Self: Iterator {}
impl<T, V> std::iter::FusedIterator for ThreadBatches<T, V> where Self: Iterator {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_on_a_closed_channel_without_a_batch() {
        let mut ahead: Ahead<(), i64> = Ahead {
            rx: None,
            thread: None,
            handed: Handed::new(),
            counters: Counters::default(),
            over: false,
        };
        assert!(matches!(ahead.next_batch(), Some(Err(Error::Thread))));
        assert!(ahead.next_batch().is_none());
    }
}
