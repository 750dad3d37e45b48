//! End-to-end tests of `netcon-sniff sender-config`: the real binary, run inside
//! network namespaces that each test creates (and removes on drop, also when it panics).
//! Addresses: `10.60.0.0/24` to `10.69.0.0/24` and `fd00:60::/64` to `fd00:69::/64`.
//!
//! The printed `netconsole=` string is taken apart as the kernel does
//! (`netpoll_parse_options()` in `net/core/netpoll.c`) and checked field by field, and the
//! configfs commands are checked against it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use netcon_testkit::route::{Bridged, OnLink, Routed, link_local};
use netcon_testkit::{Mac, Netns, mac_to_string, sniff_binary};

/// How long one `sender-config` run may take before the test fails: a failure deadline, far
/// above the second it needs at most.
const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// The longest resolution wait the CLI allows, for runs whose next hop must resolve: the wait
/// ends as soon as the MAC is known, so this only keeps a loaded machine from failing a test.
const RESOLVE_GENEROUSLY: &str = "10000";

/// What one run printed.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `netcon-sniff sender-config ARGS` (inside `ns` when given), failing the test if it has
/// not finished by [`RUN_DEADLINE`].
fn run_in(ns: Option<&Netns>, args: &[&str]) -> Outcome {
    let binary = sniff_binary();
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name()]).arg(&binary);
            c
        }
        None => Command::new(&binary),
    };
    command
        .arg("sender-config")
        .args(args)
        .env("NETCON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(RUN_DEADLINE) else {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
            nix::sys::signal::Signal::SIGKILL,
        );
        panic!("sender-config {args:?} did not finish within {RUN_DEADLINE:?}");
    };
    let output = output.expect("waiting for sender-config");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// Runs sender-config in `ns` (or outside any test namespace), failing unless it exits with
/// `code` and writes nothing on the stream that exit has no use for: stderr after a success,
/// stdout after a failure. Returns what it wrote on the other one.
fn run_expecting(ns: Option<&Netns>, args: &[&str], code: i32) -> String {
    let out = run_in(ns, args);
    assert_eq!(
        out.code,
        Some(code),
        "sender-config {args:?} should exit with {code}:\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let (used, unused, unused_name) = if code == 0 {
        (out.stdout, out.stderr, "stderr")
    } else {
        (out.stderr, out.stdout, "stdout")
    };
    assert!(
        unused.is_empty(),
        "sender-config {args:?} (exit {code}) wrote to {unused_name}: {unused}"
    );
    used
}

/// Runs sender-config in `ns` and returns its stdout, failing unless it exits 0 with nothing
/// on stderr.
fn sender_config(ns: &Netns, args: &[&str]) -> String {
    run_expecting(Some(ns), args, 0)
}

/// Runs sender-config in `ns` for `target` with `extra` arguments, letting the next hop take
/// as long as it needs to resolve; returns stdout as [`sender_config`] does.
fn sender_config_for(ns: &Netns, target: &str, extra: &[&str]) -> String {
    let mut args = vec!["--target", target, "--resolve-ms", RESOLVE_GENEROUSLY];
    args.extend_from_slice(extra);
    sender_config(ns, &args)
}

/// The text output for `target` (resolved as in [`sender_config_for`]), and that text taken apart.
fn printed_for(ns: &Netns, target: &str) -> (String, Printed) {
    let text = sender_config_for(ns, target, &[]);
    let printed = Printed::parse(&text);
    (text, printed)
}

