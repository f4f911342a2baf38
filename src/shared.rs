//! The two places where the crate hands Diesel state that Diesel's API has
//! no slot for. Each is the smallest workaround found; both are here, with
//! their reasons, and nowhere else.
//!
//! - **The moving bound** ([`BoundsCell`]). A scan's statement is built once
//!   (a boxed query with the seek predicate inside it) and run once per
//!   batch; only the bound moves. Diesel binds parameters by reference for
//!   the lifetime of the AST walk, which no lock guard can outlive, so the
//!   bound lives in an `UnsafeCell` that the scan writes only between walks
//!   (it holds the only `&mut` to the query). Rebuilding the boxed statement
//!   per batch would remove the cell and cost a boxing per batch (the
//!   statement cache keys on the SQL either way).
//! - **Where a row's key is** ([`with_key_columns`]). `load_iter::<M>` loads
//!   `M::as_select()` and the key columns in one row; `QueryableByName::build`
//!   gets no context, so the positions of the key's columns travel in a
//!   thread-local set around each batch's load (and, on an async connection,
//!   around each `poll`, by [`WithKeyColumns`]: rows are decoded inside
//!   `poll`, never across an `.await`).

use std::cell::{Cell, UnsafeCell};
use std::sync::{Arc, OnceLock};

use crate::key::KeyPositions;
use crate::predicate::{Bounds, Floor};
use crate::stored::StoredKey;

/// The bounds, shared between the scan (which moves `after` between batches) and
/// the [`SeekPredicate`] inside the boxed query (which renders them).
///
/// A `Mutex` cannot be used: Diesel binds parameters by reference for the lifetime
/// of the AST walk, which no lock guard can outlive.
pub(crate) struct BoundsCell<V> {
    bounds: UnsafeCell<Bounds<V>>,
    /// The floor of a first batch with no bound, where the backend wants one
    /// ([`KeysetBackend::FIRST_BATCH_FLOOR`]); set once, before any walk.
    floor: OnceLock<Floor>,
}

// SAFETY: the cell hands out shared references (`get`) and is written only by
// `set_after`, whose contract excludes any live shared reference. Sharing it is
// sharing `&Bounds<V>`, which is `Sync` when `V` is; sending it sends a `V`.
unsafe impl<V: Send> Send for BoundsCell<V> {}
unsafe impl<V: Sync> Sync for BoundsCell<V> {}

impl<V> BoundsCell<V> {
    pub(crate) fn new(bounds: Bounds<V>) -> Arc<Self> {
        Arc::new(Self {
            bounds: UnsafeCell::new(bounds),
            floor: OnceLock::new(),
        })
    }

    fn get(&self) -> &Bounds<V> {
        // SAFETY: see `set_after`: no write happens while this borrow lives.
        unsafe { &*self.bounds.get() }
    }

    /// The floor of a first batch with no bound, if it has one.
    pub(crate) fn floor(&self) -> Option<&Floor> {
        self.floor.get()
    }

    /// Sets the floor of a first batch with no bound (once).
    pub(crate) fn set_floor(&self, floor: Floor) {
        let _ = self.floor.set(floor);
    }

    pub(crate) fn bounds(&self) -> &Bounds<V> {
        self.get()
    }

    /// Moves the exclusive bound.
    ///
    /// # Safety
    /// No reference returned by `get`/`bounds` may be alive, on any thread. The
    /// only holders of the cell are a [`crate::query::SeekQuery`] and the predicate
    /// inside the query it owns; it calls this from `&mut self`, which proves that no
    /// walk of its query (the only reader) is in progress.
    pub(crate) unsafe fn set_after(&self, after: Option<StoredKey<V>>) {
        unsafe { (*self.bounds.get()).after = after };
    }

    /// Sets both ends a range statement renders: `key > after` and
    /// `key <= until` (see [`crate::diff`]).
    ///
    /// # Safety
    /// As for [`set_after`](Self::set_after).
    pub(crate) unsafe fn set_range(
        &self,
        after: Option<StoredKey<V>>,
        until: Option<StoredKey<V>>,
    ) {
        let bounds = unsafe { &mut *self.bounds.get() };
        bounds.after = after;
        bounds.until = until;
    }

    /// Switches the probe rendering on or off (see [`Bounds::probe`]).
    ///
    /// # Safety
    /// As for [`set_after`](Self::set_after).
    pub(crate) unsafe fn set_probe(&self, on: bool) {
        unsafe { (*self.bounds.get()).probe = on };
    }
}

thread_local! {
    /// Where [`KeyedModel`] finds the key in the rows of the batch being loaded
    /// on this thread: set by [`with_key_columns`] around each batch.
    static KEY_COLUMNS: Cell<KeyPositions> = const { Cell::new([0; 3]) };
}

/// Runs `load` with rows' keys read from columns `at`.
pub(crate) fn with_key_columns<T>(at: KeyPositions, load: impl FnOnce() -> T) -> T {
    let outer = KEY_COLUMNS.replace(at);
    let loaded = load();
    KEY_COLUMNS.set(outer);
    loaded
}

/// Where the batch being loaded on this thread has its key's columns.
pub(crate) fn key_columns() -> KeyPositions {
    KEY_COLUMNS.get()
}

#[cfg(feature = "async")]
mod polled {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::FutureExt;

    use super::with_key_columns;
    use crate::key::KeyPositions;

    /// Sets where rows' keys are read from around each `poll` of a load: the rows
    /// are read inside `poll`, on whatever thread polls, and never across an
    /// `.await`.
    pub(crate) struct WithKeyColumns<F> {
        pub(crate) at: KeyPositions,
        pub(crate) load: F,
    }

    impl<F: Future + Unpin> Future for WithKeyColumns<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let at = self.at;
            with_key_columns(at, || self.load.poll_unpin(cx))
        }
    }
}
#[cfg(feature = "async")]
pub(crate) use polled::WithKeyColumns;
