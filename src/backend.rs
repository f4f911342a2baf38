//! What a scan needs to know of each backend: how it compares composite keys,
//! how it estimates rows, and how a key value read from a row is bound back so
//! that it compares exactly as the stored value does.

use diesel::backend::Backend;
use diesel::query_builder::AstPass;
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::QueryResult;

use crate::stored::Stored;

/// Seals [`KeysetBackend`]: public so that it may be a supertrait, in a private
/// module so that no other crate can name it, hence implement it.
mod private {
    pub trait Sealed {}

    #[cfg(feature = "sqlite")]
    impl Sealed for diesel::sqlite::Sqlite {}
    #[cfg(feature = "postgres")]
    impl Sealed for diesel::pg::Pg {}
    #[cfg(feature = "mysql")]
    impl Sealed for diesel::mysql::Mysql {}
}

/// How a backend compares keys and binds key values.
///
/// Implemented for [`Sqlite`](diesel::sqlite::Sqlite),
/// [`Pg`](diesel::pg::Pg) and [`Mysql`](diesel::mysql::Mysql) (with their
/// features).
///
/// PostgreSQL and SQLite (≥ 3.15) get the row-value form `(a, b) > ($1, $2)` for
/// composite keys, which their planners turn into one index range scan.
/// MySQL/MariaDB get the expanded form `a >= ? AND (a > ? OR a = ? AND b > ?)`:
/// MariaDB does not use an index range for row-value comparisons, while the
/// leading `a >= ?` gives it (and MySQL) a range on the first index column.
/// Single-column keys are `a > ?` everywhere.
///
/// Key values are bound so that they compare as the column's own values do:
/// on PostgreSQL every key parameter is sent with an unspecified type, which the
/// server infers from the key column it is compared with (a `char(n)` key
/// compares as `bpchar`, not as `text`); on SQLite a key read from a row is bound
/// back in the storage class and text the row had (see [`StoredKey`](crate::StoredKey)).
///
/// The trait is sealed: it is implemented for these three backends only, and
/// no other crate can implement it (its supertrait `private::Sealed` cannot be
/// named outside this crate), so its constants and methods may change with
/// any release.
pub trait KeysetBackend: Backend + private::Sealed {
    /// Whether composite keys are compared as row values.
    const ROW_VALUES: bool;
    /// Whether [`estimate_total`](crate::Chunked::estimate_total) asks the
    /// planner (`EXPLAIN`) instead of counting.
    const PLANNER_ESTIMATE: bool = false;
    /// Whether [`partitions_sampled`](crate::Chunked::partitions_sampled)
    /// draws rows by their addresses (PostgreSQL's `ctid`) instead of probing
    /// the key's index.
    const TID_SAMPLING: bool = false;
    /// Whether a value read from a row may be stored in a form that binding its
    /// Rust value does not reproduce (SQLite).
    const STORED_FORMS: bool = false;
    /// Whether some string key columns order or compare inconsistently
    /// (MySQL/MariaDB: `NO PAD` collations, values longer than
    /// `max_sort_length`; SQLite, PostgreSQL: a column held unique by an index
    /// in another collation than it is compared in), so that a scan by a
    /// string key checks the schema first.
    const CHECKS_STRING_KEYS: bool = false;
    /// Whether the planner sorts every batch of a composite key whose prefix
    /// has a UNIQUE index of its own (MySQL/MariaDB: such an index is not
    /// extended with the primary key), so that a scan orders by that prefix
    /// (see [`Chunked::explain`](crate::Chunked::explain)).
    const ORDERS_BY_UNIQUE_PREFIX: bool = false;
    /// Whether an index probe of [`partitions_sampled`](crate::Chunked::partitions_sampled)
    /// asks for `MIN`/`MAX` of the key instead of its first row in key order
    /// (MySQL/MariaDB answer `MIN` from the index while optimizing the
    /// statement, about three times faster; SQLite would scan for it).
    const PROBES_BY_MIN_MAX: bool = false;
    /// The statement that makes the current transaction's `COMMIT` return
    /// before its log is flushed (see
    /// [`async_commit`](crate::Chunked::async_commit)), where the backend can
    /// do that for one transaction (PostgreSQL's `SET LOCAL
    /// synchronous_commit = off`); `None` elsewhere.
    const ASYNC_COMMIT: Option<&'static str> = None;
    /// The statement that makes the current transaction's `COMMIT` wait for
    /// its log again after [`ASYNC_COMMIT`](Self::ASYNC_COMMIT): run in the
    /// batch that ends an `async_commit` job, so that a job that reports its
    /// end has every batch on disk (PostgreSQL's `SET LOCAL
    /// synchronous_commit = on`; a flushed commit flushes the log of every
    /// commit before it). `None` elsewhere.
    const DURABLE_COMMIT: Option<&'static str> = None;
    /// The per-connection flush setting [`async_commit`](crate::Chunked::async_commit)
    /// relaxes around each batch's transaction, outside it, where the backend
    /// cannot change it inside one (SQLite: `PRAGMA synchronous = NORMAL` in
    /// WAL mode, where a commit then no longer waits for the WAL's `fsync`
    /// and a power loss can only take the last commits, whole, with their
    /// checkpoint advances); put back after the batch.
    const RELAXED_SYNC: Option<crate::commit::SyncPragma> = None;
    /// Whether a batch of the scan's regular size writes its `LIMIT` as a
    /// literal instead of a bind parameter (PostgreSQL). With a parameter, the
    /// planner cannot see the limit in a generic plan, so it plans a cached
    /// statement again for every execution (about 40 µs a batch on a small
    /// machine); with the literal it switches to one generic plan after five
    /// executions. Other limits (the shorter last batch of `limit_total`, the
    /// probe) stay parameters, so they add at most one statement per query
    /// to a connection, whatever the totals.
    const LITERAL_LIMIT: bool = false;
    /// Whether the first batch of a scan with no start key bounds its first
    /// key column by the table's minimum (`col >= (SELECT MIN(col) FROM t)`,
    /// `MAX` descending) instead of `1 = 1` (MySQL/MariaDB): with no range on
    /// the key, MariaDB reads a first batch of more than about 1% of the table
    /// through a secondary index by a full scan and a sort of every row. The
    /// minimum is read from the index's first entry. The quote character of
    /// the backend's identifiers, which the floor is parsed with.
    const FIRST_BATCH_FLOOR: Option<char> = None;
    /// The statement prefix that asks for a plan.
    const EXPLAIN: &'static str = "EXPLAIN ";
    /// Whether [`move_into`](crate::RunChunkedDsl::move_into) moves a batch
    /// in one statement, a `DELETE ... RETURNING` feeding the `INSERT` in a
    /// data-modifying `WITH` (PostgreSQL): the rows inserted are the rows
    /// deleted, whatever other writers do. Elsewhere a batch is an
    /// `INSERT ... SELECT` and a `DELETE` of the same range, whose counts must
    /// agree.
    const MOVES_IN_ONE_STATEMENT: bool = false;
    /// Whether a batch of [`move_into`](crate::RunChunkedDsl::move_into) first
    /// locks its range, `SELECT COUNT(*) ... FOR UPDATE` (MySQL/MariaDB: at
    /// `READ COMMITTED` the `INSERT ... SELECT` reads without locks, so a row
    /// updated before the `DELETE` would lose its update). SQLite needs no
    /// lock: a transaction that writes holds the database's only write lock.
    const LOCKS_BEFORE_MOVE: bool = false;
    /// The bind parameters one statement may hold: a multi-row `INSERT` of
    /// [`copy_to`](crate::TransferDsl::copy_to) takes as many rows as fit.
    /// PostgreSQL and MySQL count them in 16 bits; SQLite's bundled build
    /// allows 32,766 (`SQLITE_MAX_VARIABLE_NUMBER`).
    const MAX_BINDS: usize = 65_535;
    /// Whether a multi-row `VALUES` takes `DEFAULT`, so every row of a model
    /// renders the same columns. SQLite has none: a row whose value is
    /// `DEFAULT` leaves its column out, and goes in a statement with rows
    /// like it.
    const MULTI_ROW_DEFAULT: bool = true;
    /// Whether an async stream may start a batch's statement ahead of the
    /// rows being handed out ([`prefetch`](crate::Chunked::prefetch)): only
    /// where dropping that statement's future in flight (a stream dropped
    /// early) leaves the connection usable. diesel-async's MySQL connection
    /// does not: the next statement on it then reads no rows, so a MySQL
    /// stream reads nothing ahead.
    const ASYNC_READ_AHEAD: bool = true;
    /// The schema an unqualified table name resolves to, where it is fixed
    /// (SQLite: `main`): a destination `main.orders` is the source `orders`.
    const DEFAULT_SCHEMA: Option<&'static str> = None;
    /// What follows an `INSERT`'s rows so that a row whose key (or any
    /// other unique value) the table already holds is skipped, not an error
    /// ([`on_conflict_do_nothing`](crate::Chunked::on_conflict_do_nothing)):
    /// `ON CONFLICT DO NOTHING` (PostgreSQL, SQLite); on MySQL/MariaDB `ON
    /// DUPLICATE KEY UPDATE <column> = <column>` of the table's first column,
    /// `column` as rendered with its table (unlike `INSERT IGNORE`, which
    /// would also turn a value the column cannot hold into a warning).
    fn skip_conflicts(_column: &str) -> String {
        " ON CONFLICT DO NOTHING".to_string()
    }
    /// How a [diff](crate::Chunked::diff) hashes one row in the database,
    /// given the model's columns as rendered: the `SELECT` list of a 64-bit
    /// integer column `h` (PostgreSQL: `hash_record_extended` of the row,
    /// the column types' own hash functions; MySQL/MariaDB: the `CRC32` of
    /// the columns joined by `#` with a flag per column that tells `NULL`
    /// from any string, as pt-table-checksum does, times a 32-bit odd
    /// constant so that the `XOR` of two rows is not the hash of the `XOR`
    /// of their bytes, as `CRC32`'s alone would be). `None` where a chunk is
    /// compared row by row in Rust instead (SQLite, which has no hash
    /// function: its rows are read in-process anyway).
    fn row_hash(columns: &[&str]) -> Option<String> {
        let _ = columns;
        None
    }
    /// The checksum of a chunk over the row hashes `t.h` of
    /// [`row_hash`](Self::row_hash), written before the subquery of the
    /// chunk's rows (which is followed by `) t`): its row count and the
    /// `XOR` of the hashes, as text.
    const HASH_SUM: &'static str = "";

