//! Key values as the database stored them.
//!
//! A scan continues after the last row of each batch by binding that row's key
//! back into `key > $last`. Binding the *Rust* value re-encodes it, and on
//! SQLite, which has no date or time types, the re-encoded text need not be the
//! text the column holds: Diesel reads a `Timestamp` from many text formats and
//! from julian-day numbers, but binds one format of its own. Compared as text,
//! `'2026-01-01 12:00:07'` is not `'2026-01-01 12:00:07.000000'`, and rows are
//! skipped or repeated.
//!
//! So a key read from a row keeps, next to its Rust value, the value exactly as
//! the database returned it whenever that differs from what binding the Rust
//! value would send ([`StoredKey`]), and the scan binds that. On PostgreSQL and
//! MySQL the Rust value round-trips exactly and nothing extra is kept.

use std::fmt;

/// One key column's value in the storage class SQLite returned it in.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Stored {
    /// `INTEGER`
    Integer(i64),
    /// `REAL`
    Real(f64),
    /// `TEXT`
    Text(String),
    /// `BLOB`
    Blob(Vec<u8>),
}

impl fmt::Display for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stored::Integer(v) => write!(f, "{v} (INTEGER)"),
            Stored::Real(v) => write!(f, "{v} (REAL)"),
            Stored::Text(v) => write!(f, "{v:?} (TEXT)"),
            Stored::Blob(v) => write!(f, "{} bytes (BLOB)", v.len()),
        }
    }
}

/// The stored forms of a key's parts (at most three), where they differ from
/// what the Rust values bind as.
pub(crate) type StoredParts = [Option<Stored>; 3];

/// A key value, and the form the database stored it in where binding the Rust
/// value would not reproduce that form.
///
/// This is what [`start_after`](crate::Chunked::start_after) and
/// [`end_at`](crate::Chunked::end_at) take: any key value converts into one
/// (`start_after(42)`), and [`LoadIter::last_stored_key`](crate::LoadIter::last_stored_key)
/// returns the exact position of a scan. The two differ only on SQLite, for
/// columns whose text is not in the format Diesel writes (a timestamp written by
/// another program as `2026-01-01T12:00:07.250Z`, or as a julian-day `REAL`):
/// there, resume from `last_stored_key()`, which compares exactly as the column
/// does. It serializes (serde), stored form included.
///
/// ```
/// use diesel_chunked_iterator::StoredKey;
///
/// let k: StoredKey<i32> = 42.into();
/// assert_eq!(k.value, 42);
/// assert!(!k.has_stored_form() && !k.is_exact());
/// ```
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredKey<V> {
    /// The key's value in Rust.
    pub value: V,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored: Option<Box<StoredParts>>,
    /// Read from a row: binding it compares exactly as the row's key does.
    #[serde(default)]
    exact: bool,
}

/// Two keys are equal when their values and stored forms are.
impl<V: PartialEq> PartialEq for StoredKey<V> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value && self.stored == other.stored
    }
}

impl<V> StoredKey<V> {
    /// A key read from a row, with the stored forms of its parts.
    pub(crate) fn new(value: V, stored: Option<Box<StoredParts>>) -> Self {
        Self {
            value,
            stored,
            exact: true,
        }
    }

    /// Whether this key was read from a row (or from a checkpoint of one), so
    /// that it compares exactly as that row's key; `false` for a Rust value.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Whether the database stores this key in a form of its own, which the scan
    /// binds instead of the Rust value (SQLite only).
    pub fn has_stored_form(&self) -> bool {
        self.stored.is_some()
    }

    /// The stored form of part `i`, if it has one.
    pub(crate) fn part(&self, i: usize) -> Option<&Stored> {
        self.stored.as_ref().and_then(|s| s.get(i)?.as_ref())
    }
}

impl<V> From<V> for StoredKey<V> {
    fn from(value: V) -> Self {
        Self {
            value,
            stored: None,
            exact: false,
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for StoredKey<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)?;
        if let Some(parts) = &self.stored {
            let forms: Vec<String> = parts.iter().flatten().map(|s| s.to_string()).collect();
            write!(f, " stored as {}", forms.join(", "))?;
        }
        Ok(())
    }
}

/// Collects the stored forms of a key's parts; `None` when no part has one.
#[derive(Default)]
pub(crate) struct StoredBuilder(Option<Box<StoredParts>>);

impl StoredBuilder {
    pub(crate) fn set(&mut self, i: usize, s: Option<Stored>) {
        if let Some(s) = s {
            self.0.get_or_insert_with(Default::default)[i] = Some(s);
        }
    }
    pub(crate) fn finish<V>(self, value: V) -> StoredKey<V> {
        StoredKey::new(value, self.0)
    }
}

/// The text Diesel binds for a date or time value on SQLite, for the types whose
/// stored text may be in another format.
#[cfg(any(feature = "chrono", feature = "time"))]
pub trait SqliteText {
    /// What Diesel's `ToSql` for SQLite writes for this value.
    fn sqlite_text(&self) -> String;
}

#[cfg(feature = "chrono")]
impl SqliteText for chrono::NaiveDateTime {
    fn sqlite_text(&self) -> String {
        self.format("%F %T%.f").to_string()
    }
}

#[cfg(feature = "chrono")]
impl SqliteText for chrono::NaiveDate {
    fn sqlite_text(&self) -> String {
        self.format("%F").to_string()
    }
}

#[cfg(feature = "time")]
impl SqliteText for time::PrimitiveDateTime {
    fn sqlite_text(&self) -> String {
        use time::macros::format_description;
        let f = if self.nanosecond() == 0 {
            self.format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
        } else {
            self.format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
            ))
        };
        f.unwrap_or_default()
    }
}

#[cfg(feature = "time")]
impl SqliteText for time::Date {
    fn sqlite_text(&self) -> String {
        self.format(time::macros::format_description!("[year]-[month]-[day]"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_stored_form() {
        let mut b = StoredBuilder::default();
        b.set(0, Some(Stored::Real(2461042.5)));
        let k = b.finish((1_i32, 2_i32));
        assert_eq!(format!("{k:?}"), "(1, 2) stored as 2461042.5 (REAL)");
        assert_eq!(format!("{:?}", StoredKey::from(3)), "3");
    }

    #[cfg(feature = "chrono")]
    #[test]
    fn diesel_sqlite_text_of_chrono() {
        let t = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
            .unwrap()
            .and_hms_milli_opt(12, 0, 7, 250)
            .unwrap();
        assert_eq!(t.sqlite_text(), "2026-01-01 12:00:07.250");
        let t = t.with_nanosecond(0).unwrap();
        assert_eq!(t.sqlite_text(), "2026-01-01 12:00:07");
    }
    #[cfg(feature = "chrono")]
    use chrono::Timelike;
}
