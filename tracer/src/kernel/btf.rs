//! Struct offsets of the running kernel, read from its BTF
//! (`/sys/kernel/btf/vmlinux`) at load time: aya has no CO-RE for Rust
//! programs, and hard-coding one kernel's layout would silently misread
//! every other kernel.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Member, Struct, Type};
use tracer_common::{Field, KernelConfig};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

/// Where a (possibly nested) member lives inside a struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub bit_offset: u32,
    /// Width in bits: the bitfield size, or the member type's size.
    pub bits: u32,
    pub is_bitfield: bool,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot parse kernel BTF {}", path.display()))?;
        Ok(Self { btf })
    }

    fn find_struct(&self, name: &str) -> Result<Struct> {
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("kernel BTF has no struct {name}"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut ty: Type) -> Result<Type> {
        for _ in 0..32 {
            match &ty {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let inner = ty.as_btf_type().ok_or_else(|| anyhow!("unresolvable BTF type"))?;
                    ty = self.btf.resolve_chained_type(inner).map_err(|e| anyhow!("{e}"))?;
                }
                _ => return Ok(ty),
            }
        }
        bail!("BTF type chain too long")
    }

    fn member_type(&self, member: &Member) -> Result<Type> {
        let ty = self.btf.resolve_chained_type(member).map_err(|e| anyhow!("{e}"))?;
        self.resolve(ty)
    }

    fn size_bits(&self, ty: &Type) -> Result<u32> {
        let bytes = match ty {
            Type::Int(i) => i.size(),
            Type::Ptr(_) => 8,
            Type::Enum(e) => e.size(),
            Type::Enum64(e) => e.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Array(a) => {
                let elem = self.btf.resolve_chained_type(a).map_err(|e| anyhow!("{e}"))?;
                let elem = self.resolve(elem)?;
                a.len() * (self.size_bits(&elem)? as usize / 8)
            }
            other => bail!("no size for BTF {}", other.name()),
        };
        Ok(bytes as u32 * 8)
    }

    /// Finds `name` among `members`, descending into anonymous structs/unions.
    fn find_member(&self, members: &[Member], name: &str) -> Result<Option<(Located, Type)>> {
        for member in members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let ty = self.member_type(member)?;
            if member_name == name {
                let bits = match member.bitfield_size() {
                    Some(size) if size > 0 => size,
                    _ => self.size_bits(&ty)?,
                };
                let located = Located {
                    bit_offset: member.bit_offset(),
                    bits,
                    is_bitfield: matches!(member.bitfield_size(), Some(s) if s > 0),
                };
                return Ok(Some((located, ty)));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) = &ty
                && let Some((mut located, ty)) = self.find_member(&inner.members, name)?
            {
                located.bit_offset += member.bit_offset();
                return Ok(Some((located, ty)));
            }
        }
        Ok(None)
    }

    /// Locates `path` (`"sk_lock.owned"`) inside `struct strukt`.
    pub fn locate(&self, strukt: &str, path: &str) -> Result<Located> {
        let mut members = self.find_struct(strukt)?.members;
        let mut offset = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (located, ty) = self
                .find_member(&members, part)?
                .ok_or_else(|| anyhow!("kernel BTF: struct {strukt} has no member {path}"))?;
            offset += located.bit_offset;
            if parts.peek().is_none() {
                return Ok(Located { bit_offset: offset, ..located });
            }
            members = match ty {
                Type::Struct(s) | Type::Union(s) => s.members,
                _ => bail!("kernel BTF: {strukt}.{path}: {part} is not a struct"),
            };
        }
        bail!("empty member path")
    }

    /// Byte offset of a plain (byte-aligned, non-bitfield) member.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<u32> {
        let located = self.locate(strukt, path)?;
        if located.is_bitfield || located.bit_offset % 8 != 0 {
            bail!("kernel BTF: {strukt}.{path} is a bitfield");
        }
        Ok(located.bit_offset / 8)
    }

    /// A member of at most 32 bits, bitfield or not, as a [`Field`].
    pub fn field(&self, strukt: &str, path: &str) -> Result<Field> {
        let located = self.locate(strukt, path)?;
        let byte = located.bit_offset / 8;
        let shift = located.bit_offset % 8;
        if located.bits + shift > 32 {
            bail!("kernel BTF: {strukt}.{path} is wider than 32 bits");
        }
        Ok(Field { byte, shift: shift as u16, bits: located.bits as u16 })
    }

    /// What tcptrace cannot run without and this kernel lacks, one phrase
    /// each (empty: nothing). Read from the kernel's own BPF enums in its BTF,
    /// whose members name every map type, attach type and helper it has.
    pub fn missing_essentials(&self) -> Vec<&'static str> {
        ESSENTIALS
            .iter()
            .filter(|(enumeration, member, _)| !self.has_enumerator(enumeration, member))
            .map(|(_, _, what)| *what)
            .collect()
    }

    fn has_enumerator(&self, enumeration: &str, member: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(enumeration) else { return false };
        types.iter().any(|t| match t {
            Type::Enum(e) => e.members.iter().any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == member)),
            _ => false,
        })
    }

    /// The value of `member` in the kernel's `enum enumeration`.
    pub fn enumerator(&self, enumeration: &str, member: &str) -> Result<u32> {
        let types = self.btf.resolve_types_by_name(enumeration).unwrap_or_default();
        types
            .iter()
            .find_map(|t| match t {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == member))
                    .map(|m| m.val()),
                _ => None,
            })
            .ok_or_else(|| anyhow!("kernel BTF: enum {enumeration} has no {member}"))
    }

    /// Every member of enum `enumeration` as (value, name); empty when the
    /// kernel has no such enum.
    pub fn enumerators(&self, enumeration: &str) -> Vec<(u32, String)> {
        let types = self.btf.resolve_types_by_name(enumeration).unwrap_or_default();
        types
            .iter()
            .find_map(|t| match t {
                Type::Enum(e) => Some(
                    e.members
                        .iter()
                        .filter_map(|m| Some((m.val(), self.btf.resolve_name(m).ok()?.to_string())))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Whether BPF memory is charged to RLIMIT_MEMLOCK (before Linux 5.11,
    /// which charges the memory cgroup instead): the charge's own type,
    /// `struct bpf_map_memory`, is in its BTF.
    pub fn charges_memlock(&self) -> bool {
        self.btf.resolve_types_by_name("bpf_map_memory").is_ok_and(|types| !types.is_empty())
    }

    /// Whether tracing programs may call `bpf_get_socket_cookie` (Linux 5.12+):
    /// the kernel function behind it for them, `bpf_get_socket_ptr_cookie`,
    /// is in its BTF.
    pub fn has_socket_cookie_helper(&self) -> bool {
        self.btf
            .resolve_types_by_name("bpf_get_socket_ptr_cookie")
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }

    /// Number of arguments of a raw/BTF tracepoint (without the context
    /// pointer), from the `btf_trace_<name>` typedef. None if unknown.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let types = self.btf.resolve_types_by_name(&format!("btf_trace_{name}")).ok()?;
        let typedef = types.into_iter().find(|t| matches!(t, Type::Typedef(_)))?;
        let ptr = self.resolve(typedef).ok()?;
        let Type::Ptr(ptr) = ptr else { return None };
        let proto = self.btf.resolve_chained_type(&ptr).ok()?;
        let Type::FuncProto(proto) = proto else { return None };
        proto.parameters.len().checked_sub(1)
    }
}

/// The oldest kernel tcptrace runs on: the newest of what it needs.
pub const MINIMUM_KERNEL: &str = "Linux 5.9";

/// What every kernel program needs: (BTF enum, member, what it is).
const ESSENTIALS: &[(&str, &str, &str)] = &[
    ("bpf_map_type", "BPF_MAP_TYPE_RINGBUF", "BPF ring buffers (Linux 5.8)"),
    ("bpf_attach_type", "BPF_TRACE_RAW_TP", "BTF tracepoints, tp_btf (Linux 5.5)"),
    ("bpf_func_id", "BPF_FUNC_probe_read_kernel", "the bpf_probe_read_kernel helper (Linux 5.5)"),
    ("bpf_func_id", "BPF_FUNC_jiffies64", "the bpf_jiffies64 helper (Linux 5.5)"),
    // The state program's typed socket (read/TcpSock).
    ("bpf_func_id", "BPF_FUNC_skc_to_tcp_sock", "the bpf_skc_to_tcp_sock helper (Linux 5.9)"),
];

/// The one-line error for a kernel that lacks `missing` (see
/// [`KernelBtf::missing_essentials`]).
pub fn too_old(missing: &[&str]) -> String {
    format!("this kernel lacks {}: tcptrace needs {MINIMUM_KERNEL} or newer", missing.join(", "))
}

/// Timer callbacks by address, from `/proc/kallsyms` (0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerFunctions {
    pub tw_timer_handler: u64,
    pub reqsk_timer_handler: u64,
}

/// Every offset the kernel programs use. Fails with the first member the
/// running kernel lacks.
pub fn kernel_config(btf: &KernelBtf, timers: TimerFunctions, wakeup_bytes: u64) -> Result<KernelConfig> {
    let sc = |path: &str| btf.offset("sock_common", path);
    Ok(KernelConfig {
        skc_daddr: sc("skc_daddr")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_dport: sc("skc_dport")?,
        skc_num: sc("skc_num")?,
        skc_family: sc("skc_family")?,
        skc_state: sc("skc_state")?,
        skc_net: sc("skc_net")?,
        skc_v6_daddr: sc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        skc_cookie: sc("skc_cookie")?,
        skc_listener: sc("skc_listener")?,
        net_ns_inum: btf.offset("net", "ns.inum")?,
        net_ns_refcount: btf
            .offset("net", "ns.__ns_ref")
            .or_else(|_| btf.offset("net", "ns.count"))
            // Before 5.11 (ns_common had no count): struct net's own.
            .or_else(|_| btf.offset("net", "count"))
            .unwrap_or(0),
        inet_sport: btf.offset("inet_sock", "inet_sport")?,
        sk_protocol: btf.field("sock", "sk_protocol")?,
        sk_lock_owned: btf.offset("sock", "sk_lock.owned")?,
        sk_err: btf.offset("sock", "sk_err")?,
        icsk_ca_state: btf.field("inet_connection_sock", "icsk_ca_state")?,
        icsk_defer_accept: btf.offset("inet_connection_sock", "icsk_accept_queue.rskq_defer_accept")?,
        tp_total_retrans: btf.offset("tcp_sock", "total_retrans")?,
        icsk_rto: btf.offset("inet_connection_sock", "icsk_rto")?,
        icsk_backoff: btf.offset("inet_connection_sock", "icsk_backoff")?,
        tp_rcv_tstamp: btf.offset("tcp_sock", "rcv_tstamp")?,
        // `sk_flags` is `__sk_common.skc_flags` (a macro in include/net/sock.h).
        sk_flags: sc("skc_flags")?,
        sock_linger_bit: btf.enumerator("sock_flags", "SOCK_LINGER")?,
        sk_lingertime: btf.offset("sock", "sk_lingertime")?,
        tp_rcv_nxt: btf.offset("tcp_sock", "rcv_nxt")?,
        tp_copied_seq: btf.offset("tcp_sock", "copied_seq")?,
        icsk_probes_out: btf.offset("inet_connection_sock", "icsk_probes_out")?,
        icsk_retransmits: btf.offset("inet_connection_sock", "icsk_retransmits")?,
        icsk_user_timeout: btf.offset("inet_connection_sock", "icsk_user_timeout")?,
        hz: tick_hz().unwrap_or(0),
        tw_substate: btf.offset("inet_timewait_sock", "tw_substate")?,
        tw_sport: btf.offset("inet_timewait_sock", "tw_sport")?,
        tw_timer: btf.offset("inet_timewait_sock", "tw_timer")?,
        req_timer: btf.offset("request_sock", "rsk_timer")?,
        req_num_retrans: btf.offset("request_sock", "num_retrans")?,
        ireq_acked: btf.field("inet_request_sock", "acked")?,
        skb_cb: btf.offset("sk_buff", "cb")?,
        tcb_tcp_flags: btf.offset("tcp_skb_cb", "tcp_flags")?,
        tcb_gso_segs: btf.offset("tcp_skb_cb", "tcp_gso_segs")?,
        task_nsproxy: btf.offset("task_struct", "nsproxy")?,
        nsproxy_net_ns: btf.offset("nsproxy", "net_ns")?,
        task_files: btf.offset("task_struct", "files")?,
        files_fdt: btf.offset("files_struct", "fdt")?,
        fdt_max_fds: btf.offset("fdtable", "max_fds")?,
        fdt_fd: btf.offset("fdtable", "fd")?,
        file_private_data: btf.offset("file", "private_data")?,
        socket_sk: btf.offset("socket", "sk")?,
        sk_ack_backlog: btf.offset("sock", "sk_ack_backlog")?,
        sk_max_ack_backlog: btf.offset("sock", "sk_max_ack_backlog")?,
        skb_head: btf.offset("sk_buff", "head")?,
        skb_network_header: btf.offset("sk_buff", "network_header")?,
        skb_protocol: btf.offset("sk_buff", "protocol")?,
        skb_dev: btf.offset("sk_buff", "dev")?,
        dev_nd_net: btf.offset("net_device", "nd_net.net")?,
        skb_sk: btf.offset("sk_buff", "sk")?,
        drop_reason_queue_purge: btf
            .enumerator("skb_drop_reason", "SKB_DROP_REASON_QUEUE_PURGE")
            .unwrap_or(0),
        summaries: 0,
        timer_function: btf.offset("timer_list", "function")?,
        tw_timer_handler: timers.tw_timer_handler,
        reqsk_timer_handler: timers.reqsk_timer_handler,
        wakeup_bytes,
        cookie_mask: if btf.has_socket_cookie_helper() { 0 } else { cookie_mask()? },
        ablate: 0,
        task_in_every_event: 0,
    })
}

/// A random `KernelConfig::cookie_mask`: top bit clear, low bit set.
fn cookie_mask() -> Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is valid and writable for its length during the call.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        bail!("getrandom: {}", std::io::Error::last_os_error());
    }
    Ok((u64::from_ne_bytes(bytes) & !(1 << 63)) | 1)
}

