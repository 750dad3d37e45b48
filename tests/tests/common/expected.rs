//! The records a fixture's guest wrote (`<name>.expected.json` beside `<name>.pcap`): what the
//! tests compare netcon-sniff's output against, rather than against its own decoding.

use netcon_testkit::fixture;
use serde_json::Value;

/// One record the guest wrote to `/dev/kmsg`.
#[derive(Debug)]
pub struct ExpectedRecord {
    pub name: String,
    /// The `<N>` it was written with: facility * 8 + level.
    pub prio: u8,
    /// `marker`, `burst`, `long`, ...: what the record is there to test.
    pub kind: String,
    pub text: Vec<u8>,
    /// The kernel refused the write (`rejected` holds the error): it was never logged.
    pub rejected: bool,
}

/// Every record of `<name>.expected.json`, in order.
///
/// # Panics
/// If the file is missing or a record lacks a field.
pub fn expected_records(name: &str) -> Vec<ExpectedRecord> {
    let path = fixture(&format!("{name}.expected.json"));
    let json = std::fs::read_to_string(&path).expect("readable fixture");
    let doc: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let records = doc["records"]
        .as_array()
        .unwrap_or_else(|| panic!("no records array in {}", path.display()));
    records
        .iter()
        .map(|record| {
            let field = |key: &str| {
                record[key].as_str().unwrap_or_else(|| {
                    panic!("a record without {key} in {}: {record}", path.display())
                })
            };
            let hex = field("text_hex");
            ExpectedRecord {
                name: field("name").to_owned(),
                prio: record["prio"]
                    .as_u64()
                    .and_then(|p| u8::try_from(p).ok())
                    .unwrap_or_else(|| panic!("no prio in {}: {record}", path.display())),
                kind: field("kind").to_owned(),
                text: (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex text"))
                    .collect(),
                rejected: record.get("rejected").is_some(),
            }
        })
        .collect()
}
