//! What a receiver saw, as one list of records and events that the checks read, whichever
//! output it came from:
//!
//! - `--format raw` (one line per datagram): decoded here by a small reference decoder
//!   (extended header, `ncfrag` reassembly, `\xNN` unescaping, plain line assembly). It proves
//!   the capture path independently of netcon's decoder and gives the checks levels, sequence
//!   numbers and reassembled text; it emits no loss or reboot events (those are the decoder's).
//! - `--format json` (one object per line): netcon's decoded records and events, read by
//!   [`from_json`]. See the module `check` for what it must carry.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use netcon_testkit::{RawLine, unescape};
use serde_json::Value;

/// One decoded record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rec {
    /// `ip:port` of the sender.
    pub sender: String,
    /// Extended format (plain mode carries no level, facility or sequence number).
    pub extended: bool,
    pub seq: Option<u64>,
    pub facility: Option<u8>,
    pub level: Option<u8>,
    /// Microseconds since the sender booted.
    pub timestamp_us: Option<u64>,
    /// Kernel release (`r` flag's prefix, or sysdata `release=`).
    pub release: Option<String>,
    /// The text's bytes, unescaped, lines joined by `\n`, no trailing `\n`.
    pub text: Vec<u8>,
    /// Reassembled from `ncfrag` fragments.
    pub fragmented: bool,
    /// How many datagrams it came in (0 when the decoder does not say).
    pub datagrams: usize,
    /// Pieces were missing (fragments, or a plain line that never got its `\n`).
    pub incomplete: bool,
    /// netcon's crash-report mark, `(event, begins)` (JSON `flags.panic`; none from raw).
    pub panic: Option<(u64, bool)>,
    /// sysdata `msgid`, the target's message counter (configfs targets, 6.16 and later).
    pub msgid: Option<u64>,
}

/// A record or an event, in the order the receiver emitted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Record(Rec),
    /// The decoder reported lost records (`first..=last` of `kind`, `seq` or `msgid`).
    Lost {
        sender: String,
        kind: String,
        first: u64,
        last: u64,
    },
    /// The decoder reported that the sender rebooted.
    Rebooted {
        sender: String,
    },
    /// A datagram the decoder could not read.
    Malformed {
        sender: String,
        what: String,
    },
}

/// Everything one receiver saw.
#[derive(Debug, Default)]
pub struct Observed {
    pub items: Vec<Item>,
    /// The items come from netcon's decoder (so its events count); otherwise from this test's
    /// reference decoding of raw datagrams, which emits none.
    pub by_netcon: bool,
    /// Datagrams seen (raw output only).
    pub datagrams: usize,
    /// (source, destination) of the datagrams (raw output only).
    pub addresses: BTreeSet<(String, String)>,
}

impl Observed {
    pub fn records(&self) -> impl Iterator<Item = &Rec> {
        self.items.iter().filter_map(|i| match i {
            Item::Record(r) => Some(r),
            _ => None,
        })
    }
}

/// Decodes `--format raw` output:
/// `2026-11-27T21:53:56.123456Z eth1 10.77.0.10:6665 > 10.77.0.1:6666 <payload, escaped>`.
pub fn from_raw(stdout: &str) -> Result<Observed> {
    let mut observed = Observed::default();
    let mut decoder = Reference::default();
    for (n, line) in stdout.lines().enumerate() {
        let line = RawLine::try_parse(line).map_err(|e| anyhow!("line {}: {e}", n + 1))?;
        let payload = unescape(&line.payload).map_err(|e| anyhow!("line {}: {e}", n + 1))?;
        let (src, dst) = (line.src.to_string(), line.dst.to_string());
        observed.datagrams += 1;
        decoder.push(&src, &payload, &mut observed.items);
        observed.addresses.insert((src, dst));
    }
    decoder.finish(&mut observed.items);
    Ok(observed)
}

