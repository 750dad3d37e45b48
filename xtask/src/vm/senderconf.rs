//! `netcon-sniff sender-config` run inside a guest, the way a user on that machine would, and
//! netconsole loaded with exactly the line it printed (`vm/sender-init.sh`):
//!
//! - `same`: eth0 on the collector's segment; the line must name eth0 and the collector's MAC;
//! - `vlan`: VLAN 100 on eth0, where nobody answers ARP; the line must name eth0.100 and
//!   broadcast, with the VLAN and unresolved-neighbour warnings;
//! - `vlan-dev`: the same with `--dev eth0`: the source address is eth0.100's, so the frames
//!   would leave untagged; the `source_on_other_device` warning must say so;
//! - `bond`: eth0 enslaved to bond0; the line must name bond0 and the collector's MAC;
//! - `enslaved`: the same with `--dev eth0`, which must be refused naming bond0.
//!
//! Each line must load and deliver the case's record (`NCT-<run> SC <case>`) to netcon-sniff
//! beside the guest, from the case's source address (VLAN-tagged for `vlan`; later cases
//! replay the log buffer, so a record can arrive again). The crash-path
//! warning must match the kernel: `crash_report_lost` on an nbcon netconsole, else
//! `crash_report_cut` (the guest runs with `panic=-1`).

use std::{collections::BTreeMap, fs, time::Duration};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use super::{
    Env, SETTLE, guest, inguest, initramfs,
    kernel::Series,
    netns::Netns,
    observe, runid,
    sniff::{self, Output},
};

/// Modules the guest loads: the NIC, bonding and 802.1Q; netconsole per case.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "bonding", "8021q", "netconsole"];

/// What a case's sender-config output must hold.
struct Want {
    case: &'static str,
    dev: &'static str,
    /// The collector's MAC; `None`: broadcast.
    unicast: bool,
    /// Warning kinds that must be there.
    warnings: &'static [&'static str],
    /// Third octet of the source address.
    subnet: u8,
}

const CASES: [Want; 3] = [
    Want {
        case: "same",
        dev: "eth0",
        unicast: true,
        warnings: &[],
        subnet: 0,
    },
    Want {
        case: "vlan",
        dev: "eth0.100",
        unicast: false,
        warnings: &["unresolved_neighbour", "vlan_device"],
        subnet: 100,
    },
    Want {
        case: "bond",
        dev: "bond0",
        unicast: true,
        warnings: &["aggregate_device"],
        subnet: 0,
    },
];

/// Boots `env.kernel` once with the cases and checks them; the boot's duration.
pub fn run(env: &Env<'_>, net: u8) -> Result<Vec<Duration>> {
    fs::create_dir_all(&env.dir)?;
    let collector_mac = format!("02:00:00:{net:02}:00:01");
    let ns = Netns::create(net, &collector_mac, &format!("10.{net}.0.1"))?;
    let receiver = *env
        .receivers
        .iter()
        .find(|r| !r.replay && r.output == Output::Json)
        .context("no live JSON receiver")?;
    let running = sniff::start(env.sniff, &ns, receiver, None)?;
    let runid = runid()?;
    let init = fs::read(env.root.join("vm/sender-init.sh")).context("reading vm/sender-init.sh")?;
    let initramfs = env.dir.join("boot.cpio");
    let files = inguest::sniff_files(&env.sniff.path, &env.dir)?;
    initramfs::build_with(env.kernel, &init, MODULES, &files, &initramfs)?;
    let console = env.dir.join("boot.console");
    let outcome = guest::run(
        &ns,
        &guest::Boot {
            image: &env.image(),
            initramfs: &initramfs,
            mac: &format!("52:54:00:{net:02}:00:10"),
            init_env: vec![("nct_net", net.to_string()), ("nct_run", runid.clone())],
            accel: env.accel,
            timeout: Duration::from_secs(env.args.boot_timeout),
            console: console.clone(),
        },
    )?;
    std::thread::sleep(SETTLE);
    let captured = running.stop(&env.dir)?;
    let text = String::from_utf8_lossy(&fs::read(&console)?).into_owned();
    let seen = observe::from_json(&captured.stdout).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let failures = check(env.kernel.series, net, &collector_mac, &runid, &text, &seen);
    ensure!(
        failures.is_empty(),
        "{} (console: {})",
        failures.join("\n"),
        console.display()
    );
    eprintln!(
        "vm-test: {}: ok: same segment, VLAN and bond lines loaded and delivered; the VLAN's address with --dev eth0 warned; --dev on the enslaved port refused ({:.1} s)",
        env.name,
        outcome.elapsed.as_secs_f64()
    );
    Ok(vec![outcome.elapsed])
}

