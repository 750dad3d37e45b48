//! Why a datagram could not be decoded.

use thiserror::Error;

#[cfg(doc)]
use super::config::MAX_SEQ_JUMP;
use super::extended::ExtendedError;
use super::frag::FragError;
#[cfg(doc)]
use super::record::Event;

/// Why a datagram could not be decoded (carried by [`Event::Malformed`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// It starts like an extended header but the header does not parse.
    #[error("bad extended header: {source}")]
    Extended {
        /// What is wrong.
        #[source]
        source: ExtendedError,
    },
    /// Its `ncfrag` fragment cannot be placed.
    #[error("bad ncfrag fragment: {source}")]
    Fragment {
        /// What is wrong.
        #[source]
        source: FragError,
    },
    /// Its seq is more than [`MAX_SEQ_JUMP`] above the highest heard from the sender: forged
    /// or corrupt, not a loss. The datagram is not decoded and the sender's state is kept.
    #[error("suspicious seq {seq}: more than 2^32 above {previous}, the highest heard; ignored")]
    SeqJump {
        /// The highest seq heard before.
        previous: u64,
        /// The datagram's seq.
        seq: u64,
    },
    /// Its sysdata msgid moved further ahead than its seq did, which a real target cannot
    /// do (each message it sends is one printk record): forged. The record is still emitted;
    /// the sender's msgid is kept, so that gap detection goes on.
    #[error(
        "suspicious msgid {msgid} with seq {seq}: the msgid moved {msgid_advance} ahead of {previous} while the seq moved {seq_advance}; msgid ignored"
    )]
    MsgidJump {
        /// The last msgid accepted.
        previous: u32,
        /// The record's msgid.
        msgid: u32,
        /// The record's seq.
        seq: u64,
        /// How far the msgid moved.
        msgid_advance: u64,
        /// How far the seq moved since that msgid.
        seq_advance: u64,
    },
}