/// Runs sender-config in `ns` (or outside any test namespace) expecting exit code 2 and one
/// line on stderr; returns that line.
fn sender_config_error(ns: Option<&Netns>, args: &[&str]) -> String {
    let stderr = run_expecting(ns, args, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {stderr}");
    assert!(
        lines[0].starts_with("netcon-sniff: error: "),
        "{}",
        lines[0]
    );
    lines[0].to_owned()
}

/// A `netconsole=` value taken apart the way `netpoll_parse_options()` does: each field ends
/// at the first `@`, `/` or `,` that follows it (which is why IPv6 addresses need no brackets).
#[derive(Debug, PartialEq, Eq)]
struct Param {
    extended: bool,
    release: bool,
    src_port: String,
    src_ip: String,
    dev: String,
    target_port: String,
    target_ip: String,
    /// Empty: broadcast.
    target_mac: String,
}

fn take<'a>(rest: &mut &'a str, until: char, what: &str, whole: &str) -> &'a str {
    let (field, after) = rest
        .split_once(until)
        .unwrap_or_else(|| panic!("no `{until}` after the {what} in `{whole}`"));
    *rest = after;
    field
}

impl Param {
    fn parse(value: &str) -> Param {
        let mut rest = value;
        let extended = rest.starts_with('+');
        if extended {
            rest = &rest[1..];
        }
        let release = rest.starts_with('r');
        if release {
            rest = &rest[1..];
        }
        let src_port = take(&mut rest, '@', "source port", value).to_owned();
        let src_ip = take(&mut rest, '/', "source IP", value).to_owned();
        let dev = take(&mut rest, ',', "device", value).to_owned();
        let target_port = take(&mut rest, '@', "target port", value).to_owned();
        let target_ip = take(&mut rest, '/', "target IP", value).to_owned();
        Param {
            extended,
            release,
            src_port,
            src_ip,
            dev,
            target_port,
            target_ip,
            target_mac: rest.to_owned(),
        }
    }

    /// Checks the fields of a well-formed string: ports and addresses parse, the MAC is
    /// empty or six lower-case hex pairs.
    fn check_syntax(&self) {
        assert!(self.release <= self.extended, "`r` without `+`: {self:?}");
        for port in [&self.src_port, &self.target_port] {
            let p: u16 = port.parse().unwrap_or_else(|_| panic!("bad port {port}"));
            assert_ne!(p, 0);
        }
        let src: IpAddr = self.src_ip.parse().expect("source IP");
        let target: IpAddr = self.target_ip.parse().expect("target IP");
        assert_eq!(src.is_ipv4(), target.is_ipv4(), "mixed families: {self:?}");
        assert!(!self.dev.is_empty() && !self.dev.contains(':'));
        if !self.target_mac.is_empty() {
            let bytes: Vec<&str> = self.target_mac.split(':').collect();
            assert_eq!(bytes.len(), 6, "MAC {}", self.target_mac);
            for b in bytes {
                assert!(
                    b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()),
                    "MAC {}",
                    self.target_mac
                );
            }
        }
    }
}

/// The text output, taken apart.
#[derive(Debug)]
struct Printed {
    /// The `netconsole=` value of the modprobe line.
    param: Param,
    /// configfs: file name → value echoed into it, in order.
    configfs: Vec<(String, String)>,
    /// The `# warning: ...` comments, continuation lines joined.
    warnings: Vec<String>,
}

const CONFIGFS_DIR: &str = "/sys/kernel/config/netconsole/netcon";