    /// The stored form of `value`, a value of SQL type `ST`, when binding its
    /// Rust value would not reproduce it; `text` is the text the Rust value
    /// binds as, for types bound as text in a format of Diesel's own.
    fn stored_form<ST>(
        value: Self::RawValue<'_>,
        text: impl FnOnce() -> Option<String>,
    ) -> Option<Stored>
    where
        Self: HasSqlType<ST>,
    {
        let _ = (value, text);
        None
    }

    /// Binds a stored form.
    fn bind_stored<'b>(value: &'b Stored, out: AstPass<'_, 'b, Self>) -> QueryResult<()> {
        let _ = (value, out);
        Err(diesel::result::Error::QueryBuilderError(
            "this backend has no stored key forms".into(),
        ))
    }

    /// Binds a key value of SQL type `ST`.
    fn bind_key<'b, ST, V>(value: &'b V, mut out: AstPass<'_, 'b, Self>) -> QueryResult<()>
    where
        Self: HasSqlType<ST>,
        V: ToSql<ST, Self>,
    {
        out.push_bind_param::<ST, V>(value)
    }
}

#[cfg(feature = "sqlite")]
impl KeysetBackend for diesel::sqlite::Sqlite {
    const ROW_VALUES: bool = true;
    const STORED_FORMS: bool = true;
    const CHECKS_STRING_KEYS: bool = true;
    const EXPLAIN: &'static str = "EXPLAIN QUERY PLAN ";
    const DEFAULT_SCHEMA: Option<&'static str> = Some("main");
    const MAX_BINDS: usize = 32_766;
    const MULTI_ROW_DEFAULT: bool = false;
    const RELAXED_SYNC: Option<crate::commit::SyncPragma> = Some(crate::commit::SyncPragma {
        // One row in WAL mode only: elsewhere NORMAL would not be safe.
        read: "SELECT CAST(s.synchronous AS TEXT) AS value FROM pragma_synchronous AS s, \
               pragma_journal_mode AS j WHERE j.journal_mode = 'wal'",
        set: "PRAGMA synchronous = ",
        relaxed: "1",
    });

