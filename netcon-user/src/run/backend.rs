//! Opening the capture: the configured source, and promiscuous mode if asked.

use super::RunError;
use crate::{
    capture::{
        Backend, CaptureError, afpacket::RawCapture, pcap::PcapFileCapture, promisc::PromiscGuard,
        xdp::XdpCapture,
    },
    config::{BackendChoice, Config, Source},
};

/// Opens the configured source and says on stderr what it listens on.
pub(super) fn open_backend(config: &Config) -> Result<Backend, RunError> {
    let ports = config
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if let Source::File(path) = &config.source {
        let file = PcapFileCapture::open(path)?;
        eprintln!("reading {}, ports {ports}", path.display());
        return Ok(Backend::File(file));
    }
    let xdp = match config.backend {
        BackendChoice::Raw => None,
        BackendChoice::Xdp => Some(Err(())),
        BackendChoice::Auto => Some(Ok(())),
    };
    if let Some(fallback_allowed) = xdp {
        match XdpCapture::open(
            &config.interfaces,
            &config.ports,
            config.xdp_mode.into(),
            config.ring_bytes,
            config.xdp_timestamps,
        ) {
            Ok(capture) => {
                for (name, mode) in capture.attached() {
                    eprintln!(
                        "listening on {name} (xdp, {} mode), ports {ports}",
                        mode.as_str()
                    );
                }
                return Ok(Backend::Xdp(Box::new(capture)));
            }
            Err(error) if fallback_allowed.is_ok() => {
                eprintln!("netcon-sniff: XDP unavailable: {error}; using raw sockets");
            }
            Err(error) => return Err(CaptureError::from(error).into()),
        }
    }
    let capture = RawCapture::open(
        &config.interfaces,
        &config.ports,
        config.ring_bytes,
        config.budget.clone(),
    )
    .map_err(CaptureError::from)?;
    for interface in &config.interfaces {
        eprintln!("listening on {} (raw), ports {ports}", interface.name);
    }
    Ok(Backend::Raw(capture))
}

/// Puts the interfaces in promiscuous mode if asked, for as long as the guards live.
pub(super) fn promisc_guards(config: &Config) -> Result<Vec<PromiscGuard>, RunError> {
    if !config.promisc {
        return Ok(Vec::new());
    }
    let guards = config
        .interfaces
        .iter()
        .map(|i| PromiscGuard::new(&i.name, i.ifindex))
        .collect::<Result<_, _>>()?;
    Ok(guards)
}
