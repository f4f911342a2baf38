//! Integration tests of the keyset scan: query counts, order, filters, joins, boxed
//! and custom-select queries, bounds, `limit_total`, errors, concurrent changes,
//! resuming and progress.
//!
//! Every test runs on SQLite, PostgreSQL and MariaDB/MySQL (`backend_tests!`), on a
//! database of its own, and checks exact rows in exact order, the exact number of
//! queries (from a [`QueryLog`](common::QueryLog)) and the shape of the logged SQL.
//! The tests themselves live in `tests/it/core/`.


#[path = "core/support.rs"]
mod support;

#[path = "core/counts.rs"]
mod counts;
#[path = "core/errors.rs"]
mod errors;
#[path = "core/limits.rs"]
mod limits;
#[path = "core/order.rs"]
mod order;
#[path = "core/queries.rs"]
mod queries;
#[path = "core/resume.rs"]
mod resume;
#[cfg(feature = "chrono")]
#[path = "core/timestamps.rs"]
mod timestamps;
