//! Keys: which columns can order a scan, what their values are in Rust, and the
//! SQL that compares a row's key with a bound.
//!
//! A key is one column ([`chunked_by(posts::id)`](crate::ChunkedDsl::chunked_by)),
//! or a tuple of two or three columns (`chunked_by((posts::created_at, posts::id))`)
//! compared lexicographically. Every column must be `NOT NULL`: a nullable column is a
//! compile error, since `NULL` neither sorts nor compares the same way on every
//! backend and a keyset scan over it silently drops or repeats rows.
//!
//! The Rust type of a key value is found from the column's SQL type through
//! [`KeySqlType`]: you never name it. For an SQL type this crate does not map,
//! wrap the column in [`typed`] and name the Rust type once.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use diesel::deserialize::{self, FromSql};
use diesel::expression::Expression;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::row::{Field, Row};
use diesel::serialize::ToSql;
use diesel::sql_types::{self, is_nullable, HasSqlType, SingleValue, SqlType};
use diesel::{Column, QueryResult};

use crate::backend::KeysetBackend;
use crate::stored::{Stored, StoredBuilder, StoredKey};

/// What a key value must be: cloneable, printable (for errors), comparable for
/// equality (to detect duplicate keys) and shareable across threads.
///
/// Implemented for every type that has those traits.
///
/// ```
/// fn takes_key_value<V: diesel_chunked_iterator::key::KeyValue>(_: V) {}
/// takes_key_value(42_i64);
/// takes_key_value((String::from("a"), 1_i32));
/// ```
pub trait KeyValue: Clone + fmt::Debug + PartialEq + Send + Sync + 'static {}
impl<T: Clone + fmt::Debug + PartialEq + Send + Sync + 'static> KeyValue for T {}

/// SQL types a key column may have, each with the Rust type its values load into.
///
/// | SQL type | Rust type | feature |
/// | --- | --- | --- |
/// | `SmallInt` / `Integer` / `BigInt` | `i16` / `i32` / `i64` | |
/// | `Text` (and `Varchar`) | `String` | |
/// | `Unsigned<Integer>` / `Unsigned<BigInt>` (MySQL) | `u32` / `u64` | `mysql` |
/// | `Timestamp`, `Date` | `chrono::NaiveDateTime`, `chrono::NaiveDate` | `chrono` |
/// | `Timestamptz` (PostgreSQL) | `chrono::DateTime<Utc>` | `chrono` + `postgres` |
/// | `Datetime` (MySQL) | `chrono::NaiveDateTime` | `chrono` + `mysql` |
/// | `Timestamp`, `Date` | `time::PrimitiveDateTime`, `time::Date` | `time` without `chrono` |
/// | `Timestamptz` (PostgreSQL) | `time::OffsetDateTime` | `time` without `chrono` + `postgres` |
/// | `Uuid` (PostgreSQL) | `uuid::Uuid` | `uuid` + `postgres` |
///
/// When both `chrono` and `time` are enabled, date and time columns map to
/// `chrono`; use [`typed`] to scan one with `time` types.
///
/// `Nullable<_>` has no implementation on purpose: a nullable key column does not
/// compile.
///
/// ```
/// use diesel::sql_types::{BigInt, Text};
/// use diesel_chunked_iterator::key::KeySqlType;
///
/// fn rust_type_of<ST: KeySqlType>() -> &'static str {
///     std::any::type_name::<ST::Value>()
/// }
/// assert_eq!(rust_type_of::<BigInt>(), "i64");
/// assert_eq!(rust_type_of::<Text>(), "alloc::string::String");
/// ```
#[diagnostic::on_unimplemented(
    message = "a column of SQL type `{Self}` cannot be a chunking key",
    label = "not a key type",
    note = "key columns must be NOT NULL and of type SmallInt, Integer, BigInt, Text, \
            or (with the matching features) a date, timestamp or uuid type",
    note = "a nullable column cannot be a key: NULLs do not compare, so rows would be \
            skipped or repeated; scan by a NOT NULL column (add a NOT NULL constraint, \
            or use a tiebreaker such as the primary key)",
    note = "for another NOT NULL type, name its Rust type: `chunked_by(typed::<MyType, _>(column))`"
)]
pub trait KeySqlType: SqlType<IsNull = is_nullable::NotNull> + SingleValue {
    /// The Rust type values of this SQL type load into.
    type Value: KeyValue;

