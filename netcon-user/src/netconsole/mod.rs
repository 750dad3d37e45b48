//! Netconsole decoding (being written; placeholder so the crate builds).
