//! Sinks format and deliver records. They never parse.

pub mod escape;
pub mod raw;