    /// How two values compare in the database, where Rust can tell for certain.
    ///
    /// Numbers, dates, timestamps and UUIDs order the same in Rust and in SQL.
    /// Text does not (collations), so only equality is known.
    fn compare(a: &Self::Value, b: &Self::Value) -> Option<Ordering> {
        (a == b).then_some(Ordering::Equal)
    }

    /// The text Diesel binds a value as on SQLite, for types that SQLite stores
    /// as text in a format of Diesel's choosing (dates and timestamps); `None`
    /// for types whose stored text is the value itself or that are not text.
    #[doc(hidden)]
    fn sqlite_text(value: &Self::Value) -> Option<String> {
        let _ = value;
        None
    }

    /// Whether [`sqlite_text`](Self::sqlite_text) is implemented: values SQLite
    /// may hold in other formats than Diesel writes.
    #[doc(hidden)]
    const TEXT_FORMAT: bool = false;

    /// Whether this is a string type, whose order depends on a collation.
    #[doc(hidden)]
    const IS_TEXT: bool = false;
}

macro_rules! key_sql_types {
    ($($(#[$m:meta])* $st:ty => $v:ty $(, $flag:ident)*;)*) => {$(
        $(#[$m])*
        impl KeySqlType for $st {
            type Value = $v;
            $(key_sql_types!(@$flag);)*
        }
    )*};
    (@ordered) => {
        fn compare(a: &Self::Value, b: &Self::Value) -> Option<Ordering> {
            Some(a.cmp(b))
        }
    };
    (@text_key) => {
        const IS_TEXT: bool = true;
    };
    (@text) => {
        const TEXT_FORMAT: bool = true;
        fn sqlite_text(value: &Self::Value) -> Option<String> {
            Some(crate::stored::SqliteText::sqlite_text(value))
        }
    };
}

key_sql_types! {
    sql_types::SmallInt => i16, ordered;
    sql_types::Integer => i32, ordered;
    sql_types::BigInt => i64, ordered;
    sql_types::Text => String, text_key;
    #[cfg(feature = "mysql")]
    sql_types::Unsigned<sql_types::Integer> => u32, ordered;
    #[cfg(feature = "mysql")]
    sql_types::Unsigned<sql_types::BigInt> => u64, ordered;
    #[cfg(feature = "chrono")]
    sql_types::Timestamp => chrono::NaiveDateTime, ordered, text;
    #[cfg(feature = "chrono")]
    sql_types::Date => chrono::NaiveDate, ordered, text;
    #[cfg(all(feature = "chrono", feature = "postgres"))]
    sql_types::Timestamptz => chrono::DateTime<chrono::Utc>, ordered;
    #[cfg(all(feature = "chrono", feature = "mysql"))]
    sql_types::Datetime => chrono::NaiveDateTime, ordered;
    #[cfg(all(feature = "time", not(feature = "chrono")))]
    sql_types::Timestamp => time::PrimitiveDateTime, ordered, text;
    #[cfg(all(feature = "time", not(feature = "chrono")))]
    sql_types::Date => time::Date, ordered, text;
    #[cfg(all(feature = "time", not(feature = "chrono"), feature = "postgres"))]
    sql_types::Timestamptz => time::OffsetDateTime, ordered;
    #[cfg(all(feature = "time", not(feature = "chrono"), feature = "mysql"))]
    sql_types::Datetime => time::PrimitiveDateTime, ordered;
    #[cfg(all(feature = "uuid", feature = "postgres"))]
    sql_types::Uuid => uuid::Uuid, ordered;
}

/// One column of a key: a table column whose SQL type is a [`KeySqlType`], or a
/// column wrapped in [`typed`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be (part of) a chunking key",
    label = "not a NOT NULL column of a key type",
    note = "a key is a NOT NULL column (`posts::id`), a tuple of 2 or 3 of them \
            (`(posts::created_at, posts::id)`), or `typed::<V, _>(column)` for other types"
)]
pub trait KeyPart: Copy + Send + Sync + 'static {
    /// The table column.
    type Column: Column + Copy + Send + Sync + 'static;
    /// The Rust type of the column's values.
    type Value: KeyValue;
    /// The column.
    fn column(&self) -> &Self::Column;

    /// How two values compare in the database, where Rust can tell for certain
    /// (see [`KeySqlType::compare`]).
    fn compare(a: &Self::Value, b: &Self::Value) -> Option<Ordering> {
        (a == b).then_some(Ordering::Equal)
    }

    /// See [`KeySqlType::sqlite_text`].
    #[doc(hidden)]
    fn sqlite_text(value: &Self::Value) -> Option<String> {
        let _ = value;
        None
    }

    /// Whether SQLite may store this column's values in a form that binding
    /// the Rust value does not reproduce (dates, timestamps, `typed` columns).
    #[doc(hidden)]
    const STORED_FORMS: bool = true;

    /// Whether the column may be a string, ordered by a collation (unknown
    /// for `typed` columns, so assumed).
    #[doc(hidden)]
    const IS_TEXT: bool = true;
}

