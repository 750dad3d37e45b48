//! Netconsole decoding, sans-IO: datagrams and a monotonic `now` in, records and events out.
//!
//! [`Decoder::push`] takes one UDP payload; [`Decoder::poll`] fires the timers that are due,
//! [`Decoder::poll_at`] says when the next one is; [`Decoder::flush`] empties everything on exit.
//! Nothing in here reads a clock, sleeps or does I/O; the wall-clock receive time comes in with
//! each datagram ([`Incoming::received`]).
//!
//! Per payload, the format is decided by its first bytes ([`extended::looks_extended`]): an
//! optional release token, then `<pri>,<seq>,...;` is the extended format, anything else plain
//! text (`drivers/net/netconsole.c`, `Documentation/networking/netconsole.rst`). Per sender
//! (address and port) the decoder drops duplicates, assembles plain lines ([`plain`]), reassembles
//! `ncfrag` fragments ([`frag`]), joins continuation records, tracks sequence numbers (loss,
//! reboot), estimates the boot time and flags crash reports ([`sender`]).
//!
//! Every table is bounded ([`DecoderConfig`]); what falls out of a bound is still emitted, marked,
//! and counted in [`DecoderStats`].

pub mod boot;
mod config;
mod decoder;
pub mod dups;
mod error;
pub mod extended;
mod fingerprint;
pub mod frag;
pub mod panic;
pub mod plain;
pub mod record;
pub mod sender;
pub mod seq;
mod state;
mod stats;
pub mod table;

pub use config::{
    DEFAULT_CONTINUATION_TIMEOUT, DEFAULT_DUPLICATE_HISTORY, DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_FRAGMENT_TIMEOUT, DEFAULT_MAX_BOOT_SHIFT, DEFAULT_MAX_CONTINUATION_BYTES,
    DEFAULT_MAX_CONTINUATION_FIELDS, DEFAULT_MAX_FRAGMENT_BYTES, DEFAULT_MAX_FRAGMENT_ENTRIES,
    DEFAULT_MAX_FRAGMENT_RANGES, DEFAULT_MAX_FRAGMENT_TOTAL, DEFAULT_MAX_PLAIN_LINE,
    DEFAULT_MAX_SENDERS, DEFAULT_PANIC_CONTEXT, DEFAULT_PLAIN_IDLE_TIMEOUT,
    DEFAULT_REBOOT_BACKSTEP, DEFAULT_REORDER_WINDOW, DecoderConfig, MAX_SEQ_JUMP,
};
pub use decoder::{Decoder, Incoming};
pub use error::DecodeError;
pub use extended::ExtendedError;
pub use frag::FragError;
pub use record::{
    Caller, ContFlag, Duplicate, Escaped, Event, Field, Flags, Incomplete, LossKind, Lost,
    Malformed, PanicKind, PanicMark, Priority, Rebooted, Record, RecordFormat, Sysdata,
};
pub use sender::SenderTally;
pub use stats::DecoderStats;

#[cfg(test)]
mod tests;
