//! Network namespaces and veth pairs without iproute2, for machines that
//! have no `ip` (the bare initramfs of `cargo xtask vm-test --dist`: busybox
//! only, whose `ip` can neither create veth pairs nor named namespaces).
//!
//! It does what `ip netns add`, `ip netns exec`, `ip link add ... type veth`,
//! `ip addr add` and `ip link set up` do: a namespace is made by
//! `unshare(CLONE_NEWNET)` on a short-lived thread and kept alive by a bind
//! mount of that thread's namespace file on `/run/netns/<name>` (so that
//! `packet::in_netns` and tcptrace's own netns lookups see the same
//! files), commands enter it with `setns` before exec, and links and
//! addresses are configured over rtnetlink from a thread inside the
//! namespace. Unlike `ip netns exec`, commands keep the caller's mount
//! namespace (no `/sys` remount): nothing the tests run reads `/sys/class/net`.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    net::IpAddr,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
    thread,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Whether to use this module instead of iproute2: there is no `ip` on
/// PATH that is iproute2's (busybox's applet is not), or
/// `TCPTRACE_TEST_RTNL=1` asks for it (to exercise this path on a host).
pub fn wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(decide)
}

fn decide() -> bool {
    if std::env::var_os("TCPTRACE_TEST_RTNL").is_some_and(|v| v == "1") {
        return true;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    !std::env::split_paths(&path).any(|dir| {
        let ip = dir.join("ip");
        // busybox installs its applets as symlinks to itself.
        ip.is_file() && fs::canonicalize(&ip).is_ok_and(|real| !real.ends_with("busybox"))
    })
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Creates the named namespace (`ip netns add`) with its loopback up.
pub fn add_netns(name: &str) -> io::Result<()> {
    fs::create_dir_all("/run/netns")?;
    let path = netns_path(name);
    File::create(&path)?;
    let target = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let made = thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare affects this thread only (a network namespace is a
        // per-thread attribute); the thread ends right after the bind mount.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let source = c"/proc/thread-self/ns/net";
        // SAFETY: valid C strings; a bind mount takes no filesystem type or data.
        let rc = unsafe {
            libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?;
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    in_netns(name, || set_up(&Rtnl::new()?, "lo"))
}

/// Deletes the named namespace (`ip netns del`): its interfaces go with it
/// once no process runs in it.
pub fn del_netns(name: &str) {
    let path = netns_path(name);
    if let Ok(target) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_file(path);
}

/// `program` to be run inside the named namespace (`ip netns exec`).
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    match File::open(netns_path(name)) {
        Ok(ns) => {
            // SAFETY: setns is async-signal-safe; the fd stays open (owned by
            // the closure) until exec, where O_CLOEXEC closes it.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        Err(e) => {
            let message = format!("opening {}: {e}", netns_path(name).display());
            // SAFETY: the closure only builds an error value.
            unsafe { cmd.pre_exec(move || Err(io::Error::other(message.clone()))) };
        }
    }
    cmd
}

/// Runs `f` on a thread inside the named namespace.
fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(netns_path(name))?;
    thread::spawn(move || {
        // SAFETY: setns on a namespace fd, for this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// A veth pair: `a_dev` in namespace `a`, `b_dev` in namespace `b`
/// (`ip link add A netns a type veth peer name B netns b`).
pub fn add_veth(a: &str, a_dev: &str, b: &str, b_dev: &str) -> io::Result<()> {
    let b_ns = File::open(netns_path(b))?;
    let (a_dev, b_dev) = (a_dev.to_string(), b_dev.to_string());
    in_netns(a, move || {
        let mut peer = LinkMessage::default();
        peer.attributes = vec![LinkAttribute::IfName(b_dev), LinkAttribute::NetNsFd(b_ns.as_raw_fd())];
        let mut link = LinkMessage::default();
        link.attributes = vec![
            LinkAttribute::IfName(a_dev),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ];
        // b_ns stays open until the kernel has answered.
        let done = Rtnl::new()?.request(RouteNetlinkMessage::NewLink(link), NLM_F_CREATE | NLM_F_EXCL);
        drop(b_ns);
        done
    })
}

/// Adds `addr/prefix` to `dev` in namespace `ns` and sets `dev` up (IPv6
/// without duplicate address detection, as `nodad`).
pub fn add_addr_and_up(ns: &str, dev: &str, addrs: &[(IpAddr, u8)]) -> io::Result<()> {
    let (dev, addrs) = (dev.to_string(), addrs.to_vec());
    in_netns(ns, move || {
        let rtnl = Rtnl::new()?;
        let index = if_index(&dev)?;
        for (addr, prefix) in addrs {
            let mut msg = AddressMessage::default();
            msg.header.family = if addr.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
            msg.header.prefix_len = prefix;
            msg.header.index = index;
            if addr.is_ipv6() {
                msg.header.flags = AddressHeaderFlags::Nodad;
            }
            msg.attributes = vec![AddressAttribute::Local(addr), AddressAttribute::Address(addr)];
            rtnl.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(|e| io::Error::new(e.kind(), format!("adding {addr}/{prefix} to {dev}: {e}")))?;
        }
        set_up(&rtnl, &dev)
    })
}

fn if_index(dev: &str) -> io::Result<u32> {
    let name = CString::new(dev).map_err(io::Error::other)?;
    // SAFETY: a valid C string; the lookup uses this thread's namespace.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {dev}"))),
        index => Ok(index),
    }
}

/// `ip link set <dev> up` in the calling thread's namespace.
fn set_up(rtnl: &Rtnl, dev: &str) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = if_index(dev)?;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    rtnl.request(RouteNetlinkMessage::SetLink(link), 0)
}

/// An rtnetlink socket of the calling thread's namespace.
struct Rtnl(Socket);

impl Rtnl {
    fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self(socket))
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.0.send(&buf, 0)?;
        let mut reply = vec![0; 8192];
        let n = self.0.recv(&mut &mut reply[..], 0)?;
        let answer =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n]).map_err(io::Error::other)?;
        match answer.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::Error(_) => Ok(()),
            other => Err(io::Error::other(format!("unexpected rtnetlink answer {other:?}"))),
        }
    }
}