impl Printed {
    fn parse(text: &str) -> Printed {
        let modprobe: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("modprobe netconsole netconsole="))
            .collect();
        assert_eq!(
            modprobe.len(),
            1,
            "one modprobe line with a target:\n{text}"
        );
        let value = modprobe[0]
            .strip_prefix("modprobe netconsole netconsole=")
            .expect("prefix");
        assert!(
            !value.contains(['\'', '"', ' ']),
            "quoted or spaced: {value}"
        );
        let cmdline: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("netconsole="))
            .collect();
        assert_eq!(
            cmdline,
            [format!("netconsole={value}")],
            "kernel command line form:\n{text}"
        );

        let mut configfs = Vec::new();
        let prefix = format!("{CONFIGFS_DIR}/");
        for line in text.lines() {
            if let Some(echo) = line.strip_prefix("echo ")
                && let Some((value, path)) = echo.split_once(" > ")
                && let Some(file) = path.strip_prefix(&prefix)
            {
                configfs.push((file.to_owned(), value.to_owned()));
            }
        }
        assert!(
            text.lines().any(|l| l == format!("mkdir {CONFIGFS_DIR}")),
            "mkdir:\n{text}"
        );
        assert!(text.lines().any(|l| l == "dmesg -n 8"), "dmesg:\n{text}");
        assert!(
            text.lines()
                .any(|l| l == "echo '<6>netcon test' > /dev/kmsg"),
            "test line:\n{text}"
        );

        let mut warnings: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(w) = line.strip_prefix("# warning: ") {
                warnings.push(w.to_owned());
            } else if let (Some(last), Some(more)) =
                (warnings.last_mut(), line.strip_prefix("#   "))
                && !more.is_empty()
            {
                last.push(' ');
                last.push_str(more.trim());
            }
        }
        let param = Param::parse(value);
        param.check_syntax();
        Printed {
            param,
            configfs,
            warnings,
        }
    }

    /// The option string sets `expected` and the configfs commands set the same target.
    fn check_target(&self, expected: &Param, text: &str) {
        assert_eq!(&self.param, expected, "{text}");
        self.check_configfs_matches();
    }

    fn check_no_warnings(&self) {
        assert!(self.warnings.is_empty(), "{:?}", self.warnings);
    }

    /// The configfs commands set the same target as the option string, and enable it last.
    fn check_configfs_matches(&self) {
        let p = &self.param;
        let files: BTreeMap<&str, &str> = self
            .configfs
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            files.len(),
            self.configfs.len(),
            "a file set twice: {self:?}"
        );
        let mac = if p.target_mac.is_empty() {
            "ff:ff:ff:ff:ff:ff"
        } else {
            p.target_mac.as_str()
        };
        assert_eq!(files.get("dev_name"), Some(&p.dev.as_str()));
        assert_eq!(files.get("local_ip"), Some(&p.src_ip.as_str()));
        assert_eq!(files.get("local_port"), Some(&p.src_port.as_str()));
        assert_eq!(files.get("remote_ip"), Some(&p.target_ip.as_str()));
        assert_eq!(files.get("remote_port"), Some(&p.target_port.as_str()));
        assert_eq!(files.get("remote_mac"), Some(&mac));
        assert_eq!(
            files.get("extended"),
            p.extended.then_some(&"1"),
            "extended"
        );
        assert_eq!(files.get("release"), p.release.then_some(&"1"), "release");
        assert_eq!(
            self.configfs.last().map(|(f, v)| (f.as_str(), v.as_str())),
            Some(("enabled", "1")),
            "enabled=1 comes last"
        );
    }
}

/// Expected fields of a plain (not extended) target with default ports.
fn expect_param(
    src_ip: &impl ToString,
    dev: &str,
    target_ip: &impl ToString,
    mac: Option<Mac>,
) -> Param {
    Param {
        extended: false,
        release: false,
        src_port: "6665".into(),
        src_ip: src_ip.to_string(),
        dev: dev.into(),
        target_port: "6666".into(),
        target_ip: target_ip.to_string(),
        target_mac: mac.map(mac_to_string).unwrap_or_default(),
    }
}

/// The string value of `"key": "..."` (or the bare token of `"key": null/true/7`) in the
/// pretty-printed JSON output.
fn json_field(json: &str, key: &str) -> String {
    let needle = format!("\"{key}\": ");
    let start = json
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in:\n{json}"))
        + needle.len();
    let rest = &json[start..];
    if let Some(s) = rest.strip_prefix('"') {
        s[..s.find('"').expect("closing quote")].to_owned()
    } else {
        rest[..rest.find([',', '\n']).unwrap_or(rest.len())].to_owned()
    }
}

/// Every warning kind in the JSON output, in order.
fn json_warning_kinds(json: &str) -> Vec<String> {
    json.match_indices("\"kind\": \"")
        .map(|(i, m)| {
            let rest = &json[i + m.len()..];
            rest[..rest.find('"').expect("closing quote")].to_owned()
        })
        .collect()
}

