//! What `sender-config` prints: the `netconsole=` string, the commands that use it, as text to
//! paste or as one JSON object.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use super::plan::{MacAddr, NeighbourState, SenderConfig, Warning};

/// Where configfs is mounted (`Documentation/networking/netconsole.rst`).
pub const CONFIGFS_ROOT: &str = "/sys/kernel/config/netconsole";

/// The two lines that make a sender log everything and show that it works.
pub const TEST_COMMANDS: [&str; 2] = ["dmesg -n 8", "echo '<6>netcon test' > /dev/kmsg"];

/// How to tell that the target did not start. Not `network logging started`: 6.12 and later
/// print it even when the only target failed (`drivers/net/netconsole.c`); these lines are the
/// failure itself, on every kernel.
pub const DMESG_CHECK: &str = "\
# If nothing arrives: `dmesg | grep -E 'Netpoll setup failed|Not enabling netconsole|netpoll'`
# names what went wrong (6.12 and later print \"network logging started\" even when it failed).
";

/// Width that warning comments are wrapped to, in columns.
const WRAP_COLUMNS: usize = 100;

/// `word` as one shell word: as it is when it holds nothing the shell would interpret, else
/// single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl SenderConfig {
    /// The option string, `[+][r]SRCPORT@SRCIP/DEV,TGTPORT@TGTIP/[TGTMAC]`
    /// (`Documentation/networking/netconsole.rst`; parsed by `netpoll_parse_options()` in
    /// `net/core/netpoll.c`, which takes IPv6 addresses as they are, without brackets). An
    /// unresolved MAC is left empty: the kernel then broadcasts.
    #[must_use]
    pub fn netconsole_param(&self) -> String {
        format!(
            "{plus}{r}{src_port}@{src_ip}/{dev},{target_port}@{target}/{mac}",
            plus = if self.extended { "+" } else { "" },
            r = if self.release { "r" } else { "" },
            src_port = self.src_port,
            src_ip = self.src_ip,
            dev = self.dev,
            target_port = self.target_port,
            target = self.target,
            mac = self.target_mac.map(|m| m.to_string()).unwrap_or_default(),
        )
    }

    /// `modprobe netconsole netconsole=...`.
    #[must_use]
    pub fn modprobe_command(&self) -> String {
        format!(
            "modprobe netconsole {}",
            shell_word(&format!("netconsole={}", self.netconsole_param()))
        )
    }

    /// The kernel command-line form, for a kernel with netconsole built in.
    #[must_use]
    pub fn kernel_cmdline(&self) -> String {
        format!("netconsole={}", self.netconsole_param())
    }

    /// The configfs target directory.
    #[must_use]
    pub fn configfs_dir(&self) -> String {
        format!("{CONFIGFS_ROOT}/{}", self.name)
    }

    /// Shell commands that create the same target at run time through configfs.
    #[must_use]
    pub fn configfs_commands(&self) -> Vec<String> {
        let dir = self.configfs_dir();
        let mut commands = vec![
            // configfs appears with the module; mounting is a no-op where systemd did it.
            "modprobe netconsole".to_owned(),
            "mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config"
                .to_owned(),
            format!("mkdir {}", shell_word(&dir)),
        ];
        let mut set = |file: &str, value: String| {
            commands.push(format!(
                "echo {} > {}",
                shell_word(&value),
                shell_word(&format!("{dir}/{file}"))
            ));
        };
        set("dev_name", self.dev.clone());
        set("local_ip", self.src_ip.to_string());
        set("local_port", self.src_port.to_string());
        set("remote_ip", self.target.to_string());
        set("remote_port", self.target_port.to_string());
        set(
            "remote_mac",
            self.target_mac.unwrap_or(MacAddr::BROADCAST).to_string(),
        );
        // `release` is checked against `extended` when the target is enabled, so order
        // matters only in that both come before `enabled`.
        if self.extended {
            set("extended", "1".to_owned());
        }
        if self.release {
            set("release", "1".to_owned());
        }
        set("enabled", "1".to_owned());
        commands
    }

    /// Everything, as text to read and paste: comments start with `#`, so the whole output
    /// is also a valid shell script (running it would do all three ways, though: pick one).
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# netconsole from this machine to {}",
            self.target_with_port()
        );
        let _ = writeln!(
            out,
            "#   out {}{}, from {}:{}",
            self.dev,
            self.dev_mac.map(|m| format!(" ({m})")).unwrap_or_default(),
            self.src_ip,
            self.src_port
        );
        let hop = match self.gateway {
            Some(gw) => format!("the gateway {gw}"),
            None => format!("{} itself (on-link)", self.target),
        };
        let mac = match (self.target_mac, self.neighbour_state) {
            (Some(mac), Some(state)) => format!("{mac} (neighbour {state})"),
            (Some(mac), None) => mac.to_string(),
            (None, _) => "unresolved: broadcast ff:ff:ff:ff:ff:ff".to_owned(),
        };
        let _ = writeln!(out, "#   next hop {hop}, MAC {mac}");
        let _ = writeln!(
            out,
            "#   format: {}",
            match (self.extended, self.release) {
                (false, _) => "plain",
                (true, false) => "extended",
                (true, true) => "extended, with the kernel release",
            }
        );
        for warning in &self.warnings {
            out.push_str("#\n");
            wrap_comment(&mut out, &format!("warning: {}", warning.message));
        }
        out.push('\n');
        out.push_str("# Load netconsole with this target (`modprobe -r netconsole` first if it is loaded):\n");
        let _ = writeln!(out, "{}\n", self.modprobe_command());
        out.push_str(
            "# Or at boot, on the kernel command line (netconsole built in; as a module, write\n\
             # netconsole.netconsole=... and have it loaded at boot):\n",
        );
        let _ = writeln!(out, "{}\n", self.kernel_cmdline());
        out.push_str("# Or at run time through configfs (CONFIG_NETCONSOLE_DYNAMIC):\n");
        for command in self.configfs_commands() {
            let _ = writeln!(out, "{command}");
        }
        out.push('\n');
        out.push_str("# Then send every kernel message to the console, and a test line:\n");
        for command in TEST_COMMANDS {
            let _ = writeln!(out, "{command}");
        }
        out.push_str(DMESG_CHECK);
        out
    }

    fn target_with_port(&self) -> String {
        match self.target {
            IpAddr::V4(ip) => format!("{ip}:{}", self.target_port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.target_port),
        }
    }

    /// Everything, as one JSON object (`--format json`).
    #[must_use]
    pub fn to_json(&self) -> String {
        let json = Json {
            target: self.target,
            target_port: self.target_port,
            target_mac: self.target_mac,
            broadcast: self.target_mac.is_none(),
            gateway: self.gateway,
            next_hop: self.next_hop,
            neighbour_state: self.neighbour_state,
            waited_ms: self.waited_ms,
            src_ip: self.src_ip,
            src_port: self.src_port,
            dev: &self.dev,
            dev_mac: self.dev_mac,
            extended: self.extended,
            release: self.release,
            name: &self.name,
            netconsole: self.netconsole_param(),
            modprobe: self.modprobe_command(),
            kernel_cmdline: self.kernel_cmdline(),
            configfs_dir: self.configfs_dir(),
            configfs: self.configfs_commands(),
            test: TEST_COMMANDS.to_vec(),
            warnings: &self.warnings,
        };
        // Serialising plain strings, numbers and addresses cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Json<'a> {
    target: IpAddr,
    target_port: u16,
    /// `null` when unresolved.
    target_mac: Option<MacAddr>,
    broadcast: bool,
    gateway: Option<IpAddr>,
    next_hop: IpAddr,
    neighbour_state: Option<NeighbourState>,
    waited_ms: u64,
    src_ip: IpAddr,
    src_port: u16,
    dev: &'a str,
    dev_mac: Option<MacAddr>,
    extended: bool,
    release: bool,
    name: &'a str,
    netconsole: String,
    modprobe: String,
    kernel_cmdline: String,
    configfs_dir: String,
    configfs: Vec<String>,
    test: Vec<&'static str>,
    warnings: &'a [Warning],
}

