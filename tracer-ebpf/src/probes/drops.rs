//! TCP segments the kernel throws away, with its reason: `kfree_skb` (Linux
//! 5.17+ gives the reason). The hook sees every dropped packet of the host
//! (consumed packets go to `consume_skb`), so the cost follows drops, not
//! traffic; all but TCP over IPv4/IPv6 stop after three reads.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{AF_INET, AF_INET6, kind};

use crate::{
    emit::{emit, read_failed, tracing},
    read::read,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
/// `network_header` when unset (`(typeof(skb->network_header))~0U`).
const UNSET: u16 = 0xffff;

program! {
    /// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason
    /// reason[, struct sock *rx_sk])`
    #[btf_tracepoint(function = "kfree_skb")]
    pub fn tcptrace_drop(BtfTracePointContext) -> i32 = try_drop;
}

#[inline(always)]
fn try_drop(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    let purge = config!(drop_reason_queue_purge);
    if purge != 0 && reason == purge as u64 {
        return Ok(0);
    }
    let protocol: u16 = read(skb, config!(skb_protocol)).map_err(read_failed)?;
    let family = match u16::from_be(protocol) {
        ETH_P_IP => AF_INET,
        ETH_P_IPV6 => AF_INET6,
        _ => return Ok(0),
    };
    let network_header: u16 = read(skb, config!(skb_network_header)).map_err(read_failed)?;
    if network_header == UNSET {
        return Ok(0);
    }
    let head: u64 = read(skb, config!(skb_head)).map_err(read_failed)?;
    let ip = head + network_header as u64;
    // The TCP header: after the IPv4 header's IHL words, or right after the
    // fixed IPv6 header (extension headers are left out: rare on TCP).
    let tcp = if family == AF_INET {
        let [version_ihl, _]: [u8; 2] = read(ip, 0).map_err(read_failed)?;
        let proto: u8 = read(ip, 9).map_err(read_failed)?;
        if proto != IPPROTO_TCP {
            return Ok(0);
        }
        ip + ((version_ihl & 0x0f) as u64) * 4
    } else {
        let next_header: u8 = read(ip, 6).map_err(read_failed)?;
        if next_header != IPPROTO_TCP {
            return Ok(0);
        }
        ip + 40
    };
    emit(|event| {
        event.kind = kind::DROP;
        event.family = family;
        event.set_drop_reason(reason as u32);
        if family == AF_INET {
            let saddr: [u8; 4] = read(ip, 12)?;
            let daddr: [u8; 4] = read(ip, 16)?;
            event.saddr[..4].copy_from_slice(&saddr);
            event.daddr[..4].copy_from_slice(&daddr);
        } else {
            event.saddr = read(ip, 8)?;
            event.daddr = read(ip, 24)?;
        }
        let ports: [u16; 2] = read(tcp, 0)?;
        event.sport = u16::from_be(ports[0]);
        event.dport = u16::from_be(ports[1]);
        event.set_tcp_flags(read(tcp, 13)?);
        event.netns = packet_netns(skb)?;
        Ok(())
    });
    Ok(0)
}

/// The namespace the packet was in: its device's, else its socket's.
#[inline(always)]
fn packet_netns(skb: u64) -> Result<u32, i32> {
    let dev: u64 = read(skb, config!(skb_dev))?;
    let net: u64 = if dev != 0 {
        read(dev, config!(dev_nd_net))?
    } else {
        let sk: u64 = read(skb, config!(skb_sk))?;
        if sk == 0 {
            return Ok(0);
        }
        read(sk, config!(skc_net))?
    };
    if net == 0 {
        return Ok(0);
    }
    read(net, config!(net_ns_inum))
}
