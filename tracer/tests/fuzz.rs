//! Property tests (proptest): whatever bytes the decoder and the recording
//! reader get, they answer with a value or an error, never a panic.

use proptest::prelude::*;
use tracer::{
    decode,
    recording::{Block, Reader},
};

fn read_all(bytes: &[u8]) -> anyhow::Result<usize> {
    let mut reader = Reader::new(bytes)?;
    let mut n = 0;
    while let Some(block) = reader.next_block()? {
        if let Block::Events(events) = block {
            n += events.len();
        }
    }
    Ok(n)
}

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/handshakes.tcptrace"))
        .expect("fixture")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode::decode(&bytes);
    }

    #[test]
    fn full_size_records_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 120..=120)) {
        if let Ok(event) = decode::decode(&bytes) {
            // A decoded event re-encodes to the same bytes' meaning.
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&bytes[..8]);
            prop_assert!(event.ts_ns == u64::from_ne_bytes(ts));
        }
    }

    #[test]
    fn reader_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = read_all(&bytes);
    }

    #[test]
    fn reader_never_panics_on_a_damaged_recording(
        cuts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        truncate in any::<Option<usize>>(),
    ) {
        let mut bytes = fixture();
        for (at, value) in cuts {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Some(len) = truncate {
            bytes.truncate(len % (bytes.len() + 1));
        }
        let _ = read_all(&bytes);
    }
}

#[test]
fn the_undamaged_fixture_reads() {
    assert!(read_all(&fixture()).expect("valid") > 0);
}
