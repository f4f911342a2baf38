//! The async methods of the scan benchmark (with `--features async`):
//! `chunked_stream`, the crate's `load_stream` on a diesel-async connection,
//! and `diesel_async_load_stream`, diesel-async's own `load_stream` of the
//! whole table in key order (one statement, rows streamed as they arrive).

#[cfg(feature = "async")]
use std::time::Instant;

use crate::common::{Backend, Res};
use crate::methods::Scan;
#[cfg(feature = "async")]
use crate::{posts, Post};

/// The async methods, run when the features are on.
pub const ASYNC_METHODS: [&str; 2] = ["chunked_stream", "diesel_async_load_stream"];

/// Whether `method` is one of [`ASYNC_METHODS`].
pub fn is_async(method: &str) -> bool {
    ASYNC_METHODS.contains(&method)
}

#[cfg(feature = "async")]
macro_rules! stream_scan {
    ($conn_ty:ty, $url:expr, $method:expr, $batch:expr) => {{
        use diesel::prelude::*;
        use diesel_async::AsyncConnection;
        use diesel_chunked_iterator::prelude::*;
        use futures_util::TryStreamExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut conn = <$conn_ty>::establish($url).await?;
            let mut s = Scan::default();
            let t0 = Instant::now();
            if $method == "chunked_stream" {
                let mut rows = posts::table
                    .chunked_by(posts::id)
                    .batch_size($batch)
                    .load_stream::<Post>(&mut conn);
                while let Some(p) = rows.try_next().await? {
                    s.see(t0, &p);
                }
                s.queries = rows.progress().queries as u64;
            } else {
                let mut rows = diesel_async::RunQueryDsl::load_stream::<Post>(
                    posts::table.order(posts::id).select(Post::as_select()),
                    &mut conn,
                )
                .await?;
                while let Some(p) = rows.try_next().await? {
                    s.see(t0, &p);
                }
                s.queries = 1;
            }
            s.total = t0.elapsed();
            Res::Ok(s)
        })
    }};
}

/// One full scan with an async method.
#[cfg(feature = "async")]
pub fn stream_scan(backend: Backend, url: &str, method: &str, batch: u64) -> Res<Scan> {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => stream_scan!(
            diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
            url,
            method,
            batch
        ),
        #[cfg(feature = "postgres")]
        Backend::Pg => stream_scan!(diesel_async::AsyncPgConnection, url, method, batch),
        #[cfg(feature = "mysql")]
        Backend::Mysql => stream_scan!(diesel_async::AsyncMysqlConnection, url, method, batch),
    }
}

#[cfg(not(feature = "async"))]
pub fn stream_scan(_: Backend, _: &str, method: &str, _: u64) -> Res<Scan> {
    Err(format!("{method} needs --features async").into())
}
