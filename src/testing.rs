//! Helpers for tests, fuzz targets and benchmarks: what a client sends, an in-memory socket, a shard context. Not part of the server's API.

use crate::config::Config;
use crate::conn::Ctx;
use crate::conn::io::{SendVectored, Transport};
use crate::node::Shared;
use crate::node::inbox::{Inbox, Waker};
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

/// A socket in memory: reads hand out `input` (then WouldBlock), writes are
/// counted, and kept in `output` when it is `Some` (else discarded).
#[derive(Debug, Default)]
pub struct MemorySocket {
    /// Bytes still to be read.
    pub input: Vec<u8>,
    /// Bytes written so far.
    pub written: usize,
    /// What was written, when kept.
    pub output: Option<Vec<u8>>,
}

impl Read for MemorySocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        for (dst, src) in buf.iter_mut().zip(self.input.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl Write for MemorySocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum();
        self.written += n;
        if let Some(output) = &mut self.output {
            for buf in bufs {
                output.extend_from_slice(buf);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SendVectored for MemorySocket {}

impl Transport for MemorySocket {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A context for shard 0 of node "n1" of a one-shard server with `config`,
/// whose inbox nobody reads (the mio poll it was made with is dropped).
pub fn context(config: Config) -> Ctx {
    let config = Arc::new(config);
    let inbox = mio::Poll::new()
        .and_then(|poll| mio::Waker::new(poll.registry(), mio::Token(0)))
        .map(|waker| Arc::new(Inbox::new(Waker::Poll(waker))));
    let inboxes = match inbox {
        Ok(inbox) => vec![inbox],
        Err(error) => panic!("an epoll instance for a test context: {error}"),
    };
    let shared = match Shared::new(config, Arc::from("n1"), inboxes) {
        Ok(shared) => Arc::new(shared),
        Err(error) => panic!("a node for a test context: {error}"),
    };
    Ctx::new(shared, 0)
}

/// A masked client frame, as a browser sends it: FIN bit, opcode, payload,
/// and the shortest length encoding. The mask key is fixed (any key is
/// valid; tests want repeatable bytes).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 | opcode } else { opcode });
    let len = payload.len();
    if let Ok(short @ 0..=125) = u8::try_from(len) {
        out.push(0x80 | short);
    } else if let Ok(medium) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&medium.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
    out
}

/// `payload` as one message of permessage-deflate: a raw deflate stream of
/// its own, sync-flushed, its trailer cut (RFC 7692 section 7.2.1).
pub fn deflate(payload: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    let mut input = payload;
    loop {
        let before = compress.total_in();
        if compress.compress_vec(input, &mut out, FlushCompress::Sync).is_err() {
            break;
        }
        let used = usize::try_from(compress.total_in() - before).unwrap_or(usize::MAX);
        input = input.get(used..).unwrap_or_default();
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    out.truncate(out.len().saturating_sub(4));
    out
}

/// A masked client frame of a compressed message (RSV1 set), as
/// [`client_frame`]; `payload` is already compressed (see [`deflate`]).
pub fn compressed_client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_frame(fin, opcode, payload);
    if let Some(first) = frame.first_mut() {
        *first |= 0x40;
    }
    frame
}
