//! Netconsole payloads that carry a [`Token`]: who sent the record, its sequence number and the
//! sender's clock at send time, so that any receiver's output (netcon-sniff's lines, socat's raw
//! payloads) can be checked and timed by looking for the token alone.
//!
//! Formats as `drivers/net/netconsole.c` sends them (see `shared/netconsole-format.md`):
//! extended `<pri>,<seq>,<ts_usec>,<flag>;<text>\n`, plain `[    t.tttttt] text\n`, and extended
//! records cut into `ncfrag=<off>/<total>` fragments of at most 1000 bytes with the header
//! repeated. Each fragment's chunk starts with its own token, so a receiver that does not
//! reassemble (socat) still shows which fragments arrived.

use std::fmt;

/// Longest netconsole payload (`MAX_PRINT_CHUNK`, `drivers/net/netconsole.c`), bytes.
pub const MAX_PAYLOAD: usize = 1000;
/// Marker that starts every token.
pub const TOKEN_MARK: &[u8] = b"@nb:";
/// Syslog priority of every record: facility kern, level info.
const PRIORITY: u64 = 6;

/// What a record carries about itself: `@nb:<run>:<sender>:<seq>:<sent_ns>:<frag>/<nfrag>@`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Which load run it belongs to (a receiver may still print an earlier run's records).
    pub run: u32,
    /// The simulated sender, 0-based.
    pub sender: u32,
    /// The sender's sequence number (the extended header's `<seq>`).
    pub seq: u64,
    /// `CLOCK_MONOTONIC` at send time, nanoseconds.
    pub sent_ns: u64,
    /// Which fragment this token starts (0 for an unfragmented record).
    pub frag: u8,
    /// Fragments of the record (1 for an unfragmented record).
    pub nfrag: u8,
}

impl Token {
    /// Appends the token's text.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(TOKEN_MARK);
        push_u64(out, u64::from(self.run));
        out.push(b':');
        push_u64(out, u64::from(self.sender));
        out.push(b':');
        push_u64(out, self.seq);
        out.push(b':');
        push_u64(out, self.sent_ns);
        out.push(b':');
        push_u64(out, u64::from(self.frag));
        out.push(b'/');
        push_u64(out, u64::from(self.nfrag));
        out.push(b'@');
    }

    /// Length of [`Token::write`]'s output.
    #[must_use]
    pub fn len(&self) -> usize {
        TOKEN_MARK.len()
            + digits(u64::from(self.run))
            + digits(u64::from(self.sender))
            + digits(self.seq)
            + digits(self.sent_ns)
            + digits(u64::from(self.frag))
            + digits(u64::from(self.nfrag))
            + 6
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses the token at the start of `text`, which begins right after [`TOKEN_MARK`].
    #[must_use]
    pub fn parse_after_mark(text: &[u8]) -> Option<Token> {
        let mut fields = [0u64; 6];
        let mut i = 0;
        for (n, field) in fields.iter_mut().enumerate() {
            let start = i;
            let mut value: u64 = 0;
            while let Some(&b) = text.get(i) {
                if !b.is_ascii_digit() {
                    break;
                }
                value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                i += 1;
            }
            if i == start {
                return None;
            }
            let want = match n {
                4 => b'/',
                5 => b'@',
                _ => b':',
            };
            if text.get(i) != Some(&want) {
                return None;
            }
            i += 1;
            *field = value;
        }
        let token = Token {
            run: u32::try_from(fields[0]).ok()?,
            sender: u32::try_from(fields[1]).ok()?,
            seq: fields[2],
            sent_ns: fields[3],
            frag: u8::try_from(fields[4]).ok()?,
            nfrag: u8::try_from(fields[5]).ok()?,
        };
        (token.nfrag >= 1 && token.frag < token.nfrag).then_some(token)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(self.len());
        self.write(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// Every well-formed token in `text`, in order.
pub fn tokens(text: &[u8]) -> impl Iterator<Item = Token> + '_ {
    memchr::memmem::find_iter(text, TOKEN_MARK)
        .filter_map(|at| Token::parse_after_mark(&text[at + TOKEN_MARK.len()..]))
}

/// How a record is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<pri>,<seq>,<ts_usec>,-;text\n` (netconsole's `+` targets).
    Extended,
    /// `[    t.tttttt] text\n`.
    Plain,
    /// A hostile sender's continuation chain: `<pri>,<seq>,<ts_usec>,c;<token>\n \n \n...`, an
    /// extended record flagged as continued whose body is empty dictionary lines up to the size,
    /// each of which a naive decoder holds as a field while it waits for the chain to end.
    Continuation,
}

/// The shape of the records a load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordShape {
    /// Extended or plain.
    pub format: Format,
    /// Payload bytes of an unfragmented record (padded up to this; never cut below the header
    /// and token). With fragments: bytes of the last fragment's chunk.
    pub size: usize,
    /// Fragments per record: 1 (none) or more (`ncfrag`, extended only). Every fragment but the
    /// last is a full 1000-byte payload, as the kernel fills them.
    pub fragments: u8,
}

