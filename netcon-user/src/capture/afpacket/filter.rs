//! The classic BPF socket filter of the raw backend: only UDP to the configured ports reaches
//! userspace, so netcon-sniff wakes only for netconsole frames.
//!
//! It matches the same frames as the XDP program: Ethernet, up to two VLAN tags still in the
//! frame (the kernel moves the outer tag into metadata before packet sockets see it, so zero or
//! one usually remain), IPv4 (any IHL, first fragment only) or IPv6 with UDP as the first next
//! header, and a destination port from the list.

/// Most ports matched in the kernel; with more, the filter passes all UDP and userspace checks
/// the port (a classic BPF conditional jump reaches at most 255 instructions ahead).
pub const MAX_FILTER_PORTS: usize = 64;

/// Bytes of a matching frame the filter passes: all of it.
const ACCEPT_LEN: u32 = 0x4_0000;

// Opcodes, from include/uapi/linux/filter.h and bpf_common.h.
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// Where a jump goes: to the next instruction, or to a label resolved when the program is done.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Next,
    Label(Label),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Tag1,
    Tag2,
    Ip(usize),
    V4(usize),
    V6(usize),
    Ports,
    Accept,
    Reject,
}

enum Insn {
    Plain(u16, u32),
    Jump {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Always(Label),
    Mark(Label),
}

/// The filter program for `ports`.
///
/// # Panics
/// Never for any port list: jumps stay in range because the port list is capped at
/// [`MAX_FILTER_PORTS`].
#[must_use]
pub fn program(ports: &[u16]) -> Vec<libc::sock_filter> {
    use Label::{Accept, Ip, Ports, Reject, Tag1, Tag2, V4, V6};
    use Target::{Label as L, Next};
    const VLAN_TPIDS: [u32; 2] = [0x8100, 0x88a8];
    let mut p = Vec::new();
    let ethertype_at = |p: &mut Vec<Insn>, offset: u32, tagged: Label, untagged: Label| {
        p.push(Insn::Plain(LD_H_ABS, offset));
        p.push(Insn::Jump {
            code: JMP_JEQ_K,
            k: VLAN_TPIDS[0],
            jt: L(tagged),
            jf: Next,
        });
        p.push(Insn::Jump {
            code: JMP_JEQ_K,
            k: VLAN_TPIDS[1],
            jt: L(tagged),
            jf: L(untagged),
        });
    };
    ethertype_at(&mut p, 12, Tag1, Ip(14));
    p.push(Insn::Mark(Tag1));
    ethertype_at(&mut p, 16, Tag2, Ip(18));
    p.push(Insn::Mark(Tag2));
    p.push(Insn::Plain(LD_H_ABS, 20));
    p.push(Insn::Always(Ip(22)));
    for l3 in [14usize, 18, 22] {
        let k = |offset: usize| u32::try_from(l3 + offset).unwrap_or(u32::MAX);
        p.push(Insn::Mark(Ip(l3)));
        p.push(Insn::Jump {
            code: JMP_JEQ_K,
            k: 0x0800,
            jt: L(V4(l3)),
            jf: Next,
        });
        p.push(Insn::Jump {
            code: JMP_JEQ_K,
            k: 0x86dd,
            jt: L(V6(l3)),
            jf: L(Reject),
        });
        p.push(Insn::Mark(V4(l3)));
        p.push(Insn::Plain(LD_B_ABS, k(9)));
        p.push(Insn::Jump {
            code: JMP_JEQ_K,
            k: 17,
            jt: Next,
            jf: L(Reject),
        });
        p.push(Insn::Plain(LD_H_ABS, k(6)));
        p.push(Insn::Jump {
            code: JMP_JSET_K,
            k: 0x1fff,
            jt: L(Reject),
            jf: Next,
        });
        p.push(Insn::Plain(LDX_B_MSH, k(0)));
        p.push(Insn::Plain(LD_H_IND, k(2)));
        p.push(Insn::Always(Ports));
        p.push(Insn::Mark(V6(l3)));
        p.push(Insn::Plain(LD_B_ABS, k(6)));
        p.push(Insn::Jump {
            code: JMP_JEQ_K,
            k: 17,
            jt: Next,
            jf: L(Reject),
        });
        p.push(Insn::Plain(LD_H_ABS, k(40 + 2)));
        p.push(Insn::Always(Ports));
    }
    p.push(Insn::Mark(Ports));
    if ports.len() > MAX_FILTER_PORTS {
        p.push(Insn::Always(Accept));
    } else {
        for (i, &port) in ports.iter().enumerate() {
            let last = i + 1 == ports.len();
            p.push(Insn::Jump {
                code: JMP_JEQ_K,
                k: u32::from(port),
                jt: L(Accept),
                jf: if last { L(Reject) } else { Next },
            });
        }
        if ports.is_empty() {
            p.push(Insn::Always(Reject));
        }
    }
    p.push(Insn::Mark(Accept));
    p.push(Insn::Plain(RET_K, ACCEPT_LEN));
    p.push(Insn::Mark(Reject));
    p.push(Insn::Plain(RET_K, 0));
    assemble(&p)
}

/// Resolves labels into relative jumps.
fn assemble(program: &[Insn]) -> Vec<libc::sock_filter> {
    let mut position = Vec::new();
    let mut index = 0usize;
    for insn in program {
        match insn {
            Insn::Mark(label) => position.push((*label, index)),
            _ => index += 1,
        }
    }
    let at = |label: Label| {
        position
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, i)| *i)
    };
    let mut out = Vec::with_capacity(index);
    for insn in program {
        let here = out.len();
        let relative = |target: Target| match target {
            Target::Next => 0,
            Target::Label(label) => u8::try_from(at(label) - here - 1).unwrap_or(u8::MAX),
        };
        match *insn {
            Insn::Mark(_) => {}
            Insn::Plain(code, k) => out.push(libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            }),
            Insn::Jump { code, k, jt, jf } => out.push(libc::sock_filter {
                code,
                jt: relative(jt),
                jf: relative(jf),
                k,
            }),
            Insn::Always(label) => out.push(libc::sock_filter {
                code: JMP_JA,
                jt: 0,
                jf: 0,
                k: u32::try_from(at(label) - here - 1).unwrap_or(u32::MAX),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the opcodes the program uses, to test it on real frames.
    fn run(program: &[libc::sock_filter], frame: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |i: usize| frame.get(i).copied();
        let half = |i: usize| Some(u16::from_be_bytes([byte(i)?, byte(i + 1)?]));
        loop {
            let insn = &program[pc];
            pc += 1;
            let k = insn.k as usize;
            match insn.code {
                LD_H_ABS => match half(k) {
                    Some(v) => a = v.into(),
                    None => return 0,
                },
                LD_B_ABS => match byte(k) {
                    Some(v) => a = v.into(),
                    None => return 0,
                },
                LD_H_IND => match half(x as usize + k) {
                    Some(v) => a = v.into(),
                    None => return 0,
                },
                LDX_B_MSH => match byte(k) {
                    Some(v) => x = 4 * u32::from(v & 0xf),
                    None => return 0,
                },
                JMP_JA => pc += k,
                JMP_JEQ_K | JMP_JSET_K => {
                    let taken = if insn.code == JMP_JEQ_K {
                        a == insn.k
                    } else {
                        a & insn.k != 0
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn frame(vlans: usize, v6: bool, port: u16, ip_options: bool) -> Vec<u8> {
        use etherparse::{PacketBuilder, VlanId};
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6]);
        let id = |n| VlanId::try_new(n).unwrap();
        let mut out = Vec::new();
        macro_rules! finish {
            ($step:expr) => {{
                let step = if v6 {
                    $step.ipv6([0xfd; 16], [0xfd; 16], 32).udp(6665, port)
                } else if ip_options {
                    let mut ip = etherparse::Ipv4Header::new(
                        0,
                        64,
                        etherparse::IpNumber::UDP,
                        [10, 1, 0, 10],
                        [10, 1, 0, 1],
                    )
                    .unwrap();
                    ip.options = [1u8, 1, 1, 1][..].try_into().unwrap();
                    $step
                        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                        .udp(6665, port)
                } else {
                    $step
                        .ipv4([10, 1, 0, 10], [10, 1, 0, 1], 64)
                        .udp(6665, port)
                };
                step.write(&mut out, b"6,1,2,-;x\n").unwrap();
            }};
        }
        match vlans {
            0 => finish!(eth),
            1 => finish!(eth.single_vlan(id(5))),
            _ => finish!(eth.double_vlan(id(5), id(6))),
        }
        out
    }

    #[test]
    fn accepts_configured_ports_at_every_depth() {
        let program = program(&[6666, 6667]);
        for vlans in 0..=2 {
            for v6 in [false, true] {
                for port in [6666, 6667] {
                    let f = frame(vlans, v6, port, false);
                    assert_eq!(
                        run(&program, &f),
                        ACCEPT_LEN,
                        "vlans={vlans} v6={v6} port={port}"
                    );
                }
                assert_eq!(run(&program, &frame(vlans, v6, 7777, false)), 0);
            }
            assert_eq!(run(&program, &frame(vlans, false, 6666, true)), ACCEPT_LEN);
            assert_eq!(run(&program, &frame(vlans, false, 7777, true)), 0);
        }
    }

    #[test]
    fn rejects_non_udp_and_later_fragments() {
        let program = program(&[6666]);
        let mut f = frame(0, false, 6666, false);
        f[14 + 9] = 6; // TCP
        assert_eq!(run(&program, &f), 0);
        let mut f = frame(0, false, 6666, false);
        f[14 + 7] = 1; // fragment offset 8 bytes
        assert_eq!(run(&program, &f), 0);
        assert_eq!(run(&program, &f[..30]), 0);
        let mut arp = frame(0, false, 6666, false);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(run(&program, &arp), 0);
    }

    #[test]
    fn many_ports_pass_all_udp() {
        let ports: Vec<u16> = (1000..1000 + 100).collect();
        let program = program(&ports);
        assert_eq!(run(&program, &frame(1, true, 9, false)), ACCEPT_LEN);
        let mut f = frame(0, false, 6666, false);
        f[14 + 9] = 6;
        assert_eq!(run(&program, &f), 0);
    }

    #[test]
    fn jumps_stay_in_range() {
        let ports: Vec<u16> = (1..).take(MAX_FILTER_PORTS).collect();
        let program = program(&ports);
        for (i, insn) in program.iter().enumerate() {
            if insn.code == JMP_JEQ_K || insn.code == JMP_JSET_K {
                assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < program.len());
            }
        }
    }
}