/// Every failure: the printed lines against [`CASES`], the records that arrived, the refusal.
fn check(
    series: Series,
    net: u8,
    collector_mac: &str,
    runid: &str,
    console: &str,
    seen: &observe::Observed,
) -> Vec<String> {
    let mut out: BTreeMap<&str, String> = BTreeMap::new();
    let mut status: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("NCT-SC-OUT"), Some(case), rest) => {
                let text = out.entry(case).or_default();
                text.push_str(rest.unwrap_or_default());
                text.push('\n');
            }
            (Some(kind @ ("NCT-SC-EXIT" | "NCT-SC-LOADED")), Some(case), Some(code)) => {
                status.insert((kind, case), code.to_owned());
            }
            _ => {}
        }
    }
    let mut failures = Vec::new();
    let crash_kind = if series == Series::Unstable {
        "crash_report_lost"
    } else {
        "crash_report_cut"
    };
    for want in &CASES {
        let case = want.case;
        let output = out.get(case).map_or("", String::as_str);
        let json: Value = match serde_json::from_str(output) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!(
                    "{case}: sender-config printed no JSON ({e}):\n{output}"
                ));
                continue;
            }
        };
        if json["dev"] != want.dev {
            failures.push(format!(
                "{case}: dev {}, expected {}",
                json["dev"], want.dev
            ));
        }
        let mac = if want.unicast {
            Value::from(collector_mac)
        } else {
            Value::Null
        };
        if json["target_mac"] != mac {
            failures.push(format!(
                "{case}: target_mac {}, expected {mac}",
                json["target_mac"]
            ));
        }
        let kinds: Vec<&str> = json["warnings"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w["kind"].as_str()).collect())
            .unwrap_or_default();
        for kind in want.warnings.iter().chain([&crash_kind]) {
            if !kinds.contains(kind) {
                failures.push(format!("{case}: no {kind} warning (warnings: {kinds:?})"));
            }
        }
        if status.get(&("NCT-SC-LOADED", case)).map(String::as_str) != Some("0") {
            failures.push(format!(
                "{case}: insmod netconsole with the printed line {} failed: {:?}",
                json["netconsole"],
                status.get(&("NCT-SC-LOADED", case))
            ));
        }
        let text = format!("NCT-{runid} SC {case}");
        let sender = format!("10.{net}.{}.10:6665", want.subnet);
        let arrived = seen
            .records()
            .filter(|r| r.text == text.as_bytes() && r.sender == sender)
            .count();
        // A later case's netconsole replays the log buffer, earlier cases' records with it.
        if arrived == 0 {
            failures.push(format!("{case}: `{text}` from {sender} never arrived"));
        }
    }
    let untagged: Value =
        serde_json::from_str(out.get("vlan-dev").map_or("", String::as_str)).unwrap_or_default();
    let warned = untagged["warnings"]
        .as_array()
        .is_some_and(|w| w.iter().any(|w| w["kind"] == "source_on_other_device"));
    if untagged["dev"] != "eth0" || !warned {
        failures.push(format!(
            "vlan-dev: --dev eth0 with eth0.100's address gave no source_on_other_device warning: {untagged}"
        ));
    }
    let refused = out.get("enslaved").map_or("", String::as_str);
    if status.get(&("NCT-SC-EXIT", "enslaved")).map(String::as_str) != Some("2")
        || !refused.contains("eth0 is enslaved to bond bond0")
        || !refused.contains("--dev bond0")
    {
        failures.push(format!(
            "enslaved: --dev eth0 was not refused naming bond0 (exit {:?}):\n{refused}",
            status.get(&("NCT-SC-EXIT", "enslaved"))
        ));
    }
    failures
}