impl RecordShape {
    /// Checks the combination.
    ///
    /// # Errors
    /// What is wrong, for the command line.
    pub fn validate(&self) -> Result<(), String> {
        if self.fragments == 0 {
            return Err("fragments must be at least 1".into());
        }
        if self.fragments > 1 && self.format != Format::Extended {
            return Err("ncfrag fragments exist only in the extended format".into());
        }
        if self.fragments > 8 {
            return Err("at most 8 fragments per record".into());
        }
        if self.size > MAX_PAYLOAD {
            return Err(format!("size {} is over {MAX_PAYLOAD} bytes", self.size));
        }
        Ok(())
    }
}

/// Builds the payloads of records, reusing its buffers.
#[derive(Debug)]
pub struct RecordBuilder {
    shape: RecordShape,
    scratch: Vec<u8>,
    prefix: Vec<u8>,
}

impl RecordBuilder {
    /// A builder for records of `shape` (see [`RecordShape::validate`]).
    #[must_use]
    pub fn new(shape: RecordShape) -> Self {
        Self {
            shape,
            scratch: Vec::with_capacity(MAX_PAYLOAD),
            prefix: Vec::with_capacity(64),
        }
    }

    /// The shape it builds.
    #[must_use]
    pub fn shape(&self) -> RecordShape {
        self.shape
    }

    /// Calls `emit` with each payload of one record, fragment by fragment. `ts_us` is the
    /// kernel timestamp (microseconds since the simulated boot).
    pub fn build(&mut self, token: Token, ts_us: u64, mut emit: impl FnMut(&[u8])) {
        let token = Token {
            frag: 0,
            nfrag: self.shape.fragments,
            ..token
        };
        match (self.shape.format, self.shape.fragments) {
            (Format::Plain, _) => {
                self.scratch.clear();
                self.scratch.push(b'[');
                let secs = ts_us / 1_000_000;
                for _ in digits(secs)..5 {
                    self.scratch.push(b' ');
                }
                push_u64(&mut self.scratch, secs);
                self.scratch.push(b'.');
                push_padded(&mut self.scratch, ts_us % 1_000_000, 6);
                self.scratch.extend_from_slice(b"] ");
                finish_chunk(&mut self.scratch, token, self.shape.size, true);
                emit(&self.scratch);
            }
            (Format::Continuation, _) => {
                self.scratch.clear();
                write_header(&mut self.scratch, token.seq, ts_us);
                // The flag `c`: a continuation the kernel would join with the next record.
                self.scratch.pop();
                self.scratch.extend_from_slice(b"c;");
                token.write(&mut self.scratch);
                self.scratch.push(b'\n');
                while self.scratch.len() + 2 <= self.shape.size.max(self.scratch.len()) {
                    self.scratch.extend_from_slice(b" \n");
                }
                emit(&self.scratch);
            }
            (Format::Extended, 1) => {
                self.scratch.clear();
                write_header(&mut self.scratch, token.seq, ts_us);
                self.scratch.push(b';');
                finish_chunk(&mut self.scratch, token, self.shape.size, true);
                emit(&self.scratch);
            }
            (Format::Extended, n) => {
                self.prefix.clear();
                write_header(&mut self.prefix, token.seq, ts_us);
                self.prefix.extend_from_slice(b",ncfrag=");
                let (chunks, total) = fragment_layout(self.prefix.len(), token, self.shape.size);
                let mut offset = 0;
                for (k, &chunk) in chunks.iter().enumerate().take(usize::from(n)) {
                    let last = k + 1 == usize::from(n);
                    self.scratch.clear();
                    self.scratch.extend_from_slice(&self.prefix);
                    push_u64(&mut self.scratch, offset as u64);
                    self.scratch.push(b'/');
                    push_u64(&mut self.scratch, total as u64);
                    self.scratch.push(b';');
                    let frag = Token {
                        frag: u8::try_from(k).unwrap_or(u8::MAX),
                        ..token
                    };
                    let start = self.scratch.len();
                    finish_chunk(&mut self.scratch, frag, start + chunk, last);
                    debug_assert_eq!(self.scratch.len() - start, chunk);
                    debug_assert!(self.scratch.len() <= MAX_PAYLOAD);
                    emit(&self.scratch);
                    offset += chunk;
                }
            }
        }
    }
}

