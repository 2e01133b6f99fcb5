//! nftables rulesets that inject faults where packets arrive (docs/KERNEL-FACTS.md §6:
//! a drop on the sender's own output path is reported back to TCP as a local
//! error, not a loss). Tables live in the test's namespace and die with it.

/// Drops the first SYN of every (source address, source port) arriving for
/// `port`: each connection completes after exactly one SYN retransmit.
pub fn drop_first_syn(port: u16) -> String {
    drop_first_per_source("tt_first_syn", &format!("tcp dport {port} tcp flags & (syn | ack) == syn"))
}

/// Table `table` dropping the first arriving packet that matches `packets`
/// (nft match expressions) of every (source address, source port), IPv4 and
/// IPv6: each source remembered in a set for 10 minutes.
fn drop_first_per_source(table: &str, packets: &str) -> String {
    format!(
        "table inet {table} {{
  set seen4 {{ type ipv4_addr . inet_service; flags dynamic; timeout 10m; }}
  set seen6 {{ type ipv6_addr . inet_service; flags dynamic; timeout 10m; }}
  chain input {{
    type filter hook input priority 0; policy accept;
    {packets} ip saddr . tcp sport != @seen4 add @seen4 {{ ip saddr . tcp sport }} drop
    {packets} ip6 saddr . tcp sport != @seen6 add @seen6 {{ ip6 saddr . tcp sport }} drop
  }}
}}"
    )
}

/// Drops every arriving segment with FIN set that is sent to `port`, and
/// counts them in the table's named counter `dropped` (see
/// [`NetNs::nft_counter`](crate::netns::NetNs::nft_counter)).
pub fn drop_fin_to(port: u16) -> String {
    format!(
        "table inet tt_fin {{
  counter dropped {{ }}
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags & fin == fin counter name \"dropped\" drop
  }}
}}"
    )
}

/// Drops every data segment (IP length over 100 bytes) sent from `port` and
/// arriving here, counted in the named counter `dropped`: a black hole for a
/// server's bulk data that lets the handshake, short replies and ACKs through.
pub fn drop_all_data_from(port: u16) -> String {
    format!(
        "table inet tt_blackout {{
  counter dropped {{ }}
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp sport {port} meta length > 100 counter name \"dropped\" drop
  }}
}}"
    )
}

/// Drops every data segment (IP length over 100 bytes) sent from `port` on
/// this namespace's own output path: not a loss but a local failure, which
/// `tcp_transmit_skb()` returns to TCP as `-EPERM` (docs/KERNEL-FACTS.md §6).
/// The kernel counts a retransmission that fails so in RetransSegs and
/// `tcpi_total_retrans` all the same, and in TCPRetransFail.
pub fn fail_data_leaving(port: u16) -> String {
    format!(
        "table inet tt_local_fail {{
  chain output {{
    type filter hook output priority 0; policy accept;
    tcp sport {port} meta length > 100 drop
  }}
}}"
    )
}

/// Removes the rules of a table created by one of the rulesets above (its
/// `input` chain), keeping its named counters readable. Atomic: a packet
/// meets either all the rules or none.
pub fn stop_dropping(table: &str) -> String {
    format!("flush chain inet {table} input")
}

/// Deletes a table created by one of the rulesets above.
pub fn delete_table(name: &str) -> String {
    format!("delete table inet {name}")
}

/// Drops the first pure ACK (no SYN, FIN, RST or PSH) of every (source
/// address, source port) arriving for `port`: the handshake's final ACK, so
/// the server retransmits its SYN-ACK (the client must not send data first).
pub fn drop_first_final_ack(port: u16) -> String {
    drop_first_final_ack_matching(port, "")
}

/// Like [`drop_first_final_ack`], only for clients using these source ports.
pub fn drop_first_final_ack_from(port: u16, sports: &[u16]) -> String {
    let list: Vec<String> = sports.iter().map(u16::to_string).collect();
    drop_first_final_ack_matching(port, &format!("tcp sport {{ {} }}", list.join(", ")))
}

fn drop_first_final_ack_matching(port: u16, extra: &str) -> String {
    drop_first_per_source(
        "tt_final_ack",
        &format!("tcp dport {port} {extra} tcp flags & (syn | ack | fin | rst | psh) == ack"),
    )
}

/// Drops every segment but SYNs arriving for `port`: handshakes never complete.
pub fn drop_all_but_syn(port: u16) -> String {
    format!(
        "table inet tt_no_ack {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags & (syn | ack) != syn drop
  }}
}}"
    )
}

/// Drops about one in `every` data segments (IP length over 100 bytes) sent
/// from `port` and arriving here: bulk data from a server, not its handshake
/// or bare ACKs.
pub fn drop_data_from(port: u16, every: u32) -> String {
    format!(
        "table inet tt_loss {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp sport {port} meta length > 100 numgen random mod {every} == 0 drop
  }}
}}"
    )
}

/// Drops everything arriving for or from `port`: a dead network.
pub fn drop_all(port: u16) -> String {
    format!(
        "table inet tt_dead {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} drop
    tcp sport {port} drop
  }}
}}"
    )
}

/// Answers SYNs to `port` arriving here with ICMP host unreachable, as a
/// router without a route to the host does.
pub fn reject_host_unreachable(port: u16) -> String {
    format!(
        "table inet tt_unreach {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} reject with icmp type host-unreachable
  }}
}}"
    )
}

/// Drops every segment to or from any of `ports` arriving here, in a
/// table of its own (`table`), so that several such faults can coexist.
pub fn drop_ports(table: &str, ports: &[u16]) -> String {
    let set = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    format!(
        "table inet {table} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {{ {set} }} drop
    tcp sport {{ {set} }} drop
  }}
}}"
    )
}