impl<C> KeyPart for C
where
    C: Column + Copy + Send + Sync + 'static,
    C::SqlType: KeySqlType,
{
    type Column = C;
    type Value = <C::SqlType as KeySqlType>::Value;

    fn column(&self) -> &C {
        self
    }

    fn compare(a: &Self::Value, b: &Self::Value) -> Option<Ordering> {
        <C::SqlType as KeySqlType>::compare(a, b)
    }

    fn sqlite_text(value: &Self::Value) -> Option<String> {
        <C::SqlType as KeySqlType>::sqlite_text(value)
    }

    const STORED_FORMS: bool = <C::SqlType as KeySqlType>::TEXT_FORMAT;
    const IS_TEXT: bool = <C::SqlType as KeySqlType>::IS_TEXT;
}

/// A key column whose Rust value type is named explicitly: the escape hatch for
/// SQL types [`KeySqlType`] does not map (numerics, custom types, or `time` types
/// while `chrono` is enabled). Made by [`typed`].
pub struct Typed<V, C> {
    column: C,
    _value: PhantomData<fn() -> V>,
}

impl<V, C: Copy> Clone for Typed<V, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V, C: Copy> Copy for Typed<V, C> {}
impl<V, C: fmt::Debug> fmt::Debug for Typed<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "typed::<{}>({:?})",
            std::any::type_name::<V>(),
            self.column
        )
    }
}

/// Uses `column` as a key whose values load into `V`.
///
/// The column must still be `NOT NULL`, and `V` must load from and bind to the
/// column's SQL type on the backend you scan (Diesel checks that where the scan runs).
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// use diesel_chunked_iterator::key::typed;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// // `i64` for an `Integer` column would not bind; any type that does works:
/// let ids: Vec<i32> = posts::table
///     .chunked_by(typed::<i32, _>(posts::id))
///     .batch_size(2)
///     .load_iter::<Post>(conn)
///     .map(|p| p.map(|p| p.id))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(ids, [1, 2, 3, 4, 5]);
/// # Ok(()) }
/// ```
pub fn typed<V, C>(column: C) -> Typed<V, C>
where
    V: KeyValue,
    C: Column + Copy + Send + Sync + 'static,
    C::SqlType: SqlType<IsNull = is_nullable::NotNull> + SingleValue,
{
    Typed {
        column,
        _value: PhantomData,
    }
}

