//! `--forward` carries what a record carries: userdata, sysdata and dictionary fields reach a
//! real rsyslog (Debian's `rsyslog`, imtcp) as RFC 5424 structured data, and come back out of
//! `mmpstrucdata` the way the README tells an operator to read them.
//!
//! The records are shaped as a 7.x configfs target sends them with userdata `dc=lab-7`,
//! `rack=r12` and every sysdata switch on (release prefix; dictionary, then userdata in creation
//! order, then ` cpu=`, ` taskname=`, ` release=`, ` msgid=`; `drivers/net/netconsole.c`),
//! written into a small pcap file here and read with `-r`. Loopback only; no privileges.

use std::process::Command;
use std::time::Duration;

use etherparse::PacketBuilder;
use netcon_testkit::rsyslog::{Input, Rsyslog};
use netcon_testkit::{TempDir, run_bounded, sniff_binary};

const RELEASE: &str = "7.2.13+deb14-amd64";

/// A classic pcap file (Ethernet) of one UDP datagram per payload, 10.77.0.10:6665 →
/// 10.77.0.1:6666.
fn pcap(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, payload) in payloads.iter().enumerate() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 77, 0x10], [0xff; 6])
            .ipv4([10, 77, 0, 10], [10, 77, 0, 1], 64)
            .udp(6665, 6666)
            .write(&mut frame, payload)
            .expect("frame");
        let len = u32::try_from(frame.len()).expect("small frame");
        out.extend_from_slice(&1_795_817_636u32.to_le_bytes());
        out.extend_from_slice(&u32::try_from(i).expect("few").to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

#[test]
fn userdata_sysdata_and_dictionary_reach_rsyslog_as_structured_data() {
    let mut rsyslog = Rsyslog::start();
    let dir = TempDir::new("forward-fields");
    let file = dir.join("fields.pcap");
    let payloads = vec![
        format!(
            "{RELEASE},14,387,3856782,-;link is up\n SUBSYSTEM=net\n DEVICE=+net:eth0\n \
             dc=lab-7\n rack=r12\n cpu=0\n taskname=cat\n release={RELEASE}\n msgid=10\n"
        )
        .into_bytes(),
        format!(
            "{RELEASE},14,388,3856790,-;odd values\n dc=lab-7\n note=a\"b\\c]d\n \
             bad key=x\n cpu=1\n taskname=kworker/1:2\n release={RELEASE}\n msgid=11\n"
        )
        .into_bytes(),
    ];
    std::fs::write(&file, pcap(&payloads)).expect("write the pcap");
    let url = format!("syslog+tcp://127.0.0.1:{}", rsyslog.port(Input::Tcp));
    let out = run_bounded(
        Command::new(sniff_binary()).args([
            "-r",
            file.to_str().expect("UTF-8 path"),
            "--forward",
            &url,
        ]),
        Duration::from_mins(1),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = rsyslog.wait_for(
        |r| r.sd_lines(Input::Tcp),
        |l| l.len() >= 2,
        Duration::from_secs(30),
    );
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();

    let first = &parsed[0];
    let netcon = &first["netcon@32473"];
    assert_eq!(netcon["seq"], "387", "{first}");
    assert_eq!(netcon["cpu"], "0", "{first}");
    assert_eq!(netcon["taskname"], "cat", "{first}");
    assert_eq!(netcon["release"], RELEASE, "{first}");
    assert_eq!(netcon["msgid"], "10", "{first}");
    let fields = &first["fields@32473"];
    assert_eq!(fields["dc"], "lab-7", "{first}");
    assert_eq!(fields["rack"], "r12", "{first}");
    assert_eq!(fields["SUBSYSTEM"], "net", "{first}");
    assert_eq!(fields["DEVICE"], "+net:eth0", "{first}");
    // Typed sysdata are not repeated among the fields.
    assert!(fields.get("cpu").is_none(), "{first}");

    let second = &parsed[1];
    assert_eq!(
        second["netcon@32473"]["taskname"], "kworker/1:2",
        "{second}"
    );
    let fields = &second["fields@32473"];
    // `"`, `\` and `]` survive the escaping both ways; a space in a key became `_`.
    assert_eq!(fields["note"], "a\"b\\c]d", "{second}");
    assert_eq!(fields["bad_key"], "x", "{second}");

    // The plain file output shows the same SD as sent.
    let plain = rsyslog.lines(Input::Tcp);
    assert!(
        plain.iter().any(|l| l.contains(
            "[fields@32473 SUBSYSTEM=\"net\" DEVICE=\"+net:eth0\" dc=\"lab-7\" rack=\"r12\"]"
        )),
        "{plain:#?}"
    );
}