#[test]
fn same_segment_target_gets_its_mac() {
    let net = OnLink::new(60);
    let s = &net.segment;
    let (text, printed) = printed_for(&net.sender, &s.far_v4.to_string());
    printed.check_target(
        &expect_param(&s.near_v4, &s.near_if, &s.far_v4, Some(s.far_mac)),
        &text,
    );
    printed.check_no_warnings();

    // Ports, `+` and `r`, and the configfs name, now with the neighbour entry in place.
    let target = format!("{}:7000", s.far_v4);
    let text = sender_config(
        &net.sender,
        &[
            "--target",
            &target,
            "--extended",
            "--release",
            "--src-port",
            "7001",
        ],
    );
    let printed = Printed::parse(&text);
    let mut expected = expect_param(&s.near_v4, &s.near_if, &s.far_v4, Some(s.far_mac));
    expected.extended = true;
    expected.release = true;
    expected.src_port = "7001".into();
    expected.target_port = "7000".into();
    printed.check_target(&expected, &text);
    assert!(
        text.contains(&format!(
            "modprobe netconsole netconsole=+r7001@{}/{},7000@{}/{}\n",
            s.near_v4,
            s.near_if,
            s.far_v4,
            mac_to_string(s.far_mac)
        )),
        "{text}"
    );
}

#[test]
fn target_behind_a_gateway_gets_the_gateway_mac() {
    let net = Routed::new(61, 62);
    let (first, second) = (&net.first, &net.second);
    for (target, src, gateway) in [
        (
            IpAddr::from(second.far_v4),
            IpAddr::from(first.near_v4),
            IpAddr::from(first.far_v4),
        ),
        (
            second.far_v6.into(),
            first.near_v6.into(),
            first.far_v6.into(),
        ),
    ] {
        let json = sender_config_for(&net.sender, &target.to_string(), &["--format", "json"]);
        let param = Param::parse(&json_field(&json, "netconsole"));
        param.check_syntax();
        // The gateway's MAC on the sender's segment, never the collector's.
        assert_eq!(
            param,
            expect_param(&src, &first.near_if, &target, Some(first.far_mac)),
            "{json}"
        );
        assert_ne!(param.target_mac, mac_to_string(second.far_mac));
        assert_eq!(json_field(&json, "gateway"), gateway.to_string(), "{json}");
        assert_eq!(json_field(&json, "next_hop"), gateway.to_string(), "{json}");
        assert_eq!(json_field(&json, "broadcast"), "false", "{json}");
        assert!(json_warning_kinds(&json).is_empty(), "{json}");
    }
}

#[test]
fn unresolvable_neighbour_gives_broadcast_and_a_warning() {
    let net = OnLink::new(63);
    let s = &net.segment;
    let absent = s.absent_v4().to_string();
    let text = sender_config(&net.sender, &["--target", &absent, "--resolve-ms", "300"]);
    let printed = Printed::parse(&text);
    printed.check_target(&expect_param(&s.near_v4, &s.near_if, &absent, None), &text);
    assert_eq!(printed.warnings.len(), 1, "{text}");
    let warning = &printed.warnings[0];
    assert!(
        warning.starts_with(&format!("{absent} looks unreachable")),
        "{warning}"
    );
    assert!(
        warning.contains("broadcasts (ff:ff:ff:ff:ff:ff)"),
        "{warning}"
    );

    let json = sender_config(
        &net.sender,
        &[
            "--target",
            &absent,
            "--resolve-ms",
            "300",
            "--format",
            "json",
        ],
    );
    assert_eq!(json_field(&json, "broadcast"), "true", "{json}");
    assert_eq!(json_field(&json, "target_mac"), "null", "{json}");
    assert_eq!(
        json_warning_kinds(&json),
        ["unresolved_neighbour"],
        "{json}"
    );
    assert_eq!(
        json_field(&json, "netconsole"),
        format!("6665@{}/{},6666@{absent}/", s.near_v4, s.near_if)
    );
}

