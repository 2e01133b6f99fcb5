//! State transitions of full sockets: dwell times, opened and closed
//! connections, and how each one closed.

use super::{
    CloseKind, CloserKey, Conn, EndKey, Mark, Role, Tracker,
    compact::Stamp,
    counters::dwell_index,
    end::EndReason,
    lifecycle::{Lifecycle, Step},
    retrans::ConnRow,
};
use crate::event::{Event, EventKind, Owner, TcpState};

impl Tracker {
    pub(super) fn on_state(&mut self, ev: &Event, old: TcpState, new: TcpState) -> Option<Owner> {
        if old == new {
            self.anomalies.self_transitions += 1;
            return self.conns.get(&ev.cookie).and_then(|c| c.owner());
        }
        let actor = ev.owned_by_task.then(|| self.owners.intern(Owner::of(&ev.task)));
        // A closed socket used again (connect() after a failed connect): its
        // previous life is over, count it before starting the new one.
        if self.conns.get(&ev.cookie).is_some_and(|c| c.closed_at.is_some())
            && let Some(previous) = self.conns.remove(ev.cookie)
        {
            self.account_closed(&previous);
        }
        if !self.conns.contains(&ev.cookie) {
            self.new_record(ev, old);
        }
        let inherited = if new == TcpState::SynRecv && old == TcpState::Listen && actor.is_none() {
            self.listener_owner(ev)
        } else {
            None
        };
        let Some(conn) = self.conns.get_mut(&ev.cookie) else { return actor.as_deref().copied() };
        // Killed by retransmission timeout: `tcp_write_err()` sets ETIMEDOUT
        // before the CLOSE (also where no `inet_sk_error_report` hook exists).
        if new == TcpState::Close {
            if ev.close_errno == libc::ETIMEDOUT as u32 {
                conn.mark(Mark::TimedOut);
            }
            conn.note_close(ev.close_errno, ev.end_facts, old, ev.owned_by_task);
        }

        // A socket killed from outside (`tcp_abort()`: `ss -K`, SOCK_DESTROY,
        // ECONNABORTED) ends in the killer's system call: that process is
        // not the socket's owner.
        let killed = new == TcpState::Close && ev.close_errno == libc::ECONNABORTED as u32;
        if let Some(owner) = actor.as_ref().filter(|_| !killed) {
            conn.set_owner(owner.clone(), false);
        } else if let Some(owner) = inherited {
            conn.set_owner(self.owners.intern(owner), true);
        }
        // Dwell in `old`, if we saw the socket enter it.
        if conn.state != old {
            if conn.closed_at.is_none() && conn.state_since.is_some() {
                self.anomalies.sequence_gaps += 1;
            }
        } else if let Some(since) = conn.state_since.get() {
            if ev.ts_ns < since {
                self.anomalies.clock_skew += 1;
            }
            // A connect() that found no free port never sent a SYN: that is
            // not time spent in SYN_SENT (the failure is in connect_errors).
            let no_syn = old == TcpState::SynSent && new == TcpState::Close && ev.tuple.local.port() == 0;
            if let Some(i) = dwell_index(old)
                && !no_syn
                && self.owner_filter.matches(conn.owner().as_ref())
            {
                self.dwell[i].record_ns(ev.ts_ns.saturating_sub(since));
            }
        }

        // An accepted child is a connection once it is ESTABLISHED (a child
        // that goes from SYN_RECV straight to CLOSE never was one).
        if conn.role == Role::Passive && !matches!(new, TcpState::SynRecv | TcpState::Close) {
            conn.mark(Mark::PastHandshake);
        }
        let child_pending = conn.role == Role::Passive && !conn.has(Mark::PastHandshake);
        if !conn.has(Mark::CountedOpen) && !child_pending && self.owner_filter.matches(conn.owner().as_ref())
        {
            // Opened while tracing, or open before it (seen first here).
            if conn.opened_at.is_some() {
                conn.mark(Mark::CountedOpen);
                self.counters.opened += 1;
            } else if conn.role == Role::Unknown {
                conn.mark(Mark::CountedOpen);
                self.counters.preexisting += 1;
            }
        }
        // CLOSE -> SYN_SENT has no source port yet: keep the fuller tuple.
        if ev.tuple.local.port() != 0 || conn.local_port() == 0 {
            conn.set_tuple(&ev.tuple);
        }
        conn.note_close_step(old, new, actor.as_ref());
        conn.state = new;
        conn.state_since = Stamp::at(ev.ts_ns);
        if new == TcpState::Close {
            if matches!(old, TcpState::FinWait2 | TcpState::Closing) && !conn.has(Mark::TimeWait) {
                if self.timers_available {
                    self.counters.time_wait_skipped += 1;
                } else {
                    conn.mark(Mark::TimeWait);
                }
            }
            conn.closed_at = Stamp::at(ev.ts_ns);
            self.closing.push(ev.ts_ns, (ev.cookie, conn.seq));
        }
        let owner = conn.owner();
        self.classify(ev.cookie);

        match (old, new) {
            (_, TcpState::Listen) => {
                let key = (ev.netns, ev.tuple.local.port());
                self.listeners.entry(key).or_default().push(ev.cookie);
                self.listener_socks.insert(ev.sock, ev.cookie);
            }
            (TcpState::Listen, TcpState::Close) => {
                self.forget_listener(ev.cookie, ev.netns, ev.tuple.local.port());
            }
            (TcpState::Listen, TcpState::SynRecv) => {
                if let Some(done) = self.synrecv.child_created(ev) {
                    self.completed_handshake(&done);
                }
            }
            _ => {}
        }
        owner
    }

