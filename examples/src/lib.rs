//! relock examples
