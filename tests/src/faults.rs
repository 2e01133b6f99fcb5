//! nftables rulesets that inject faults where packets arrive (KERNEL-NOTES.md:
//! a drop on the sender's own output path is reported back to TCP as a local
//! error, not a loss). Tables live in the test's namespace and die with it.

/// Drops the first SYN of every (source address, source port) arriving for
/// `port`: each connection completes after exactly one SYN retransmit.
pub fn drop_first_syn(port: u16) -> String {
    format!(
        "table inet tt_first_syn {{
  set seen4 {{ type ipv4_addr . inet_service; flags dynamic; timeout 10m; }}
  set seen6 {{ type ipv6_addr . inet_service; flags dynamic; timeout 10m; }}
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags & (syn | ack) == syn ip saddr . tcp sport != @seen4 add @seen4 {{ ip saddr . tcp sport }} drop
    tcp dport {port} tcp flags & (syn | ack) == syn ip6 saddr . tcp sport != @seen6 add @seen6 {{ ip6 saddr . tcp sport }} drop
  }}
}}"
    )
}

/// Drops every arriving segment with FIN set that is sent to `port`.
pub fn drop_fin_to(port: u16) -> String {
    format!(
        "table inet tt_fin {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags & fin == fin drop
  }}
}}"
    )
}

/// Deletes a table created by one of the rulesets above.
pub fn delete_table(name: &str) -> String {
    format!("delete table inet {name}")
}