/// The header of an extended-format payload
/// (`[<release>,]<pri>,<seq>,<ts_usec>,<flag>[,<more>];`, `kernel/printk/printk.c`,
/// `info_print_ext_header`; `drivers/net/netconsole.c`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExtHeader {
    release: Option<String>,
    pri: u16,
    seq: u64,
    ts: u64,
    /// `ncfrag=<off>/<total>`.
    frag: Option<(usize, usize)>,
}

/// Splits an extended payload into its header and body; `None` for plain text.
fn parse_ext(payload: &[u8]) -> Option<(ExtHeader, &[u8])> {
    let semi = payload.iter().position(|&b| b == b';')?;
    let header = std::str::from_utf8(&payload[..semi]).ok()?;
    if header.contains(' ') {
        return None;
    }
    let mut fields: Vec<&str> = header.split(',').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let release = if fields.first().is_some_and(|f| !digits(f)) {
        Some(fields.remove(0).to_owned())
    } else {
        None
    };
    if fields.len() < 4 || !fields[..3].iter().all(|f| digits(f)) || fields[3].len() != 1 {
        return None;
    }
    let frag = fields[4..].iter().find_map(|f| {
        let (off, total) = f.strip_prefix("ncfrag=")?.split_once('/')?;
        Some((off.parse().ok()?, total.parse().ok()?))
    });
    Some((
        ExtHeader {
            release,
            pri: fields[0].parse().ok()?,
            seq: fields[1].parse().ok()?,
            ts: fields[2].parse().ok()?,
            frag,
        },
        &payload[semi + 1..],
    ))
}

/// `\xNN` escapes of the extended format's text back to bytes.
fn unescape_kernel(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\'
            && text.get(i + 1) == Some(&b'x')
            && let Some(b) = text
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// Fragments of one record being put together.
#[derive(Default)]
struct Partial {
    header: Option<ExtHeader>,
    total: usize,
    chunks: BTreeMap<usize, Vec<u8>>,
    datagrams: usize,
}

impl Partial {
    fn assembled(&self) -> Option<Vec<u8>> {
        let mut body = Vec::with_capacity(self.total);
        for (&off, chunk) in &self.chunks {
            if off > body.len() {
                return None;
            }
            let skip = body.len() - off;
            body.extend_from_slice(chunk.get(skip..).unwrap_or_default());
        }
        (body.len() >= self.total).then_some(body)
    }
}

/// Per-sender plain-mode line assembly.
#[derive(Default)]
struct PlainState {
    buf: Vec<u8>,
    /// Index in `items` of the last record, the datagram it ended in, and its `[ts]` prefix.
    last: Option<(usize, usize, Vec<u8>)>,
}

/// The reference decoder for raw datagrams.
#[derive(Default)]
struct Reference {
    fragments: HashMap<(String, u64), Partial>,
    plain: HashMap<String, PlainState>,
    datagram: usize,
}

impl Reference {
    fn push(&mut self, src: &str, payload: &[u8], items: &mut Vec<Item>) {
        self.datagram += 1;
        let Some((header, body)) = parse_ext(payload) else {
            self.push_plain(src, payload, items);
            return;
        };
        let Some((off, total)) = header.frag else {
            items.push(Item::Record(ext_record(src, &header, body, 1, false)));
            return;
        };
        let key = (src.to_owned(), header.seq);
        let partial = self.fragments.entry(key.clone()).or_default();
        partial.total = total;
        partial.datagrams += 1;
        partial.chunks.insert(off, body.to_vec());
        partial.header.get_or_insert(header);
        if let Some(body) = partial.assembled() {
            let partial = self.fragments.remove(&key).unwrap_or_default();
            if let Some(header) = &partial.header {
                items.push(Item::Record(ext_record(
                    src,
                    header,
                    &body,
                    partial.datagrams,
                    false,
                )));
            }
        }
    }

    fn push_plain(&mut self, src: &str, payload: &[u8], items: &mut Vec<Item>) {
        let state = self.plain.entry(src.to_owned()).or_default();
        state.buf.extend_from_slice(payload);
        while let Some(nl) = state.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = state.buf.drain(..=nl).take(nl).collect();
            let (prefix, text, ts) = split_plain_prefix(&line);
            if let Some((index, datagram, last_prefix)) = &state.last
                && *datagram == self.datagram
                && *last_prefix == prefix
                && !prefix.is_empty()
                && let Some(Item::Record(r)) = items.get_mut(*index)
            {
                r.text.push(b'\n');
                r.text.extend_from_slice(text);
                continue;
            }
            items.push(Item::Record(Rec {
                sender: src.to_owned(),
                timestamp_us: ts,
                text: text.to_vec(),
                datagrams: 1,
                ..Rec::default()
            }));
            state.last = Some((items.len() - 1, self.datagram, prefix));
        }
    }

    fn finish(&mut self, items: &mut Vec<Item>) {
        let mut left: Vec<_> = self.fragments.drain().collect();
        left.sort_by_key(|((src, seq), _)| (src.clone(), *seq));
        for ((src, _), partial) in left {
            let mut body = Vec::new();
            for chunk in partial.chunks.values() {
                body.extend_from_slice(chunk);
            }
            if let Some(header) = &partial.header {
                items.push(Item::Record(ext_record(
                    &src,
                    header,
                    &body,
                    partial.datagrams,
                    true,
                )));
            }
        }
        for (src, state) in &mut self.plain {
            if !state.buf.is_empty() {
                let (_, text, ts) = split_plain_prefix(&state.buf);
                items.push(Item::Record(Rec {
                    sender: src.clone(),
                    timestamp_us: ts,
                    text: text.to_vec(),
                    datagrams: 1,
                    incomplete: true,
                    ..Rec::default()
                }));
            }
        }
    }
}

