use super::*;

const NONE: EndFacts =
    EndFacts { linger_zero: false, unread: 0, probes_out: 0, retransmits: 0, user_timeout_ms: 0 };

/// Evidence of a CLOSE in a system call of the owner.
fn ev(
    errno: i32,
    facts: EndFacts,
    from: TcpState,
    close: Option<CloseKind>,
    reset_sent: bool,
) -> EndEvidence {
    EndEvidence {
        error: ErrorClass::of(errno),
        facts: Some(facts),
        closed_from: from,
        closed_in_syscall: true,
        reset_in_reply: false,
        close,
        reset_sent,
    }
}

/// The RST this side sent answered a received segment.
fn reply(e: EndEvidence) -> EndEvidence {
    EndEvidence { reset_in_reply: true, ..e }
}

/// The same CLOSE in softirq or a timer.
fn irq(e: EndEvidence) -> EndEvidence {
    EndEvidence { closed_in_syscall: false, ..e }
}

/// Every class from the evidence its kernel path leaves (module doc).
#[test]
fn each_kernel_path_gets_its_class() {
    use CloseKind::*;
    use EndReason::*;
    use TcpState::*;
    let cases = [
        (ev(0, NONE, FinWait2, Some(Local), false), ClosedLocal),
        (ev(0, NONE, LastAck, Some(Remote), false), ClosedRemote),
        (ev(0, NONE, Closing, Some(Simultaneous), false), ClosedSimultaneous),
        (ev(libc::ECONNREFUSED, NONE, SynSent, None, false), Refused),
        (ev(libc::ECONNRESET, NONE, Established, None, false), ResetByPeer),
        (ev(libc::EPIPE, NONE, CloseWait, Some(Remote), false), ResetByPeer),
        // A peer's RST after our FIN: reset, not an orderly close.
        (ev(libc::ECONNRESET, NONE, FinWait2, Some(Local), false), ResetByPeer),
        (ev(0, EndFacts { linger_zero: true, ..NONE }, Established, None, true), ResetLingerZero),
        (ev(0, EndFacts { unread: 10, ..NONE }, Established, None, true), ResetUnreadData),
        // Unread data wins over linger zero (tcp_close() tests it first).
        (ev(0, EndFacts { unread: 10, linger_zero: true, ..NONE }, Established, None, true), ResetUnreadData),
        // The peer's FIN alone is not unread data.
        (
            ev(0, EndFacts { unread: 1, linger_zero: true, ..NONE }, CloseWait, Some(Remote), true),
            ResetLingerZero,
        ),
        (ev(0, EndFacts { unread: 1, ..NONE }, Established, None, true), ResetUnreadData),
        // Data after our close: tcp_reset() (ECONNRESET, in FIN_WAIT2), or
        // tcp_done() without an error while our FIN is acknowledged; the
        // RST answers the data. Processed from the backlog it looks like
        // the owner's system call.
        (reply(irq(ev(libc::ECONNRESET, NONE, FinWait2, Some(Local), true))), ResetDataAfterClose),
        (reply(irq(ev(0, NONE, FinWait2, Some(Local), true))), ResetDataAfterClose),
        (reply(ev(0, NONE, FinWait1, Some(Local), true)), ResetDataAfterClose),
        (ev(libc::ECONNABORTED, NONE, Established, None, true), ResetKilled),
        (ev(libc::ECONNABORTED, NONE, SynSent, None, false), ResetKilled),
        // close() in FIN_WAIT2 with linger2 < 0.
        (ev(0, NONE, FinWait2, Some(Local), true), ResetOther),
        (ev(libc::ETIMEDOUT, EndFacts { retransmits: 6, ..NONE }, SynSent, None, false), TimeoutSyn),
        (
            ev(
                libc::ETIMEDOUT,
                EndFacts { user_timeout_ms: 500, retransmits: 6, ..NONE },
                SynSent,
                None,
                false,
            ),
            TimeoutSyn,
        ),
        (
            ev(libc::ETIMEDOUT, EndFacts { retransmits: 15, ..NONE }, Established, None, false),
            TimeoutRetransmit,
        ),
        (ev(libc::ETIMEDOUT, EndFacts { probes_out: 3, ..NONE }, Established, None, false), TimeoutKeepalive),
        // tcp_keepalive_timer() resets the peer first, then reports.
        (ev(libc::ETIMEDOUT, EndFacts { probes_out: 3, ..NONE }, Established, None, true), TimeoutKeepalive),
        (
            ev(libc::ETIMEDOUT, EndFacts { probes_out: 1, retransmits: 2, ..NONE }, Established, None, false),
            TimeoutRetransmit,
        ),
        (
            ev(
                libc::ETIMEDOUT,
                EndFacts { user_timeout_ms: 1000, retransmits: 4, ..NONE },
                Established,
                None,
                false,
            ),
            TimeoutUser,
        ),
        (ev(libc::EHOSTUNREACH, NONE, SynSent, None, false), Unreachable),
        (ev(libc::ENETUNREACH, NONE, Established, None, false), Unreachable),
        (ev(libc::EIO, NONE, Established, None, false), ErrorOther),
        // Linux 6.5+: the application gives up after an ICMP error it read.
        (ev(0, NONE, SynSent, None, false), ConnectAbandoned),
        (irq(ev(0, NONE, SynSent, None, false)), Unknown),
        (irq(ev(0, NONE, Established, None, false)), Unknown),
    ];
    for (evidence, want) in cases {
        assert_eq!(evidence.classify(), want, "{evidence:?}");
        // What a record keeps of it classifies the same.
        let mut note = EndNote::at_close(
            evidence.error,
            evidence.facts,
            evidence.closed_from,
            evidence.closed_in_syscall,
        );
        if evidence.reset_in_reply {
            note.note_reset_in_reply();
        }
        let kept = note.evidence(evidence.close, evidence.reset_sent).expect("a CLOSE was noted");
        assert_eq!(kept.classify(), want, "kept {kept:?} of {evidence:?}");
    }
}

