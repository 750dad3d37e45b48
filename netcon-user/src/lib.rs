//! netcon: catch Linux netconsole datagrams off the wire and turn them into records.
//!
//! The flow is one direction, one owner per stage:
//! [`capture`] yields frames, [`wire`] turns a frame into a UDP datagram, [`netconsole`] turns
//! datagrams into records and events, [`sink`] formats and delivers them.

pub mod budget;
pub mod capture;
pub mod cli;
pub mod config;
pub mod escape;
pub mod metrics;
pub mod netconsole;
pub mod notice;
pub mod privileges;
pub mod run;
pub mod sender_config;
pub mod sink;
pub mod systemd;
pub mod tail;
pub mod wire;

#[cfg(test)]
mod testing;

pub use config::Config;
pub use run::run;