/// `<pri>,<seq>,<ts_usec>,-` (`kernel/printk/printk.c`, `info_print_ext_header`).
fn write_header(out: &mut Vec<u8>, seq: u64, ts_us: u64) {
    push_u64(out, PRIORITY);
    out.push(b',');
    push_u64(out, seq);
    out.push(b',');
    push_u64(out, ts_us);
    out.extend_from_slice(b",-");
}

/// Appends the token, a space, filler up to `len` bytes in all, and (for a record's last piece)
/// `\n` as the last of them. Never cuts the token.
fn finish_chunk(out: &mut Vec<u8>, token: Token, len: usize, newline: bool) {
    token.write(out);
    out.push(b' ');
    let end = len.max(out.len() + usize::from(newline));
    let fill = end - out.len() - usize::from(newline);
    out.extend(b"netcon-bench-filler-".iter().copied().cycle().take(fill));
    if newline {
        out.push(b'\n');
    }
}

/// The chunk length of each fragment and the `<total>` they add up to: every fragment but the
/// last fills its payload to [`MAX_PAYLOAD`]; the last carries `last_chunk` bytes (at least the
/// token). `<total>`'s digit count changes the header length, hence the search.
fn fragment_layout(prefix_len: usize, token: Token, last_chunk: usize) -> (Vec<usize>, usize) {
    let n = usize::from(token.nfrag);
    // The longest token of this record: the fragment index has the most digits at the end.
    let min_chunk = Token {
        frag: token.nfrag - 1,
        ..token
    }
    .len()
        + 2;
    let last_chunk = last_chunk.max(min_chunk);
    let mut chunks = Vec::with_capacity(n);
    for total_digits in 1..=12 {
        chunks.clear();
        let mut offset = 0usize;
        for _ in 0..n - 1 {
            let header = prefix_len + digits(offset as u64) + 1 + total_digits + 1;
            let chunk = MAX_PAYLOAD - header;
            chunks.push(chunk);
            offset += chunk;
        }
        let total = offset + last_chunk;
        if digits(total as u64) == total_digits {
            chunks.push(last_chunk);
            return (chunks, total);
        }
    }
    unreachable!("a total of at most 8 KB has fewer than 12 digits")
}

