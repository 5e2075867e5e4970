//! Compile-time behaviour of `#[locked]`: what expands and runs (`ui/pass`), and the errors that
//! point at the offending token (`ui/fail`, with committed `.stderr` files).
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p relock-macros --test ui`
//! and review each one: the caret must be under the token at fault.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
