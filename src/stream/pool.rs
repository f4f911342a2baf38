//! diesel-async's pools as async connection sources (features `deadpool`,
//! `bb8`): one connection per batch, as the r2d2 source does.

use diesel::QueryResult;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, PoolError};
use diesel_async::{AsyncConnection, TransactionManager};
use futures_util::future::BoxFuture;

use super::{AsyncConnectionSource, AsyncKeyCheck};
use crate::source::{connection_lost, AttemptError};

/// Makes the pool discard the connection when it comes back: its transaction
/// manager is marked as failed, which both pools' broken-connection checks see.
fn mark_broken<C: AsyncConnection>(conn: &mut C) {
    C::TransactionManager::transaction_manager_status_mut(conn).set_in_error();
}

/// Runs one attempt on a checked-out connection; a connection the error says
/// is broken never goes back to the pool.
async fn attempt<C, T, R, F>(conn: &mut C, state: &mut T, f: F) -> Result<R, AttemptError>
where
    C: AsyncConnection,
    T: Send + ?Sized,
    F: for<'c> FnOnce(&'c mut C, &'c mut T) -> BoxFuture<'c, QueryResult<R>>,
{
    f(conn, state).await.map_err(|e| {
        if connection_lost(&e) {
            mark_broken(conn);
        }
        AttemptError::Query(e)
    })
}

/// Pings a connection a retry is given: `Err` (and marked broken) when it is
/// dead.
async fn ping<C: AsyncConnection>(conn: &mut C) -> QueryResult<()> {
    diesel_async::SimpleAsyncConnection::batch_execute(conn, "SELECT 1")
        .await
        .inspect_err(|_| mark_broken(conn))
}

fn pool_error(e: impl std::error::Error + Send + Sync + 'static) -> AttemptError {
    AttemptError::AsyncPool(Box::new(e))
}

/// One attempt on a connection `get` checks out of a pool. A retry pings the
/// connection first and replaces a dead one, up to `checks` times.
async fn run_pooled<G, P, C, T, R, F>(
    get: impl Fn() -> G,
    checks: usize,
    retry: bool,
    state: &mut T,
    f: F,
) -> Result<R, AttemptError>
where
    G: std::future::Future<Output = Result<P, AttemptError>>,
    P: std::ops::DerefMut<Target = C>,
    C: AsyncConnection,
    T: Send + ?Sized,
    F: for<'c> FnOnce(&'c mut C, &'c mut T) -> BoxFuture<'c, QueryResult<R>>,
{
    let mut checks_left = checks;
    let mut conn = InFlight::new(get().await?);
    if retry {
        while let Err(e) = ping(conn.get()).await {
            checks_left = checks_left.saturating_sub(1);
            if checks_left == 0 {
                return Err(AttemptError::Query(e));
            }
            drop(conn);
            conn = InFlight::new(get().await?);
        }
    }
    let result = attempt(conn.get(), state, f).await;
    conn.finish();
    result
}

/// A checked-out connection while a statement may be in flight on it: dropped
/// before [`finish`](Self::finish) (the stream was dropped in the middle of a
/// batch, the request cancelled), the connection may still owe the server's
/// answer, so it is marked broken and the pool discards it instead of lending
/// it out again.
struct InFlight<P: std::ops::DerefMut>
where
    P::Target: AsyncConnection,
{
    conn: P,
    done: bool,
}

impl<P: std::ops::DerefMut> InFlight<P>
where
    P::Target: AsyncConnection,
{
    fn new(conn: P) -> Self {
        Self { conn, done: false }
    }

    fn get(&mut self) -> &mut P::Target {
        &mut self.conn
    }

    fn finish(mut self) {
        self.done = true;
    }
}

impl<P: std::ops::DerefMut> Drop for InFlight<P>
where
    P::Target: AsyncConnection,
{
    fn drop(&mut self) {
        if !self.done {
            mark_broken(&mut *self.conn);
        }
    }
}

/// `AsyncConnectionSource` for `&$pool<C>`: one connection checked out per
/// attempt with `get()`, and a retry that replaces up to `$checks` dead ones.
macro_rules! pooled_source {
    ($(#[$doc:meta])* $feature:literal, $pool:ty, $manager:path, $checks:expr) => {
        $(#[$doc])*
        #[cfg(feature = $feature)]
        impl<C> AsyncConnectionSource for &$pool
        where
            C: AsyncConnection + AsyncKeyCheck + 'static,
            AsyncDieselConnectionManager<C>: $manager,
        {
            type Connection = C;
            const DEFAULT_MAX_RETRIES: u32 = 3;
            const READS_AHEAD: bool = false;

            fn run<'s, T, R, F>(
                &'s mut self,
                retry: bool,
                state: &'s mut T,
                f: F,
            ) -> BoxFuture<'s, Result<R, AttemptError>>
            where
                T: Send + ?Sized,
                R: Send + 's,
                F: for<'c> FnOnce(&'c mut C, &'c mut T) -> BoxFuture<'c, QueryResult<R>>
                    + Send
                    + 's,
            {
                let pool = *self;
                let get = move || async move { pool.get().await.map_err(pool_error) };
                let checks: fn(&$pool) -> usize = $checks;
                Box::pin(run_pooled(get, checks(pool), retry, state, f))
            }
        }
    };
}

pooled_source!(
    /// A deadpool pool lends one connection per batch: checked out when the
    /// batch starts, back in the pool before the batch is handed out. A batch
    /// that failed because its connection broke is retried on another one, and
    /// the broken one is discarded; a retry pings the connection it is given
    /// and replaces a dead one (up to the pool's `max_size` + 1 times). As with
    /// r2d2, 3 retries by default.
    "deadpool",
    diesel_async::pooled_connection::deadpool::Pool<C>,
    deadpool::managed::Manager<Type = C, Error = PoolError>,
    |pool| pool.status().max_size.saturating_add(1)
);

pooled_source!(
    /// A bb8 pool lends one connection per batch, as a deadpool pool does (see
    /// above); a retry replaces up to the pool's connections + 1 dead ones.
    "bb8",
    diesel_async::pooled_connection::bb8::Pool<C>,
    bb8::ManageConnection<Connection = C, Error = PoolError>,
    |pool| usize::try_from(pool.state().connections)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
);
