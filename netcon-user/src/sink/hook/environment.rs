//! The environment a `--on-panic` command gets (see the module documentation of [`super`]).

use chrono::SecondsFormat;

use super::MAX_TEXT_ENV_BYTES;
use crate::escape::escape_into;
use crate::netconsole::Record;

/// The environment the command gets for `record` (see the module documentation).
#[must_use]
pub fn environment(record: &Record) -> Vec<(&'static str, String)> {
    let mut text = String::with_capacity(record.text.len());
    escape_into(&record.text, &mut text);
    let truncated = text.len() > MAX_TEXT_ENV_BYTES;
    if truncated {
        text.truncate(text.floor_char_boundary(MAX_TEXT_ENV_BYTES));
    }
    let mut env = vec![
        ("NETCON_SENDER", record.sender.to_string()),
        ("NETCON_TEXT", text),
        (
            "NETCON_TIME",
            record.received.to_rfc3339_opts(SecondsFormat::Micros, true),
        ),
        (
            "NETCON_KIND",
            record
                .flags
                .panic
                .map_or("panic", |p| p.kind.as_str())
                .to_owned(),
        ),
    ];
    if truncated {
        env.push(("NETCON_TEXT_TRUNCATED", "1".to_owned()));
    }
    env
}
