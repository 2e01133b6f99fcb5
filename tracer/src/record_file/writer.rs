//! Writing a recording: header, event blocks as they fill, listing, footer.

use std::io::{self, Write};

use bytes::{BufMut, BytesMut};
use tracer_common::RawEvent;

use super::{
    EVENTS_PER_BLOCK, FORMAT_VERSION, Footer, Header, ListedEntry, ListedOwner, MAGIC, TAG_EVENTS,
    TAG_FOOTER, TAG_HEADER, TAG_LISTED,
};
use crate::{host::snapshot::ListedSocket, pipeline::decode};

/// Writes a recording. Blocks go out as they are complete.
pub struct Writer<W: Write> {
    out: W,
    events: BytesMut,
    pending: usize,
    pub events_written: u64,
}

fn json_error(e: serde_json::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        let mut writer = Self { out, events: BytesMut::new(), pending: 0, events_written: 0 };
        writer.block(TAG_HEADER, &serde_json::to_vec(header).map_err(json_error)?)?;
        Ok(writer)
    }

    fn block(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("block too large"))?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(payload)
    }

    pub fn event(&mut self, raw: &RawEvent) -> io::Result<()> {
        self.events.put_slice(&decode::raw_to_bytes(raw));
        self.pending += 1;
        self.events_written += 1;
        if self.pending >= EVENTS_PER_BLOCK {
            self.flush_events()?;
        }
        Ok(())
    }

    pub fn flush_events(&mut self) -> io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let payload = self.events.split().freeze();
        self.pending = 0;
        self.block(TAG_EVENTS, &payload)
    }

    pub fn listed(&mut self, listed: &[ListedSocket]) -> io::Result<()> {
        self.flush_events()?;
        let entries: Vec<ListedEntry> = listed
            .iter()
            .map(|s| ListedEntry {
                netns: s.netns,
                local: s.tuple.local,
                remote: s.tuple.remote,
                cookie: s.cookie,
                state: s.state,
                owner: s.owner.as_ref().map(ListedOwner::of),
            })
            .collect();
        self.block(TAG_LISTED, &serde_json::to_vec(&entries).map_err(json_error)?)
    }

    pub fn finish(mut self, footer: &Footer) -> io::Result<W> {
        self.flush_events()?;
        self.block(TAG_FOOTER, &serde_json::to_vec(footer).map_err(json_error)?)?;
        self.out.flush()?;
        Ok(self.out)
    }
}