impl<V, C> KeyPart for Typed<V, C>
where
    V: KeyValue,
    C: Column + Copy + Send + Sync + 'static,
    C::SqlType: SqlType<IsNull = is_nullable::NotNull> + SingleValue,
{
    type Column = C;
    type Value = V;

    fn column(&self) -> &C {
        &self.column
    }
}

/// A complete key: one column ([`Single`]) or a tuple of 2 or 3 [`KeyPart`]s.
///
/// You do not implement this; [`IntoKey`] turns what you pass to `chunked_by`
/// into one.
pub trait Key: Copy + Send + Sync + 'static {
    /// The value of the key for one row: the column's value, or a tuple of them.
    type Value: KeyValue;
    /// What is selected to read the key back: the column, or a tuple of columns.
    type Selection: Expression + Copy + Send + Sync + 'static;
    /// How many columns the key has.
    const ARITY: usize;
    /// Whether a part may be stored in a form of its own (see
    /// [`KeyPart::STORED_FORMS`]).
    #[doc(hidden)]
    const STORED_FORMS: bool;
    /// Whether a part may be a string (see [`KeyPart::IS_TEXT`]).
    #[doc(hidden)]
    const IS_TEXT: bool;
    /// The expression to select.
    fn selection(&self) -> Self::Selection;
    /// `(table, column)` names of the key's columns, in order.
    fn names(&self) -> Vec<(&'static str, &'static str)>;

    /// How two key values compare in the database (lexicographically for
    /// composite keys), where Rust can tell for certain.
    fn compare(a: &Self::Value, b: &Self::Value) -> Option<Ordering>;

    /// The key's columns, as `posts.id` or `(posts.created_at, posts.id)`.
    fn describe(&self) -> String {
        let names: Vec<String> = self
            .names()
            .iter()
            .map(|(t, c)| format!("{t}.{c}"))
            .collect();
        if names.len() == 1 {
            names.into_iter().next().unwrap_or_default()
        } else {
            format!("({})", names.join(", "))
        }
    }
}

/// Renders a key's columns and binds a key value's parts on backend `DB`.
///
/// Implemented for every [`Key`] whose columns render on `DB` and whose values
/// bind as the columns' SQL types there.
pub trait KeySql<DB: KeysetBackend>: Key {
    /// Writes column `i` of the key.
    fn walk_column<'b>(&'b self, i: usize, out: AstPass<'_, 'b, DB>) -> QueryResult<()>;
    /// Binds part `i` of `value`: its stored form if it has one, otherwise the
    /// Rust value as the column's SQL type.
    fn walk_value<'b>(
        value: &'b StoredKey<Self::Value>,
        i: usize,
        out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()>;
}

/// Reads a key's value from a result row on backend `DB`, part by part, from the
/// columns at the given positions.
///
/// This is how `load_iter::<M>` reads keys: from the model's own columns when the
/// key is among them (nothing is selected twice), from columns appended after the
/// model's otherwise. Implemented for every [`Key`] whose values load from the
/// columns' SQL types on `DB`.
pub trait KeyFromRow<DB: KeysetBackend>: Key {
    /// Reads part `i` of the key from column `at[i]` of `row`, with its stored
    /// form where binding the Rust value would not reproduce it.
    fn from_row<'a>(
        row: &impl Row<'a, DB>,
        at: &KeyPositions,
    ) -> deserialize::Result<StoredKey<Self::Value>>;
}