#[test]
fn ipv6_targets() {
    let net = OnLink::new(64);
    let s = &net.segment;

    let (text, printed) = printed_for(&net.sender, &format!("[{}]:6666", s.far_v6));
    printed.check_target(
        &expect_param(&s.near_v6, &s.near_if, &s.far_v6, Some(s.far_mac)),
        &text,
    );
    printed.check_no_warnings();

    // A link-local target with its device: the sender's link-local source, no warning.
    let (near_ll, far_ll) = (
        link_local(&net.sender, &s.near_if),
        link_local(&net.collector, &s.far_if),
    );
    let (text, printed) = printed_for(&net.sender, &format!("[{far_ll}%{}]", s.near_if));
    assert_eq!(
        printed.param,
        expect_param(&near_ll, &s.near_if, &far_ll, Some(s.far_mac)),
        "{text}"
    );
    printed.check_no_warnings();

    // Without a device, the same result and a warning that it was guessed.
    let json = sender_config_for(&net.sender, &far_ll.to_string(), &["--format", "json"]);
    assert_eq!(json_field(&json, "dev"), s.near_if, "{json}");
    assert_eq!(json_warning_kinds(&json), ["link_local_target"], "{json}");
}

#[test]
fn bridge_output_device_warns_and_names_its_port() {
    let net = Bridged::new(65, false);
    let s = &net.segment;
    let target = s.far_v4.to_string();
    let (text, printed) = printed_for(&net.sender, &target);
    // netpoll refuses an enslaved port, so the bridge itself stays the device.
    printed.check_target(
        &expect_param(&s.near_v4, &net.bridge, &s.far_v4, Some(s.far_mac)),
        &text,
    );
    assert_eq!(printed.warnings.len(), 1, "{:?}", printed.warnings);
    let warning = &printed.warnings[0];
    assert!(
        warning.starts_with(&format!(
            "output device {} is a bridge with port {}:",
            net.bridge, s.near_if
        )),
        "{warning}"
    );
    assert!(warning.contains("slave device"), "{warning}");

    let json = sender_config(&net.sender, &["--target", &target, "--format", "json"]);
    assert_eq!(json_warning_kinds(&json), ["aggregate_device"], "{json}");
}

#[test]
fn enslaved_output_device_is_refused_naming_its_master() {
    // Addresses on the bridge port: routes then go out the port, which netpoll refuses, so no
    // line is printed that the kernel would reject.
    let net = Bridged::new(66, true);
    let s = &net.segment;
    let line = sender_config_error(
        Some(&net.sender),
        &["--target", &s.far_v4.to_string(), "--resolve-ms", "300"],
    );
    assert!(
        line.contains(&format!(
            "{} is enslaved to bridge {}",
            s.near_if, net.bridge
        )),
        "{line}"
    );
    assert!(line.contains(&format!("--dev {}", net.bridge)), "{line}");
}

#[test]
fn unreachable_or_local_target_is_an_error() {
    let net = OnLink::new(67);
    let s = &net.segment;
    // No route at all: the sender has no default route.
    let line = sender_config_error(Some(&net.sender), &["--target", "10.68.0.5"]);
    assert!(line.contains("no usable route to 10.68.0.5"), "{line}");
    assert!(line.contains("ip route get 10.68.0.5"), "{line}");
    // An unreachable route.
    net.sender
        .ip(&["route", "add", "unreachable", "10.69.0.0/24"]);
    let line = sender_config_error(Some(&net.sender), &["--target", "10.69.0.5"]);
    assert!(line.contains("no usable route to 10.69.0.5"), "{line}");
    // The sender's own address.
    let own = s.near_v4.to_string();
    let line = sender_config_error(Some(&net.sender), &["--target", &own]);
    assert!(
        line.contains(&format!("{own} is an address of this machine")),
        "{line}"
    );
    // A device that does not exist.
    let far = s.far_v4.to_string();
    let line = sender_config_error(Some(&net.sender), &["--target", &far, "--dev", "nosuch0"]);
    assert!(line.contains("no network device named nosuch0"), "{line}");
}

#[test]
fn release_without_extended_is_refused() {
    let line = sender_config_error(None, &["--target", "10.60.0.1", "--release"]);
    assert!(line.contains("--release needs --extended"), "{line}");
}
