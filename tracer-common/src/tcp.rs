//! The kernel's TCP states and congestion-avoidance states. On the wire both
//! are a `u8` (records carry plain integers); these enums are what userspace
//! decodes them to, and the kernel programs compare against.

/// Defines [`TcpState`] from one list of `Variant = value, NAME`: the enum, its
/// kernel name, [`TcpState::ALL`] and [`TcpState::from_u8`] cannot disagree.
macro_rules! tcp_states {
    ($($variant:ident = $value:literal, $name:literal;)*) => {
        /// TCP states as the kernel numbers and names them
        /// (`include/net/tcp_states.h`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum TcpState {
            $($variant = $value,)*
        }

        impl TcpState {
            /// Every state, in the kernel's order.
            pub const ALL: &[TcpState] = &[$(Self::$variant,)*];

            /// The state a record's byte names, if any.
            #[inline(always)]
            pub const fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// The name `ss` and the kernel use, e.g. `FIN_WAIT1`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

tcp_states! {
    Established = 1, "ESTABLISHED";
    SynSent = 2, "SYN_SENT";
    SynRecv = 3, "SYN_RECV";
    FinWait1 = 4, "FIN_WAIT1";
    FinWait2 = 5, "FIN_WAIT2";
    TimeWait = 6, "TIME_WAIT";
    Close = 7, "CLOSE";
    CloseWait = 8, "CLOSE_WAIT";
    LastAck = 9, "LAST_ACK";
    Listen = 10, "LISTEN";
    Closing = 11, "CLOSING";
    NewSynRecv = 12, "NEW_SYN_RECV";
}

impl TcpState {
    /// The kernel's number, as records carry it.
    #[inline(always)]
    pub const fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }
}

impl From<TcpState> for &'static str {
    fn from(state: TcpState) -> Self {
        state.name()
    }
}

impl core::fmt::Display for TcpState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(self.name())
    }
}

/// JSON and other serialised output: the kernel's name (`"TIME_WAIT"`).
#[cfg(feature = "user")]
impl serde::Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A socket's congestion-avoidance state, `icsk_ca_state` (`include/net/tcp.h`,
/// `enum tcp_ca_state`): which recovery a retransmission belongs to.
///
/// On the wire a `u8`, copied from the kernel's bitfield as it is: the kernel
/// programs never interpret it, userspace decodes it with [`from_wire`](Self::from_wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaState {
    /// `TCP_CA_Open`: nothing outstanding looks lost.
    Open,
    /// `TCP_CA_Disorder`: SACKs or duplicate ACKs seen, no recovery yet.
    Disorder,
    /// `TCP_CA_CWR`: congestion window reduced (ECN, local congestion).
    Cwr,
    /// `TCP_CA_Recovery`: fast retransmit and the rest of that recovery.
    Recovery,
    /// `TCP_CA_Loss`: entered when the retransmission timer fires (RTO).
    Loss,
    /// A value the kernel did not have when this was written: kept, not
    /// refused, so that a record from a newer kernel still decodes.
    Unknown(u8),
}

impl CaState {
    /// The state a record's byte names (never fails: see [`CaState::Unknown`]).
    pub const fn from_wire(value: u8) -> Self {
        match value {
            0 => Self::Open,
            1 => Self::Disorder,
            2 => Self::Cwr,
            3 => Self::Recovery,
            4 => Self::Loss,
            other => Self::Unknown(other),
        }
    }

    /// The kernel's number, as records carry it.
    pub const fn to_wire(self) -> u8 {
        match self {
            Self::Open => 0,
            Self::Disorder => 1,
            Self::Cwr => 2,
            Self::Recovery => 3,
            Self::Loss => 4,
            Self::Unknown(value) => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tcp_state_round_trips_through_its_number_and_name() {
        assert_eq!(TcpState::ALL.len(), 12);
        for (i, &state) in TcpState::ALL.iter().enumerate() {
            // The kernel numbers them 1..=12, in this order.
            assert_eq!(usize::from(state.to_u8()), i + 1);
            assert_eq!(TcpState::from_u8(state.to_u8()), Some(state));
            assert_eq!(TcpState::from_name(state.name()), Some(state));
        }
        for value in 0..=u8::MAX {
            match TcpState::from_u8(value) {
                Some(state) => assert_eq!(state.to_u8(), value),
                None => assert!(value == 0 || value > 12, "{value} has no state"),
            }
        }
        assert_eq!(TcpState::from_name("time_wait"), None);
    }

    #[test]
    fn kernel_names_and_numbers() {
        // Spot checks against include/net/tcp_states.h.
        assert_eq!((TcpState::Established.to_u8(), TcpState::Established.name()), (1, "ESTABLISHED"));
        assert_eq!((TcpState::TimeWait.to_u8(), TcpState::TimeWait.name()), (6, "TIME_WAIT"));
        assert_eq!((TcpState::Listen.to_u8(), TcpState::Listen.name()), (10, "LISTEN"));
        assert_eq!((TcpState::NewSynRecv.to_u8(), TcpState::NewSynRecv.name()), (12, "NEW_SYN_RECV"));
    }

    #[test]
    fn every_ca_state_byte_round_trips() {
        for value in 0..=u8::MAX {
            let state = CaState::from_wire(value);
            assert_eq!(state.to_wire(), value);
            assert_eq!(matches!(state, CaState::Unknown(_)), value > 4, "{value}");
        }
        assert_eq!(CaState::from_wire(3), CaState::Recovery);
        assert_eq!(CaState::from_wire(4), CaState::Loss);
    }
}