/// `[    4.599528] text` -> (`[    4.599528]`, `text`, 4599528).
fn split_plain_prefix(line: &[u8]) -> (Vec<u8>, &[u8], Option<u64>) {
    if line.first() == Some(&b'[')
        && let Some(close) = line.iter().take(40).position(|&b| b == b']')
        && let Ok(inner) = std::str::from_utf8(&line[1..close])
        && let Some((secs, micros)) = inner.trim().split_once('.')
        && let (Ok(secs), Ok(micros)) = (secs.parse::<u64>(), micros.parse::<u64>())
    {
        let text = line.get(close + 1..).unwrap_or_default();
        let text = text.strip_prefix(b" ").unwrap_or(text);
        return (
            line[..=close].to_vec(),
            text,
            Some(secs * 1_000_000 + micros),
        );
    }
    (Vec::new(), line, None)
}

fn ext_record(
    src: &str,
    header: &ExtHeader,
    body: &[u8],
    datagrams: usize,
    incomplete: bool,
) -> Rec {
    let mut lines = body.split(|&b| b == b'\n');
    let text = unescape_kernel(lines.next().unwrap_or_default());
    let mut release = header.release.clone();
    let mut msgid = None;
    for line in lines {
        // Dictionary, userdata and sysdata lines: ` KEY=value`.
        if let Some(value) = line.strip_prefix(b" release=") {
            release = Some(String::from_utf8_lossy(&unescape_kernel(value)).into_owned());
        } else if let Some(value) = line.strip_prefix(b" msgid=") {
            msgid = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
    }
    Rec {
        sender: src.to_owned(),
        extended: true,
        seq: Some(header.seq),
        facility: u8::try_from(header.pri >> 3).ok(),
        level: u8::try_from(header.pri & 7).ok(),
        timestamp_us: Some(header.ts),
        release,
        text,
        fragmented: header.frag.is_some(),
        datagrams,
        incomplete,
        panic: None,
        msgid,
    }
}

/// Reads `--format json`: one object per line, a record or an event.
///
/// Kind: `"type"` (or `"event"`, `"kind"`): `record`, `lost`, `rebooted`/`reboot`,
/// `malformed`; anything else (`duplicate`, stats) is skipped. Records: `sender`, `format`,
/// `seq`, `pri` (or numeric `facility` and `level`), `timestamp_us`, `release` (or
/// `sysdata.release`), the text as exact bytes (`text_escaped` in netcon-sniff's escaping when
/// the text is not UTF-8, else `text`; `text_hex` also taken), `fragmented` and
/// `incomplete`/`partial` (top level or under `flags`, set when not null or false). Lost:
/// `sender`, `counter`/`loss_kind` (`seq`/`msgid`), `first`, `last`.
pub fn from_json(stdout: &str) -> Result<Observed> {
    let mut observed = Observed {
        by_netcon: true,
        ..Observed::default()
    };
    for (n, line) in stdout.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("line {}: not JSON: {line}", n + 1))?;
        let kind = ["type", "event", "kind"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .unwrap_or(if v.get("text").is_some() || v.get("text_hex").is_some() {
                "record"
            } else {
                ""
            })
            .to_ascii_lowercase();
        let sender = v
            .get("sender")
            .or_else(|| v.get("src"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let item = match kind.as_str() {
            "record" => {
                Item::Record(json_record(&v, sender).with_context(|| format!("line {}", n + 1))?)
            }
            "lost" | "loss" => Item::Lost {
                sender,
                kind: v
                    .get("counter")
                    .or_else(|| v.get("loss_kind"))
                    .and_then(Value::as_str)
                    .unwrap_or("seq")
                    .to_owned(),
                first: v.get("first").and_then(Value::as_u64).unwrap_or_default(),
                last: v.get("last").and_then(Value::as_u64).unwrap_or_default(),
            },
            "rebooted" | "reboot" => Item::Rebooted { sender },
            "malformed" => Item::Malformed {
                sender,
                what: v.get("error").map(Value::to_string).unwrap_or_default(),
            },
            _ => continue,
        };
        observed.items.push(item);
    }
    Ok(observed)
}

fn json_record(v: &Value, sender: String) -> Result<Rec> {
    let field = |key: &str, nested: &str| {
        v.get(key)
            .or_else(|| v.get(nested).and_then(|n| n.get(key)))
            .filter(|x| !x.is_null())
    };
    // `pri` (facility * 8 + level), else numeric `facility` and `level`.
    let (facility, level) = if let Some(pri) = v.get("pri").and_then(Value::as_u64) {
        (u8::try_from(pri >> 3).ok(), u8::try_from(pri & 7).ok())
    } else {
        let small = |key: &str| {
            field(key, "priority")
                .and_then(Value::as_u64)
                .and_then(|x| u8::try_from(x).ok())
        };
        (small("facility"), small("level"))
    };
    let text = if let Some(escaped) = v.get("text_escaped").and_then(Value::as_str) {
        // netcon-sniff's escaping, given when the text is not UTF-8 (`text` is then lossy).
        unescape(escaped).map_err(|e| anyhow!("bad text_escaped: {e}"))?
    } else if let Some(hex) = v.get("text_hex").and_then(Value::as_str) {
        ensure!(hex.len() % 2 == 0, "odd text_hex");
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .context("bad text_hex")?
    } else {
        match v.get("text") {
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
                .context("text array of non-bytes")?,
            _ => bail!("record without text: {v}"),
        }
    };
    let truthy = |x: Option<&Value>| x.is_some_and(|x| x.as_bool() != Some(false));
    let seq = v.get("seq").and_then(Value::as_u64);
    Ok(Rec {
        sender,
        extended: v
            .get("format")
            .and_then(Value::as_str)
            .map_or(seq.is_some(), |f| f == "extended"),
        seq,
        facility,
        level,
        timestamp_us: v.get("timestamp_us").and_then(Value::as_u64),
        release: v
            .get("release")
            .filter(|r| !r.is_null())
            .or_else(|| v.get("sysdata").and_then(|s| s.get("release")))
            .and_then(Value::as_str)
            .map(str::to_owned),
        text,
        fragmented: truthy(field("fragmented", "flags")),
        datagrams: 0,
        incomplete: truthy(field("incomplete", "flags")) || truthy(field("partial", "flags")),
        panic: field("panic", "flags")
            .and_then(|p| Some((p.get("event")?.as_u64()?, p.get("begins")?.as_bool()?))),
        msgid: v
            .get("sysdata")
            .and_then(|s| s.get("msgid"))
            .and_then(Value::as_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_fragments_split_inside_an_escape() {
        let out = "\
2026-11-27T21:53:56.123456Z i 10.0.0.10:6665 > 10.0.0.1:6666 6.12.1,14,595,8439407,-,ncfrag=0/17;NCT x \\\\xc3\\\\x
2026-11-27T21:53:56.123456Z i 10.0.0.10:6665 > 10.0.0.1:6666 6.12.1,14,595,8439407,-,ncfrag=12/17;a4 y\\n
";
        let o = from_raw(out).unwrap();
        let recs: Vec<_> = o.records().collect();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].text, "NCT x ä y".as_bytes());
        assert_eq!(recs[0].release.as_deref(), Some("6.12.1"));
        assert_eq!(
            (recs[0].facility, recs[0].level, recs[0].seq),
            (Some(1), Some(6), Some(595))
        );
        assert_eq!(recs[0].datagrams, 2);
        assert!(recs[0].fragmented && !recs[0].incomplete);
    }

    #[test]
    fn plain_lines_group_per_datagram_and_join_across_datagrams() {
        let out = "\
2026-11-27T21:53:56.123456Z i 10.0.0.10:6665 > 10.0.0.1:6666 [    4.599528] M 1\\n[    4.599528] M 2\\n
2026-11-27T21:53:56.123456Z i 10.0.0.10:6665 > 10.0.0.1:6666 [    4.600000] LONG-EN
2026-11-27T21:53:56.123456Z i 10.0.0.10:6665 > 10.0.0.1:6666 D\\n
";
        let o = from_raw(out).unwrap();
        let texts: Vec<_> = o.records().map(|r| r.text.clone()).collect();
        assert_eq!(texts, vec![b"M 1\nM 2".to_vec(), b"LONG-END".to_vec()]);
    }

    #[test]
    fn extended_with_dictionary() {
        let (h, body) =
            parse_ext(b"6,220,1326734,-,caller=T1;pci_bus x\n SUBSYSTEM=pci_bus\n").unwrap();
        assert_eq!(
            (h.pri, h.seq, h.ts, h.frag, h.release.as_deref()),
            (6, 220, 1_326_734, None, None)
        );
        let r = ext_record("s", &h, body, 1, false);
        assert_eq!(r.text, b"pci_bus x");
        assert!(parse_ext(b"[    1.0] plain; text").is_none());
    }

    #[test]
    fn reads_decoded_json() {
        let out = r#"{"type":"record","sender":"10.0.0.10:6665","format":"extended","facility":"user","level":"emerg","pri":8,"seq":3,"text":"A\t�","text_escaped":"A\\t\\xff","flags":{"fragmented":true,"incomplete":null,"partial":false}}
{"type":"rebooted","sender":"10.0.0.10:6665"}
{"type":"lost","sender":"10.0.0.10:6665","first":4,"last":6}
"#;
        let o = from_json(out).unwrap();
        let Item::Record(r) = &o.items[0] else {
            panic!()
        };
        assert_eq!((r.seq, r.facility, r.level), (Some(3), Some(1), Some(0)));
        assert_eq!(r.text, b"A\t\xff");
        assert!(r.fragmented && !r.incomplete);
        assert!(matches!(o.items[1], Item::Rebooted { .. }));
        assert!(matches!(
            o.items[2],
            Item::Lost {
                first: 4,
                last: 6,
                ..
            }
        ));
    }
}
