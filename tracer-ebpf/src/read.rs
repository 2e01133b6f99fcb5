//! Reading kernel memory: one field, a whole `sock_common`, and the fields of
//! each kind of socket and of the current task that every event carries.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
    generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
};
use tracer_common::{AF_INET6, Field, IPPROTO_TCP, RawEvent, TcpState, flags};

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub(crate) fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    // SAFETY: nothing is dereferenced in Rust: the helper copies size_of::<T>()
    // bytes from any kernel address and fails, without faulting, where they are
    // not readable. Callers only read plain integers, byte arrays and
    // `SkcBytes`, valid for any bit pattern.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
}

#[inline(always)]
pub(crate) fn read_field(base: u64, field: Field) -> Result<u32, i32> {
    let word: u32 = read(base, field.byte)?;
    Ok(field.extract(word))
}

/// Bytes of `struct sock_common` read at once: every field we need lies in
/// its first 96 bytes on the kernels we know (6.1 to 6.18), and one
/// `bpf_probe_read_kernel` of 96 bytes costs about what one of 2 bytes costs
/// (the call dominates). Every full, timewait and request socket is larger.
const SKC_SPAN: usize = 96;

#[repr(C, align(8))]
struct SkcBytes([u8; SKC_SPAN]);

impl SkcBytes {
    /// The `T` at `off`; zero if out of range (cannot happen when
    /// [`skc_fits`] holds, which is checked first).
    #[inline(always)]
    fn get<T: Copy + Default>(&self, off: u32) -> T {
        let off = off as usize;
        if off + core::mem::size_of::<T>() > SKC_SPAN {
            return T::default();
        }
        // SAFETY: `off + size_of::<T>() <= SKC_SPAN` was checked above, so the
        // read stays inside the array; `read_unaligned` needs no alignment; `T`
        // is an integer or a byte array here (any bit pattern is valid).
        unsafe { core::ptr::read_unaligned(self.0.as_ptr().add(off) as *const T) }
    }
}

/// Whether every `sock_common` field we read lies within [`SKC_SPAN`]. The
/// offsets are load-time constants (frozen rodata, from BTF): the verifier
/// prunes the branch not taken, so an unexpected layout costs nothing but
/// the slower per-field path.
#[inline(always)]
fn skc_fits() -> bool {
    let within = |off: u32, size: u32| off + size <= SKC_SPAN as u32;
    within(config!(skc_daddr), 4)
        && within(config!(skc_rcv_saddr), 4)
        && within(config!(skc_dport), 2)
        && within(config!(skc_num), 2)
        && within(config!(skc_family), 2)
        && within(config!(skc_state), 1)
        && within(config!(skc_net), 8)
        && within(config!(skc_v6_daddr), 16)
        && within(config!(skc_v6_rcv_saddr), 16)
}

/// Fills identity fields of any socket (full, timewait or request): they all
/// start with `struct sock_common`.
#[inline(always)]
pub(crate) fn fill_sock_common(event: &mut RawEvent, sk: u64) -> Result<(), i32> {
    if ablated!(SOCK_COMMON) {
        event.sk = sk;
        return Ok(());
    }
    if !skc_fits() {
        return fill_sock_common_by_field(event, sk);
    }
    event.sk = sk;
    let skc: SkcBytes = read(sk, 0)?;
    let family: u16 = skc.get(config!(skc_family));
    event.family = family as u8;
    event.new_state = skc.get(config!(skc_state));
    event.dport = u16::from_be(skc.get(config!(skc_dport)));
    event.sport = skc.get(config!(skc_num));
    if event.family == AF_INET6 {
        event.daddr = skc.get(config!(skc_v6_daddr));
        event.saddr = skc.get(config!(skc_v6_rcv_saddr));
    } else {
        let daddr: [u8; 4] = skc.get(config!(skc_daddr));
        let saddr: [u8; 4] = skc.get(config!(skc_rcv_saddr));
        event.daddr[..4].copy_from_slice(&daddr);
        event.saddr[..4].copy_from_slice(&saddr);
    }
    let net: u64 = skc.get(config!(skc_net));
    if net != 0 && !ablated!(NETNS) {
        event.netns = read(net, config!(net_ns_inum))?;
    }
    Ok(())
}

