//! Compile-time errors of `#[locked]`: each case in `ui/fail` must fail to compile with the error
//! in its committed `.stderr` file, pointing at the offending token. What must compile and run is
//! in `expand.rs`.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p relock-macros --test ui`
//! and review each one: the caret must be under the token at fault.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
}