    /// Starts the record of a socket first seen leaving `old`.
    fn new_record(&mut self, ev: &Event, old: TcpState) {
        let new = match ev.kind {
            EventKind::State { new, .. } => new,
            _ => old,
        };
        let role = match (old, new) {
            (TcpState::Close, TcpState::SynSent) => Role::Active,
            (TcpState::Close, TcpState::Listen) => Role::Listener,
            (TcpState::Listen, TcpState::SynRecv) => Role::Passive,
            _ => Role::Unknown,
        };
        // A new record starts wanted; the event that created it decides
        // its owner right after, and `classify` moves it and applies the cap.
        self.conns.insert_with(ev.cookie, |seq| {
            let mut conn = Conn::new(seq, ev.netns, ev.tuple, role, old);
            match role {
                Role::Active | Role::Passive => {
                    conn.opened_at = Stamp::at(ev.ts_ns);
                    conn.kernel_retrans_offset = Some(0);
                }
                Role::Listener | Role::Unknown => {}
            }
            // The socket is in `old` since an unknown time, except brand-new ones.
            if matches!(role, Role::Active | Role::Passive | Role::Listener) {
                conn.state_since = Stamp::at(ev.ts_ns);
            }
            conn
        });
    }

    pub(super) fn expire_closing(&mut self, now_ns: u64) {
        while let Some((_, (cookie, seq))) = self.closing.pop_expired(now_ns) {
            if !self.conns.get(&cookie).is_some_and(|c| c.seq == seq && c.closed_at.is_some()) {
                continue; // evicted, or reopened under the same cookie
            }
            if let Some(conn) = self.conns.remove(cookie) {
                self.account_closed(&conn);
            }
        }
    }

    pub(super) fn account_closed(&mut self, conn: &Conn) {
        if conn.role == Role::Passive && !conn.has(Mark::PastHandshake) {
            self.anomalies.children_never_established += 1;
            return;
        }
        if !conn.is_connection()
            || !(self.owner_filter.matches(conn.owner().as_ref())
                || self.owner_filter.matches(conn.closer().as_ref()))
        {
            return;
        }
        let c = &mut self.counters;
        c.closed += 1;
        let kind = conn.final_close();
        *c.closed_as(kind) += 1;
        if conn.has(Mark::TimeWait) {
            c.time_wait += 1;
        }
        if let (Some(opened), Some(closed)) = (conn.opened_at.get(), conn.closed_at.get()) {
            self.lifetime.record_ns(closed.saturating_sub(opened));
        }
        let tuple = conn.tuple();
        let row = ConnRow::new(
            conn.owner(),
            conn.netns,
            tuple.local,
            tuple.remote,
            conn.retransmits,
            conn.retransmit_state.unwrap_or(conn.state),
        )
        .with_stalls(conn.stalls);
        if conn.opened_at.is_some() {
            self.retrans.closed(row, conn.has(Mark::TimedOut));
        } else {
            // Opened before tracing: earlier retransmits are unknown, so it
            // stays out of the per-connection histogram.
            if conn.has(Mark::TimedOut) {
                self.retrans.timeouts += 1;
            }
            self.retrans.consider(row);
        }
        let reason = conn.end_reason().unwrap_or(EndReason::Unknown);
        self.ends.add(reason, conn.closed_from());
        *self.end_rows.row(&EndKey::new(conn.owner(), conn, reason)) += 1;
        if self.emit_lifecycle {
            self.lifecycle.push(Lifecycle {
                ts_ns: conn.closed_at.get().unwrap_or(self.now_ns),
                netns: conn.netns,
                tuple,
                owner: conn.owner(),
                step: Step::ConnectionEnd {
                    reason,
                    closed_from: conn.closed_from(),
                    lifetime_ns: conn
                        .opened_at
                        .get()
                        .zip(conn.closed_at.get())
                        .map(|(o, c)| c.saturating_sub(o)),
                },
            });
        }
        if matches!(kind, CloseKind::Local | CloseKind::Simultaneous) {
            let key = CloserKey::new(conn.closer(), conn);
            let row = self.closers.row(&key);
            row.closes += 1;
            if conn.has(Mark::TimeWait) {
                row.time_wait += 1;
            }
        }
    }
}
