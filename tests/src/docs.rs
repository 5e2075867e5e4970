//! The README's and the `docs/` pages' Rust examples, compiled and run as doctests here rather
//! than in `relock`: this package depends on every crate they use (relock with all its
//! features, relock-tower, axum), and a published crate cannot include files from outside it.

/// README.md.
#[doc = include_str!("../../README.md")]
pub struct Readme;

/// docs/production.md.
#[doc = include_str!("../../docs/production.md")]
pub struct Production;

/// docs/failure-contract.md.
#[doc = include_str!("../../docs/failure-contract.md")]
pub struct FailureContract;

/// docs/observability.md.
#[doc = include_str!("../../docs/observability.md")]
pub struct Observability;

/// docs/layout.md.
#[doc = include_str!("../../docs/layout.md")]
pub struct Layout;

/// docs/benchmarks.md.
#[doc = include_str!("../../docs/benchmarks.md")]
pub struct Benchmarks;