/// The kernel's tick rate (CONFIG_HZ): the resolution of the coarse clocks is
/// one tick (`TICK_NSEC`, 1e9 / HZ rounded), so HZ is its inverse, rounded.
pub fn tick_hz() -> Option<u32> {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `res` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return None;
    }
    let nsec = u64::try_from(res.tv_sec).ok()? * 1_000_000_000 + u64::try_from(res.tv_nsec).ok()?;
    hz_of_tick(nsec)
}

/// HZ from the tick's length in nanoseconds; None outside 24..=10000 Hz.
pub fn hz_of_tick(nsec: u64) -> Option<u32> {
    if nsec == 0 {
        return None;
    }
    let hz = (1_000_000_000 + nsec / 2) / nsec;
    (24..=10_000).contains(&hz).then_some(hz as u32)
}

#[cfg(test)]
#[test]
fn hz_from_the_tick_length() {
    assert_eq!(hz_of_tick(4_000_000), Some(250));
    assert_eq!(hz_of_tick(1_000_000), Some(1000));
    assert_eq!(hz_of_tick(3_333_334), Some(300));
    assert_eq!(hz_of_tick(10_000_000), Some(100));
    assert_eq!(hz_of_tick(1), None);
    assert_eq!(hz_of_tick(0), None);
    assert!(tick_hz().is_some(), "this host's coarse clock has a tick");
}