    fn stored_form<ST>(
        mut value: Self::RawValue<'_>,
        text: impl FnOnce() -> Option<String>,
    ) -> Option<Stored>
    where
        Self: HasSqlType<ST>,
    {
        use diesel::sqlite::SqliteType as T;
        let class = value.value_type()?;
        let expected = <Self as HasSqlType<ST>>::metadata(&mut ());
        let same_class = matches!(
            (class, expected),
            (T::Long, T::SmallInt | T::Integer | T::Long)
                | (T::Double, T::Float | T::Double)
                | (T::Text, T::Text)
                | (T::Binary, T::Binary)
        );
        if same_class {
            if !matches!(class, T::Text) {
                return None;
            }
            let ours = text()?;
            if value.read_text() == ours {
                return None;
            }
        }
        Some(match class {
            T::Long | T::Integer | T::SmallInt => Stored::Integer(value.read_long()),
            T::Double | T::Float => Stored::Real(value.read_double()),
            T::Text => Stored::Text(value.read_text().to_owned()),
            T::Binary => Stored::Blob(value.read_blob().to_vec()),
        })
    }

    fn bind_stored<'b>(value: &'b Stored, mut out: AstPass<'_, 'b, Self>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Binary, Double, Text};
        match value {
            Stored::Integer(v) => out.push_bind_param::<BigInt, i64>(v),
            Stored::Real(v) => out.push_bind_param::<Double, f64>(v),
            Stored::Text(v) => out.push_bind_param::<Text, String>(v),
            Stored::Blob(v) => out.push_bind_param::<Binary, Vec<u8>>(v),
        }
    }
}