/// [`fill_sock_common`] one field at a time, for a layout we do not expect.
#[inline(always)]
fn fill_sock_common_by_field(event: &mut RawEvent, sk: u64) -> Result<(), i32> {
    event.sk = sk;
    let family: u16 = read(sk, config!(skc_family))?;
    event.family = family as u8;
    event.new_state = read(sk, config!(skc_state))?;
    let dport: u16 = read(sk, config!(skc_dport))?;
    event.dport = u16::from_be(dport);
    event.sport = read(sk, config!(skc_num))?;
    if event.family == AF_INET6 {
        event.daddr = read(sk, config!(skc_v6_daddr))?;
        event.saddr = read(sk, config!(skc_v6_rcv_saddr))?;
    } else {
        let daddr: [u8; 4] = read(sk, config!(skc_daddr))?;
        let saddr: [u8; 4] = read(sk, config!(skc_rcv_saddr))?;
        event.daddr[..4].copy_from_slice(&daddr);
        event.saddr[..4].copy_from_slice(&saddr);
    }
    let net: u64 = read(sk, config!(skc_net))?;
    if net != 0 {
        event.netns = read(net, config!(net_ns_inum))?;
    }
    Ok(())
}

/// Fills the current task's identity. It is the socket's owner only when
/// `flags::OWNED_BY_USER` is also set (see docs/KERNEL-FACTS.md §2.3: softirq runs on
/// top of unrelated tasks), which callers set first: comm and cgroup, ~100 ns
/// of the ~540 ns an event costs, are read only then, or when every event is
/// shown or recorded (`KernelConfig::task_in_every_event`).
#[inline(always)]
pub(crate) fn fill_task(event: &mut RawEvent) {
    if !ablated!(PID) {
        event.pid_tgid = bpf_get_current_pid_tgid();
    }
    if event.flags & flags::OWNED_BY_USER == 0 && config!(task_in_every_event) == 0 {
        return;
    }
    if !ablated!(CGROUP) {
        // SAFETY: a BPF helper without preconditions.
        event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    if !ablated!(COMM) {
        event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}

/// Fills a full socket event: identity, cookie, lock ownership, task.
/// `sk` must come straight from the tracepoint's BTF arguments: the cookie
/// helper only accepts a typed socket pointer.
#[inline(always)]
pub(crate) fn fill_full_sock(event: &mut RawEvent, sk: *mut c_void) -> Result<(), i32> {
    event.cookie = socket_cookie(sk)?;
    // Fields first: they say whether the task owns the socket.
    let fields = fill_sock_fields(event, sk as u64);
    fill_task(event);
    fields
}

/// The name of a full socket: its cookie, or on kernels whose tracing
/// programs lack `bpf_get_socket_cookie` (before 5.12), its address masked
/// (`KernelConfig::cookie_mask`). `sk` must come straight from the
/// tracepoint's BTF arguments. The mask is a load-time constant: the verifier
/// explores only one branch, and drops the helper call where it would
/// refuse it.
#[inline(always)]
pub(crate) fn socket_cookie(sk: *mut c_void) -> Result<u64, i32> {
    if ablated!(COOKIE) {
        return Ok(0);
    }
    let mask = config!(cookie_mask);
    if mask != 0 {
        return Ok(address_of(sk)? ^ mask);
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket argument (see above),
    // which the verifier checks for this helper; the helper only reads the
    // socket.
    Ok(unsafe { bpf_get_socket_cookie(sk) })
}

/// The address in `ptr` as a number the program may compute with: the
/// verifier allows no arithmetic on a pointer but adding constants (an XOR
/// is refused), so the value is copied out of a stack slot by
/// `bpf_probe_read_kernel`, whose result is a plain number.
#[inline(always)]
fn address_of(ptr: *mut c_void) -> Result<u64, i32> {
    let slot = ptr as u64;
    read(&slot as *const u64 as u64, 0)
}

/// The full socket's identity, ports and lock ownership (no cookie, no task).
#[inline(always)]
pub(crate) fn fill_sock_fields(event: &mut RawEvent, sk: u64) -> Result<(), i32> {
    fill_sock_common(event, sk)?;
    if ablated!(SPORT_OWNED) {
        return Ok(());
    }
    let sport: u16 = read(sk, config!(inet_sport))?;
    if sport != 0 {
        event.sport = u16::from_be(sport);
    }
    let owned: i32 = read(sk, config!(sk_lock_owned))?;
    if owned != 0 {
        event.flags |= flags::OWNED_BY_USER;
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn is_tcp(sk: u64) -> Result<bool, i32> {
    if ablated!(IS_TCP) {
        return Ok(true);
    }
    Ok(read_field(sk, config!(sk_protocol))? == IPPROTO_TCP as u32)
}

#[inline(always)]
pub(crate) fn is_full_sock(sk: u64) -> Result<bool, i32> {
    let state: u8 = read(sk, config!(skc_state))?;
    Ok(state != TcpState::TimeWait.to_u8() && state != TcpState::NewSynRecv.to_u8())
}

/// A full TCP socket as the kernel's typed `struct tcp_sock` pointer
/// (`bpf_skc_to_tcp_sock`, Linux 5.9+, allowed in tracing programs): its
/// fields are plain loads that the verifier checks against the kernel's BTF
/// (a faulting load reads zero), ~1 ns each, where each
/// `bpf_probe_read_kernel` costs ~25 ns (bench ablation: the state
/// program's protocol check and socket reads were ~170 ns of its ~540).
/// Offsets are load-time constants from `CONFIG`, so every load has a fixed
/// offset into the struct, as the verifier requires.
#[derive(Clone, Copy)]
pub(crate) struct TcpSock(*const u8);

impl TcpSock {
    /// `sk` as a TCP socket; None when it is no full TCP socket (what the
    /// protocol check told before). `sk` must come straight from the
    /// tracepoint's BTF arguments: the helper only accepts a typed pointer.
    #[inline(always)]
    pub(crate) fn of(sk: *mut c_void) -> Option<Self> {
        // SAFETY: `sk` is a BTF-typed socket pointer, which the verifier
        // checks for this helper; the helper only reads the socket.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
        (!tp.is_null()).then_some(Self(tp as *const u8))
    }

    /// The `T` at byte `off` of the socket.
    #[inline(always)]
    pub(crate) fn get<T: Copy>(self, off: u32) -> T {
        // SAFETY: a load from the kernel's own socket, which stays valid while
        // the tracepoint runs; the verifier checks it against the BTF type
        // (offset and size within `struct tcp_sock`) and turns it into a load
        // that reads zero instead of faulting. Volatile: one load per field,
        // as written (the verifier checks each against the struct's layout).
        unsafe { core::ptr::read_volatile(self.0.add(off as usize) as *const T) }
    }

    /// The 16 bytes of the `struct in6_addr` at `off`, in two loads.
    #[inline(always)]
    fn in6_addr(self, off: u32) -> [u8; 16] {
        let (hi, lo): (u64, u64) = (self.get(off), self.get(off + 8));
        let mut addr = [0; 16];
        addr[..8].copy_from_slice(&hi.to_ne_bytes());
        addr[8..].copy_from_slice(&lo.to_ne_bytes());
        addr
    }

    /// Identity, ports, namespace and lock ownership, as
    /// [`fill_sock_fields`] reads them through `bpf_probe_read_kernel`.
    #[inline(always)]
    pub(crate) fn fill(self, event: &mut RawEvent, sk: *mut c_void) {
        event.sk = sk as u64;
        if !ablated!(SOCK_COMMON) {
            let family: u16 = self.get(config!(skc_family));
            event.family = family as u8;
            event.new_state = self.get(config!(skc_state));
            event.dport = u16::from_be(self.get(config!(skc_dport)));
            event.sport = self.get(config!(skc_num));
            // Addresses as integers (the bytes in memory order): a load of an
            // array type is not one instruction.
            if event.family == AF_INET6 {
                event.daddr = self.in6_addr(config!(skc_v6_daddr));
                event.saddr = self.in6_addr(config!(skc_v6_rcv_saddr));
            } else {
                let daddr: u32 = self.get(config!(skc_daddr));
                let saddr: u32 = self.get(config!(skc_rcv_saddr));
                event.daddr[..4].copy_from_slice(&daddr.to_ne_bytes());
                event.saddr[..4].copy_from_slice(&saddr.to_ne_bytes());
            }
            if !ablated!(NETNS) {
                // `possible_net_t skc_net`: a `struct net *`, loaded as a typed
                // pointer in turn.
                let net: *const u8 = self.get(config!(skc_net));
                if !net.is_null() {
                    let offset = config!(net_ns_inum) as usize;
                    // SAFETY: as in `get`: a verifier-checked load from the
                    // socket's `struct net`.
                    event.netns = unsafe { core::ptr::read_volatile(net.add(offset) as *const u32) };
                }
            }
        }
        if !ablated!(SPORT_OWNED) {
            let sport: u16 = self.get(config!(inet_sport));
            if sport != 0 {
                event.sport = u16::from_be(sport);
            }
            let owned: i32 = self.get(config!(sk_lock_owned));
            if owned != 0 {
                event.flags |= flags::OWNED_BY_USER;
            }
        }
    }
}