/// Reads part `i` (SQL type `ST`) at column `at` of `row`, and its stored form.
fn read_part<'a, DB, P, R>(row: &R, at: usize) -> deserialize::Result<(P::Value, Option<Stored>)>
where
    DB: KeysetBackend + HasSqlType<SqlTypeOf<P>>,
    P: KeyPart,
    P::Value: FromSql<SqlTypeOf<P>, DB>,
    R: Row<'a, DB>,
{
    let value = row.get_value::<SqlTypeOf<P>, P::Value, usize>(at)?;
    let mut stored = None;
    if DB::STORED_FORMS {
        if let Some(field) = row.get(at) {
            if let Some(raw) = field.value() {
                stored = DB::stored_form::<SqlTypeOf<P>>(raw, || P::sqlite_text(&value));
            }
        }
    }
    Ok((value, stored))
}

/// Binds part value `value` of key part `P`, or its stored form.
fn bind_part<'b, DB, P>(
    value: &'b P::Value,
    stored: Option<&'b Stored>,
    out: AstPass<'_, 'b, DB>,
) -> QueryResult<()>
where
    DB: KeysetBackend + HasSqlType<SqlTypeOf<P>>,
    P: KeyPart,
    P::Value: ToSql<SqlTypeOf<P>, DB>,
{
    match stored {
        Some(s) => DB::bind_stored(s, out),
        None => DB::bind_key::<SqlTypeOf<P>, P::Value>(value, out),
    }
}

/// The positions, in a result row, of a key's columns (at most three).
pub type KeyPositions = [usize; 3];

/// A key of one column. Made by `chunked_by(column)`.
#[derive(Debug, Clone, Copy)]
pub struct Single<P>(pub(crate) P);

fn names_of<C: Column>() -> (&'static str, &'static str) {
    (table_name::<C::Table>(), C::NAME)
}

/// The name `table!` gave a table type: `posts` for `schema::posts::table`.
pub(crate) fn table_name<T>() -> &'static str {
    let path = std::any::type_name::<T>();
    let path = path.strip_suffix("::table").unwrap_or(path);
    path.rsplit("::").next().unwrap_or(path)
}

impl<P: KeyPart> Key for Single<P> {
    type Value = P::Value;
    type Selection = P::Column;
    const ARITY: usize = 1;
    const STORED_FORMS: bool = P::STORED_FORMS;
    const IS_TEXT: bool = P::IS_TEXT;

    fn selection(&self) -> P::Column {
        *self.0.column()
    }
    fn names(&self) -> Vec<(&'static str, &'static str)> {
        vec![names_of::<P::Column>()]
    }
    fn compare(a: &Self::Value, b: &Self::Value) -> Option<Ordering> {
        P::compare(a, b)
    }
}

type SqlTypeOf<P> = <<P as KeyPart>::Column as Expression>::SqlType;

impl<P, DB> KeySql<DB> for Single<P>
where
    DB: KeysetBackend + HasSqlType<SqlTypeOf<P>>,
    P: KeyPart,
    P::Column: QueryFragment<DB>,
    P::Value: ToSql<SqlTypeOf<P>, DB>,
{
    fn walk_column<'b>(&'b self, _i: usize, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.column().walk_ast(out)
    }
    fn walk_value<'b>(
        value: &'b StoredKey<P::Value>,
        _i: usize,
        out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        bind_part::<DB, P>(&value.value, value.part(0), out)
    }
}

impl<P, DB> KeyFromRow<DB> for Single<P>
where
    DB: KeysetBackend + HasSqlType<SqlTypeOf<P>>,
    P: KeyPart,
    P::Value: FromSql<SqlTypeOf<P>, DB>,
{
    fn from_row<'a>(
        row: &impl Row<'a, DB>,
        at: &KeyPositions,
    ) -> deserialize::Result<StoredKey<P::Value>> {
        let (value, stored) = read_part::<DB, P, _>(row, at[0])?;
        let mut b = StoredBuilder::default();
        b.set(0, stored);
        Ok(b.finish(value))
    }
}