#[cfg(feature = "postgres")]
mod pg {
    use std::marker::PhantomData;

    use diesel::pg::{Pg, PgTypeMetadata};
    use diesel::query_builder::AstPass;
    use diesel::serialize::{self, Output, ToSql};
    use diesel::sql_types::HasSqlType;
    use diesel::QueryResult;

    use super::KeysetBackend;

    /// A parameter of SQL type `ST` sent with an unspecified type (OID 0): the
    /// server takes the type of the key column it is compared with.
    #[derive(Debug)]
    pub struct Inferred<ST>(PhantomData<ST>);

    impl<ST> HasSqlType<Inferred<ST>> for Pg {
        fn metadata(_: &mut Self::MetadataLookup) -> PgTypeMetadata {
            PgTypeMetadata::new(0, 0)
        }
    }

    /// A value bound as [`Inferred`]: the bytes of its own `ToSql<ST, Pg>`.
    #[repr(transparent)]
    pub struct InferredValue<V>(V);

    impl<V: std::fmt::Debug> std::fmt::Debug for InferredValue<V> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl<ST, V: ToSql<ST, Pg>> ToSql<Inferred<ST>, Pg> for InferredValue<V> {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
            <V as ToSql<ST, Pg>>::to_sql(&self.0, out)
        }
    }

    impl<V> InferredValue<V> {
        fn wrap(value: &V) -> &Self {
            // SAFETY: `InferredValue<V>` is `repr(transparent)` over `V`.
            unsafe { &*(value as *const V as *const Self) }
        }
    }

    impl KeysetBackend for Pg {
        const ROW_VALUES: bool = true;
        const PLANNER_ESTIMATE: bool = true;
        const TID_SAMPLING: bool = true;
        const CHECKS_STRING_KEYS: bool = true;
        const LITERAL_LIMIT: bool = true;
        const ASYNC_COMMIT: Option<&'static str> = Some("SET LOCAL synchronous_commit = off");
        const DURABLE_COMMIT: Option<&'static str> = Some("SET LOCAL synchronous_commit = on");
        const MOVES_IN_ONE_STATEMENT: bool = true;
        const HASH_SUM: &'static str = "SELECT COUNT(*), COALESCE(bit_xor(t.h), 0)::text FROM (";

        fn row_hash(columns: &[&str]) -> Option<String> {
            Some(format!(
                "hash_record_extended(ROW({}), 0) AS h",
                columns.join(", ")
            ))
        }

        fn bind_key<'b, ST, V>(value: &'b V, mut out: AstPass<'_, 'b, Self>) -> QueryResult<()>
        where
            Self: HasSqlType<ST>,
            V: ToSql<ST, Self>,
        {
            out.push_bind_param::<Inferred<ST>, InferredValue<V>>(InferredValue::wrap(value))
        }
    }
}

#[cfg(feature = "mysql")]
impl KeysetBackend for diesel::mysql::Mysql {
    const ROW_VALUES: bool = false;
    const ASYNC_READ_AHEAD: bool = false;
    const CHECKS_STRING_KEYS: bool = true;
    const ORDERS_BY_UNIQUE_PREFIX: bool = true;
    const PROBES_BY_MIN_MAX: bool = true;
    const FIRST_BATCH_FLOOR: Option<char> = Some('`');
    const EXPLAIN: &'static str = "EXPLAIN FORMAT=JSON ";
    const LOCKS_BEFORE_MOVE: bool = true;
    const HASH_SUM: &'static str =
        "SELECT COUNT(*), CAST(COALESCE(BIT_XOR(t.h), 0) AS CHAR) FROM (";

    fn skip_conflicts(column: &str) -> String {
        format!(" ON DUPLICATE KEY UPDATE {column} = {column}")
    }

    fn row_hash(columns: &[&str]) -> Option<String> {
        let nulls: Vec<String> = columns.iter().map(|c| format!("ISNULL({c})")).collect();
        Some(format!(
            "CRC32(CONCAT_WS('#', {}, CONCAT({}))) * 2654435761 AS h",
            columns.join(", "),
            nulls.join(", ")
        ))
    }
}