#[test]
fn older_recordings_without_facts_still_classify() {
    let e = |errno: i32, from| EndEvidence {
        error: ErrorClass::of(errno),
        facts: None,
        closed_from: from,
        closed_in_syscall: false,
        reset_in_reply: false,
        close: None,
        reset_sent: false,
    };
    assert_eq!(e(libc::ETIMEDOUT, TcpState::Established).classify(), EndReason::Timeout);
    assert_eq!(e(libc::ETIMEDOUT, TcpState::SynSent).classify(), EndReason::TimeoutSyn);
    assert_eq!(
        EndEvidence { reset_sent: true, ..e(0, TcpState::Established) }.classify(),
        EndReason::ResetOther
    );
    assert_eq!(EndNote::NONE.evidence(None, false), None, "no CLOSE seen: nothing to classify");
}

#[test]
fn names_are_unique_and_connect_errors_map_to_classes() {
    let mut names: Vec<_> = EndReason::ALL.iter().map(|r| r.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), EndReason::ALL.len());
    assert!(EndReason::ALL.iter().enumerate().all(|(i, r)| *r as usize == i), "ALL in declaration order");
    assert_eq!(EndReason::of_connect_errno(libc::ECONNREFUSED as u32), Some(EndReason::Refused));
    assert_eq!(EndReason::of_connect_errno(libc::ETIMEDOUT as u32), Some(EndReason::TimeoutSyn));
    assert_eq!(EndReason::of_connect_errno(libc::ENETUNREACH as u32), Some(EndReason::Unreachable));
    assert_eq!(EndReason::of_connect_errno(libc::EADDRNOTAVAIL as u32), None);
}

#[test]
fn a_reply_reset_noted_before_the_close_is_kept() {
    let mut note = EndNote::NONE;
    note.note_reset_in_reply();
    note.close(ErrorClass::None, None, TcpState::FinWait2, false);
    let e = note.evidence(Some(CloseKind::Local), true).expect("closed");
    assert!(e.reset_in_reply);
    assert_eq!(e.closed_from, TcpState::FinWait2);
    assert_eq!(e.classify(), EndReason::ResetDataAfterClose);
}