macro_rules! tuple_key {
    ($arity:expr; $($p:ident $i:tt),+) => {
        impl<$($p: KeyPart),+> Key for ($($p,)+) {
            type Value = ($($p::Value,)+);
            type Selection = ($($p::Column,)+);
            const ARITY: usize = $arity;
            const STORED_FORMS: bool = false $(|| $p::STORED_FORMS)+;
            const IS_TEXT: bool = false $(|| $p::IS_TEXT)+;

            fn selection(&self) -> Self::Selection {
                ($(*self.$i.column(),)+)
            }
            fn names(&self) -> Vec<(&'static str, &'static str)> {
                vec![$(names_of::<$p::Column>()),+]
            }
            fn compare(a: &Self::Value, b: &Self::Value) -> Option<Ordering> {
                $(
                    match $p::compare(&a.$i, &b.$i)? {
                        Ordering::Equal => {}
                        unequal => return Some(unequal),
                    }
                )+
                Some(Ordering::Equal)
            }
        }

        impl<DB, $($p),+> KeySql<DB> for ($($p,)+)
        where
            DB: KeysetBackend $(+ HasSqlType<SqlTypeOf<$p>>)+,
            $($p: KeyPart, $p::Column: QueryFragment<DB>, $p::Value: ToSql<SqlTypeOf<$p>, DB>,)+
        {
            fn walk_column<'b>(&'b self, i: usize, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
                $(if i == $i { return self.$i.column().walk_ast(out); })+
                Err(out_of_range(i))
            }
            fn walk_value<'b>(value: &'b StoredKey<Self::Value>, i: usize, out: AstPass<'_, 'b, DB>)
                -> QueryResult<()> {
                $(if i == $i { return bind_part::<DB, $p>(&value.value.$i, value.part($i), out); })+
                Err(out_of_range(i))
            }
        }

        impl<DB, $($p),+> KeyFromRow<DB> for ($($p,)+)
        where
            DB: KeysetBackend $(+ HasSqlType<SqlTypeOf<$p>>)+,
            $($p: KeyPart, $p::Value: FromSql<SqlTypeOf<$p>, DB>,)+
        {
            fn from_row<'a>(row: &impl Row<'a, DB>, at: &KeyPositions)
                -> deserialize::Result<StoredKey<Self::Value>> {
                let mut b = StoredBuilder::default();
                let value = ($(
                    {
                        let (v, s) = read_part::<DB, $p, _>(row, at[$i])?;
                        b.set($i, s);
                        v
                    },
                )+);
                Ok(b.finish(value))
            }
        }
    };
}

fn out_of_range(i: usize) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(format!("key has no column {i}").into())
}

tuple_key!(2; A 0, B 1);
tuple_key!(3; A 0, B 1, C 2);

/// Turns what is passed to `chunked_by` into a [`Key`]: a column, a [`typed`]
/// column, or a tuple of 2 or 3 of them.
///
/// `Marker` only lets single columns and tuples have separate implementations;
/// the compiler infers it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a chunking key",
    label = "not a key",
    note = "a key is a NOT NULL column (`posts::id`), a tuple of 2 or 3 of them \
            (`(posts::created_at, posts::id)`), or `typed::<V, _>(column)`; \
            nullable columns cannot be keys"
)]
pub trait IntoKey<Marker> {
    /// The key.
    type Key: Key;
    /// Converts.
    fn into_key(self) -> Self::Key;
}

/// [`IntoKey`] marker for one column.
#[derive(Debug)]
pub enum OneColumn {}
/// [`IntoKey`] marker for a tuple of columns.
#[derive(Debug)]
pub enum Columns {}

impl<P: KeyPart> IntoKey<OneColumn> for P {
    type Key = Single<P>;
    fn into_key(self) -> Single<P> {
        Single(self)
    }
}
impl<A: KeyPart, B: KeyPart> IntoKey<Columns> for (A, B) {
    type Key = (A, B);
    fn into_key(self) -> Self {
        self
    }
}
impl<A: KeyPart, B: KeyPart, C: KeyPart> IntoKey<Columns> for (A, B, C) {
    type Key = (A, B, C);
    fn into_key(self) -> Self {
        self
    }
}