/// Appends `text` as `# ` comment lines of at most [`WRAP_COLUMNS`] columns (a longer word
/// stays whole), continuation lines indented.
fn wrap_comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    let mut first = true;
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WRAP_COLUMNS && line.len() > 4 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#  ");
            first = false;
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 || first {
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender_config::plan::{Warning, WarningKind};

    fn config() -> SenderConfig {
        SenderConfig {
            name: "netcon".into(),
            extended: false,
            release: false,
            src_ip: "10.60.0.10".parse().unwrap(),
            src_port: 6665,
            dev: "eth0".into(),
            dev_mac: Some(MacAddr([2, 0, 0, 0, 0x3c, 0x10])),
            target: "10.60.0.1".parse().unwrap(),
            target_port: 6666,
            gateway: None,
            next_hop: "10.60.0.1".parse().unwrap(),
            neighbour_state: Some(NeighbourState::Reachable),
            target_mac: Some(MacAddr([2, 0, 0, 0, 0x3c, 0x01])),
            waited_ms: 0,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn param_string() {
        let mut c = config();
        assert_eq!(
            c.netconsole_param(),
            "6665@10.60.0.10/eth0,6666@10.60.0.1/02:00:00:00:3c:01"
        );
        c.extended = true;
        assert_eq!(
            c.netconsole_param(),
            "+6665@10.60.0.10/eth0,6666@10.60.0.1/02:00:00:00:3c:01"
        );
        c.release = true;
        c.target_mac = None;
        assert_eq!(
            c.netconsole_param(),
            "+r6665@10.60.0.10/eth0,6666@10.60.0.1/"
        );
    }

    #[test]
    fn ipv6_param_has_no_brackets() {
        let mut c = config();
        c.src_ip = "fd00:60::10".parse().unwrap();
        c.target = "fd00:60::1".parse().unwrap();
        c.target_port = 7000;
        assert_eq!(
            c.netconsole_param(),
            "6665@fd00:60::10/eth0,7000@fd00:60::1/02:00:00:00:3c:01"
        );
        assert!(c.to_text().contains("to [fd00:60::1]:7000"));
    }

    #[test]
    fn commands() {
        let mut c = config();
        c.extended = true;
        c.release = true;
        assert_eq!(
            c.modprobe_command(),
            "modprobe netconsole netconsole=+r6665@10.60.0.10/eth0,6666@10.60.0.1/02:00:00:00:3c:01"
        );
        assert_eq!(
            c.kernel_cmdline(),
            "netconsole=+r6665@10.60.0.10/eth0,6666@10.60.0.1/02:00:00:00:3c:01"
        );
        let d = "/sys/kernel/config/netconsole/netcon";
        assert_eq!(
            c.configfs_commands()[2..],
            [
                format!("mkdir {d}"),
                format!("echo eth0 > {d}/dev_name"),
                format!("echo 10.60.0.10 > {d}/local_ip"),
                format!("echo 6665 > {d}/local_port"),
                format!("echo 10.60.0.1 > {d}/remote_ip"),
                format!("echo 6666 > {d}/remote_port"),
                format!("echo 02:00:00:00:3c:01 > {d}/remote_mac"),
                format!("echo 1 > {d}/extended"),
                format!("echo 1 > {d}/release"),
                format!("echo 1 > {d}/enabled"),
            ]
        );
        c.extended = false;
        c.release = false;
        c.target_mac = None;
        let commands = c.configfs_commands();
        assert!(commands.contains(&format!("echo ff:ff:ff:ff:ff:ff > {d}/remote_mac")));
        assert!(!commands.iter().any(|c| c.contains("/extended")));
        assert!(!commands.iter().any(|c| c.contains("/release")));
        assert_eq!(commands.last().unwrap(), &format!("echo 1 > {d}/enabled"));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_word("eth0"), "eth0");
        assert_eq!(shell_word("we ird"), "'we ird'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        let mut c = config();
        c.dev = "my dev".into();
        assert!(
            c.configfs_commands()
                .contains(&"echo 'my dev' > /sys/kernel/config/netconsole/netcon/dev_name".into())
        );
        assert!(c.modprobe_command().ends_with('\''));
    }

    #[test]
    fn text_has_every_part_and_comments_warnings() {
        let mut c = config();
        c.warnings.push(Warning {
            kind: WarningKind::DeviceDown,
            message: "word ".repeat(60),
        });
        let text = c.to_text();
        assert!(text.contains(&format!("\n{}\n", c.modprobe_command())));
        assert!(text.contains(&format!("\n{}\n", c.kernel_cmdline())));
        for command in c.configfs_commands() {
            assert!(text.contains(&format!("\n{command}\n")), "{command}");
        }
        assert!(text.ends_with(&format!(
            "dmesg -n 8\necho '<6>netcon test' > /dev/kmsg\n{DMESG_CHECK}"
        )));
        assert!(text.contains("Netpoll setup failed|Not enabling netconsole"));
        assert!(text.contains("# warning: word word"));
        for line in text.lines() {
            assert!(
                line.len() <= WRAP_COLUMNS + 10 || !line.starts_with('#'),
                "{line}"
            );
        }
        // Every line is a comment, blank, or one of the commands.
        let warning_lines = text.lines().filter(|l| l.starts_with("#   word")).count();
        assert!(warning_lines >= 2, "{text}");
    }

    #[test]
    fn json_has_every_field() {
        let mut c = config();
        c.target_mac = None;
        c.neighbour_state = Some(NeighbourState::Failed);
        c.warnings.push(Warning {
            kind: WarningKind::UnresolvedNeighbour,
            message: "m".into(),
        });
        let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(v["target"], "10.60.0.1");
        assert_eq!(v["target_port"], 6666);
        assert_eq!(v["target_mac"], serde_json::Value::Null);
        assert_eq!(v["broadcast"], true);
        assert_eq!(v["neighbour_state"], "failed");
        assert_eq!(v["src_ip"], "10.60.0.10");
        assert_eq!(v["dev"], "eth0");
        assert_eq!(v["dev_mac"], "02:00:00:00:3c:10");
        assert_eq!(v["netconsole"], "6665@10.60.0.10/eth0,6666@10.60.0.1/");
        assert_eq!(v["configfs"].as_array().unwrap().len(), 10);
        assert_eq!(v["test"][0], "dmesg -n 8");
        assert_eq!(v["warnings"][0]["kind"], "unresolved_neighbour");
        assert_eq!(v["warnings"][0]["message"], "m");
    }
}
