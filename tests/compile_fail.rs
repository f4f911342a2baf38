//! Compile-fail tests: queries the crate rejects at compile time, each with the
//! diagnostic rustc prints for it (`tests/ui/*.rs` and the `.stderr` beside it).
//!
//! The expected output depends on the enabled features (rustc lists the types
//! that do implement a trait, and those lists grow with `postgres`, `mysql`,
//! `chrono`, ...), so the test runs only with the default features:
//! `cargo test` (which `.ci/run` runs) or `cargo test --test compile_fail`.
//! With other features this file compiles to an empty test binary.
//!
//! After a change of the diagnostics (or of the toolchain), regenerate and then
//! read every `.stderr`:
//!
//! ```text
//! TRYBUILD=overwrite cargo test --test compile_fail
//! ```
#![cfg(all(
    feature = "sqlite",
    not(feature = "postgres"),
    not(feature = "mysql"),
    not(feature = "chrono"),
    not(feature = "time"),
    not(feature = "uuid"),
    not(feature = "serde")
))]

#[test]
fn compile_fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