/// Looks up timer callbacks in a kallsyms-format text. Addresses of 0
/// (kptr_restrict hides them) count as unknown.
pub fn timer_functions(kallsyms: &str) -> TimerFunctions {
    let mut found = TimerFunctions::default();
    for line in kallsyms.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(addr), Some(_kind), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let slot = match name {
            "tw_timer_handler" => &mut found.tw_timer_handler,
            "reqsk_timer_handler" => &mut found.reqsk_timer_handler,
            _ => continue,
        };
        if *slot == 0 {
            *slot = u64::from_str_radix(addr, 16).unwrap_or(0);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_timer_callbacks_and_treats_hidden_addresses_as_unknown() {
        let text = "ffffffff82006870 t tw_timer_handler\nffffffff82008db0 t reqsk_timer_handler\n\
                    ffffffff81000000 T _stext\n";
        let found = timer_functions(text);
        assert_eq!(found.tw_timer_handler, 0xffffffff82006870);
        assert_eq!(found.reqsk_timer_handler, 0xffffffff82008db0);
        let hidden = "0000000000000000 t tw_timer_handler\n0000000000000000 t reqsk_timer_handler\n";
        assert_eq!(timer_functions(hidden), TimerFunctions::default());
    }

    /// Runs against the machine's own BTF when there is one (it is plain file
    /// reading, no privileges needed) and checks offsets that have been stable
    /// for years and that a broken member walk would get wrong.
    #[test]
    fn walks_the_running_kernels_btf() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let btf = KernelBtf::load(path).expect("kernel BTF parses");
        // sock_common starts with the address pair, then the hash, then ports.
        assert_eq!(btf.offset("sock_common", "skc_daddr").expect("skc_daddr"), 0);
        assert_eq!(btf.offset("sock_common", "skc_rcv_saddr").expect("saddr"), 4);
        assert_eq!(btf.offset("sock_common", "skc_dport").expect("dport"), 12);
        assert_eq!(btf.offset("sock_common", "skc_num").expect("num"), 14);
        // struct sock embeds sock_common at offset 0 (nested, named member).
        assert_eq!(btf.offset("sock", "__sk_common.skc_family").expect("family"), 16);
        let acked = btf.field("inet_request_sock", "acked").expect("acked bitfield");
        assert_eq!(acked.bits, 1);
        let cfg = kernel_config(&btf, TimerFunctions::default(), 0).expect("all members found");
        assert!(cfg.sk_lock_owned > cfg.skc_cookie);
        assert!(btf.offset("sock", "no_such_member").is_err());
        assert!(btf.offset("tcp_sock", "rcv_tstamp").is_ok());
        assert!(btf.offset("inet_connection_sock", "icsk_backoff").is_ok());
        assert_eq!(
            btf.enumerator("sock_flags", "SOCK_LINGER").ok(),
            Some(4),
            "enum sock_flags, include/net/sock.h"
        );
        assert_eq!(btf.tracepoint_args("inet_sock_set_state"), Some(3));
        // The enums tell what the kernel has: this one has everything.
        assert_eq!(btf.missing_essentials(), Vec::<&str>::new());
        assert!(btf.has_enumerator("bpf_map_type", "BPF_MAP_TYPE_HASH"));
        assert!(!btf.has_enumerator("bpf_map_type", "BPF_MAP_TYPE_NO_SUCH_THING"));
    }

    #[test]
    fn a_kernel_too_old_is_one_line_naming_what_it_lacks() {
        assert_eq!(
            too_old(&["BPF ring buffers (Linux 5.8)"]),
            "this kernel lacks BPF ring buffers (Linux 5.8): tcptrace needs Linux 5.9 or newer"
        );
    }
}
