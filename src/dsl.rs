//! The extension trait that starts a scan: [`ChunkedDsl::chunked_by`].

use diesel::query_builder::AsQuery;

use crate::builder::Chunked;
use crate::key::IntoKey;

/// Turns any Diesel query into a keyset scan.
///
/// Implemented for everything that is a query: tables, filtered queries, joins,
/// and queries boxed with `into_boxed()`.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// // SELECT posts.id, posts.id, posts.title, posts.published FROM posts
/// //   WHERE posts.published = ? AND posts.id > ? ORDER BY posts.id LIMIT ?
/// let mut ids = Vec::new();
/// for post in posts::table
///     .filter(posts::published.eq(true))
///     .chunked_by(posts::id)
///     .batch_size(2)
///     .load_iter::<Post>(conn)
/// {
///     ids.push(post?.id);
/// }
/// assert_eq!(ids, [1, 3, 5]);
/// # Ok(()) }
/// ```
pub trait ChunkedDsl: AsQuery + Sized {
    /// Scans this query in order of `key`: a `NOT NULL` column with unique values
    /// (`posts::id`), or a tuple of 2 or 3 columns that is unique together
    /// (`(posts::created_at, posts::id)`).
    ///
    /// The query must not have its own `ORDER BY`, `LIMIT` or `OFFSET`: use
    /// [`desc`](Chunked::desc), [`limit_total`](Chunked::limit_total) and
    /// [`start_after`](Chunked::start_after) instead. For a plain query that is a
    /// compile error; for a boxed one, an error from the first `next()`.
    fn chunked_by<K, Marker>(self, key: K) -> Chunked<Self::Query, K::Key>
    where
        K: IntoKey<Marker>,
    {
        Chunked::new(self.as_query(), key.into_key())
    }
}

impl<Q: AsQuery> ChunkedDsl for Q {}
