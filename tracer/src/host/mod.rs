//! Facts about the host that events do not carry: network namespaces
//! (entered to read their sysctls and counters), cgroup paths, the sockets
//! that exist when tracing starts and their owners, and the kernel clock's offset to wall time.

pub mod cgroup;
pub mod clock;
pub mod netns;
pub mod owners;
pub mod snapshot;