/// Decimal digits of `v`.
#[must_use]
pub fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Appends `v` in decimal, without going through `fmt` (this runs for every record sent).
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    for _ in digits(v)..width {
        out.push(b'0');
    }
    push_u64(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_shape(format: Format, size: usize, fragments: u8) -> RecordShape {
        RecordShape {
            format,
            size,
            fragments,
        }
    }

    fn token(seq: u64) -> Token {
        Token {
            run: 7,
            sender: 42,
            seq,
            sent_ns: 123_456_789_012,
            frag: 0,
            nfrag: 1,
        }
    }

    fn payloads(shape: RecordShape, token: Token, ts_us: u64) -> Vec<Vec<u8>> {
        let mut b = RecordBuilder::new(shape);
        let mut out = Vec::new();
        b.build(token, ts_us, |p| out.push(p.to_vec()));
        out
    }

    #[test]
    fn token_round_trips_and_is_found_in_text() {
        let t = token(99);
        let text = format!("junk @nb:1:2 {t} more {t}@nb:");
        assert_eq!(t.to_string().len(), t.len());
        let found: Vec<Token> = tokens(text.as_bytes()).collect();
        assert_eq!(found, vec![t, t]);
        assert_eq!(
            Token::parse_after_mark(b"1:2:3:4:1/1@"),
            None,
            "frag < nfrag"
        );
        assert_eq!(
            Token::parse_after_mark(b"1:2:3:4:0/1"),
            None,
            "no closing @"
        );
        assert_eq!(
            Token::parse_after_mark(b"1:2:99999999999999999999:4:0/1@"),
            None
        );
    }

    #[test]
    fn continuation_record_is_empty_dictionary_lines_up_to_size() {
        let shape = record_shape(Format::Continuation, 1000, 1);
        let out = payloads(shape, token(7), 42);
        assert_eq!(out.len(), 1);
        let p = &out[0];
        assert!(p.starts_with(b"6,7,42,c;@nb:"), "{}", p.escape_ascii());
        assert!(p.len() <= 1000 && p.len() >= 998, "{}", p.len());
        let body = &p[p.iter().position(|&b| b == b'\n').unwrap() + 1..];
        assert!(
            body.chunks(2).all(|c| c == b" \n"),
            "{}",
            body.escape_ascii()
        );
        assert!(body.len() / 2 > 400);
    }

    #[test]
    fn extended_record_is_padded_to_size() {
        let shape = record_shape(Format::Extended, 200, 1);
        let p = payloads(shape, token(5), 1_234_567);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].len(), 200);
        assert!(p[0].starts_with(b"6,5,1234567,-;@nb:7:42:5:123456789012:0/1@ netcon-bench"));
        assert!(p[0].ends_with(b"\n"));
        // Too small a size keeps the whole token.
        let tiny = payloads(RecordShape { size: 3, ..shape }, token(5), 1);
        assert!(tiny[0].ends_with(b"0/1@ \n"));
    }

    #[test]
    fn plain_record_has_kernel_timestamp() {
        let shape = record_shape(Format::Plain, 120, 1);
        let p = payloads(shape, token(5), 4_373_204);
        assert!(
            p[0].starts_with(b"[    4.373204] @nb:7:42:5:"),
            "{:?}",
            p[0]
        );
        assert_eq!(p[0].len(), 120);
    }

    #[test]
    fn fragments_fill_payloads_and_count_offsets() {
        let shape = record_shape(Format::Extended, 300, 4);
        let p = payloads(shape, token(1_000_000), 9_999_999);
        assert_eq!(p.len(), 4);
        let mut body = Vec::new();
        let mut total = None;
        for (k, frag) in p.iter().enumerate() {
            let text = String::from_utf8_lossy(frag);
            let semi = text.find(';').unwrap();
            let header = &text[..semi];
            let ncfrag = header.split(",ncfrag=").nth(1).unwrap();
            let (off, tot) = ncfrag.split_once('/').unwrap();
            assert_eq!(off.parse::<usize>().unwrap(), body.len(), "fragment {k}");
            total = Some(tot.parse::<usize>().unwrap());
            body.extend_from_slice(&frag[semi + 1..]);
            if k < 3 {
                assert_eq!(frag.len(), MAX_PAYLOAD);
            }
            let t: Vec<Token> = tokens(frag).collect();
            assert_eq!(t.len(), 1);
            assert_eq!((t[0].frag, t[0].nfrag), (u8::try_from(k).unwrap(), 4));
        }
        assert_eq!(Some(body.len()), total);
        assert!(body.ends_with(b"\n"));
        assert_eq!(memchr::memchr_iter(b'\n', &body).count(), 1);
    }

    #[test]
    fn shapes_are_checked() {
        let ok = record_shape(Format::Extended, 200, 4);
        assert!(ok.validate().is_ok());
        assert!(
            RecordShape {
                format: Format::Plain,
                ..ok
            }
            .validate()
            .is_err()
        );
        assert!(RecordShape { fragments: 0, ..ok }.validate().is_err());
        assert!(
            RecordShape {
                format: Format::Continuation,
                fragments: 2,
                ..ok
            }
            .validate()
            .is_err()
        );
        assert!(RecordShape { size: 1001, ..ok }.validate().is_err());
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
        assert_eq!(digits(0), 1);
        assert_eq!(digits(9), 1);
        assert_eq!(digits(10), 2);
    }
}
