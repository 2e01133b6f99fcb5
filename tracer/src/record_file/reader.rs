//! Reading a recording back, every length and field checked.

use std::io::{self, Read, Seek};

use bytes::Buf;
use tracer_common::{EVENT_LAYOUT_VERSION, RAW_EVENT_SIZE, RawEvent};

use super::{
    FORMAT_VERSION, Footer, Header, ListedEntry, ListedOwner, MAGIC, MAX_BLOCK, TAG_EVENTS, TAG_FOOTER,
    TAG_HEADER, TAG_LISTED, empty_header,
};
use crate::{error::EnvError, event::Tuple, host::snapshot::ListedSocket, pipeline::decode};

/// One block of a recording, decoded.
#[derive(Debug)]
pub enum Block {
    Events(Vec<RawEvent>),
    Listed(Vec<ListedSocket>),
}

/// Reads and validates a recording.
pub struct Reader<R: Read> {
    input: R,
    pub header: Header,
    pub footer: Option<Footer>,
}

pub(crate) fn corrupt(what: impl Into<String>) -> anyhow::Error {
    EnvError::new(format!("not a valid tcptrace recording: {}", what.into())).into()
}

/// Reads exactly `buf.len()` bytes; a short read is a truncated file.
fn read_exact_or_truncated<R: Read>(input: &mut R, buf: &mut [u8], what: &str) -> anyhow::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(corrupt(format!("truncated in the middle of {what}"))),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvError::new(format!("cannot read recording: {e}")).into()),
        }
    }
    Ok(true)
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> anyhow::Result<Self> {
        let mut start = [0u8; 12];
        if !read_exact_or_truncated(&mut input, &mut start, "the file header")? {
            return Err(corrupt("empty file"));
        }
        if &start[..8] != MAGIC {
            return Err(corrupt("wrong magic bytes (not made by tcptrace record)"));
        }
        let version = (&start[8..12]).get_u32_le();
        if version > FORMAT_VERSION {
            return Err(EnvError::new(format!(
                "recording format {version} is newer than this tcptrace understands ({FORMAT_VERSION}); \
                 use a newer tcptrace"
            ))
            .into());
        }
        if version == 0 {
            return Err(corrupt("format version 0"));
        }
        let mut reader = Self { input, header: empty_header(), footer: None };
        match reader.raw_block()? {
            Some((TAG_HEADER, payload)) => {
                reader.header =
                    serde_json::from_slice(&payload).map_err(|e| corrupt(format!("header: {e}")))?;
            }
            _ => return Err(corrupt("no header block")),
        }
        if reader.header.event_layout_version != EVENT_LAYOUT_VERSION {
            return Err(EnvError::new(format!(
                "recording uses event layout {} but this tcptrace reads layout {EVENT_LAYOUT_VERSION}",
                reader.header.event_layout_version
            ))
            .into());
        }
        Ok(reader)
    }

    fn raw_block(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        let mut head = [0u8; 5];
        if !read_exact_or_truncated(&mut self.input, &mut head, "a block header")? {
            return Ok(None);
        }
        let tag = head[0];
        let len = (&head[1..5]).get_u32_le();
        if len > MAX_BLOCK {
            return Err(corrupt(format!("block of {len} bytes (at most {MAX_BLOCK})")));
        }
        let mut payload = vec![0u8; len as usize];
        if len > 0 && !read_exact_or_truncated(&mut self.input, &mut payload, "a block")? {
            return Err(corrupt("truncated after a block header"));
        }
        Ok(Some((tag, payload)))
    }

    /// Reads only as far as the footer, seeking over event blocks (a replay
    /// needs the footer before the events; decoding them twice would double
    /// its cost). Corrupt event blocks are found by the pass that reads them.
    pub fn skip_to_footer(&mut self) -> anyhow::Result<()>
    where
        R: Seek,
    {
        while self.footer.is_none() {
            let mut head = [0u8; 5];
            if !read_exact_or_truncated(&mut self.input, &mut head, "a block header")? {
                return Err(corrupt("truncated: no footer (the recording was interrupted)"));
            }
            let len = (&head[1..5]).get_u32_le();
            if head[0] == TAG_EVENTS && len <= MAX_BLOCK {
                self.input
                    .seek(io::SeekFrom::Current(i64::from(len)))
                    .map_err(|e| EnvError::new(format!("cannot read recording: {e}")))?;
            } else {
                // Anything else is small (or invalid): the normal path judges it.
                self.input
                    .seek(io::SeekFrom::Current(-5))
                    .map_err(|e| EnvError::new(format!("cannot read recording: {e}")))?;
                self.next_block()?;
            }
        }
        Ok(())
    }

    /// The next events or listing block; None after the footer. A file
    /// without a footer (the recording was interrupted) is an error.
    pub fn next_block(&mut self) -> anyhow::Result<Option<Block>> {
        if self.footer.is_some() {
            return Ok(None);
        }
        let Some((tag, payload)) = self.raw_block()? else {
            return Err(corrupt("truncated: no footer (the recording was interrupted)"));
        };
        match tag {
            TAG_EVENTS => {
                if payload.len() % RAW_EVENT_SIZE != 0 {
                    return Err(corrupt(format!("events block of {} bytes", payload.len())));
                }
                let events = payload
                    .chunks_exact(RAW_EVENT_SIZE)
                    .map(decode::raw_from_bytes)
                    .collect::<Result<_, _>>();
                Ok(Some(Block::Events(events.map_err(|e| corrupt(e.to_string()))?)))
            }
            TAG_LISTED => {
                let entries: Vec<ListedEntry> =
                    serde_json::from_slice(&payload).map_err(|e| corrupt(format!("listing: {e}")))?;
                Ok(Some(Block::Listed(
                    entries
                        .into_iter()
                        .map(|e| ListedSocket {
                            netns: e.netns,
                            tuple: Tuple { local: e.local, remote: e.remote },
                            cookie: e.cookie,
                            state: e.state,
                            inode: 0,
                            owner: e.owner.as_ref().map(ListedOwner::owner),
                        })
                        .collect(),
                )))
            }
            TAG_FOOTER => {
                self.footer =
                    Some(serde_json::from_slice(&payload).map_err(|e| corrupt(format!("footer: {e}")))?);
                let mut rest = [0u8; 1];
                if read_exact_or_truncated(&mut self.input, &mut rest, "trailing data")? {
                    return Err(corrupt("data after the footer"));
                }
                Ok(None)
            }
            TAG_HEADER => Err(corrupt("a second header")),
            other => Err(corrupt(format!("unknown block type {other}"))),
        }
    }
}
