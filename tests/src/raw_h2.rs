//! HTTP/2 written frame by frame, for attack tests. A well-behaved client
//! (the h2 crate) keeps within the server's stream limit and will not
//! flood resets, so attacks that break those rules are written by hand:
//! frames (RFC 9113 §4.1) and a minimal HPACK block (§ C.2 of RFC 7541:
//! static-table indexes and literals without indexing, no Huffman).
//!
//! A reader task answers the server's SETTINGS and counts what comes
//! back: response HEADERS, RST_STREAM by error code, and GOAWAY.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// RST_STREAM's code for "the client gave up on this stream".
pub const CANCEL: u32 = 0x8;
/// RST_STREAM's code for "not processed, over the stream limit".
pub const REFUSED_STREAM: u32 = 0x7;
/// GOAWAY's code for "you are misbehaving".
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// What the server sent back.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub response_headers: u64,
    /// RST_STREAM frames by error code.
    pub resets: BTreeMap<u32, u64>,
    /// The GOAWAY's error code, if one came.
    pub goaway: Option<u32>,
    /// The server closed the connection.
    pub closed: bool,
}

/// A raw HTTP/2 client connection.
#[derive(Debug)]
pub struct RawH2 {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    received: Arc<Mutex<Received>>,
    reader: JoinHandle<()>,
    next_stream: u32,
}

impl RawH2 {
    /// Sends the preface and empty SETTINGS on `stream`.
    pub async fn start(stream: TcpStream) -> std::io::Result<Self> {
        let (mut read, mut write) = stream.into_split();
        write.write_all(PREFACE).await?;
        write.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let received = Arc::new(Mutex::new(Received::default()));
        let (ack_writer, counts) = (writer.clone(), received.clone());
        let reader = tokio::spawn(async move {
            let mut header = [0u8; 9];
            // Every frame is read until the server closes; lengths are the
            // server's, bounded by its frame size limit (2^24).
            while read.read_exact(&mut header).await.is_ok() {
                let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
                let mut payload = vec![0; length];
                if read.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let (kind, flags) = (header[3], header[4]);
                let code = |at: usize| payload.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let mut counts = counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match kind {
                    HEADERS => counts.response_headers += 1,
                    RST_STREAM => *counts.resets.entry(code(0).unwrap_or(0)).or_default() += 1,
                    GOAWAY => counts.goaway = code(4),
                    SETTINGS if flags & ACK == 0 => {
                        drop(counts);
                        let _ = ack_writer.lock().await.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    _ => {}
                }
            }
            counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).closed = true;
        });
        Ok(Self { writer, received, reader, next_stream: 1 })
    }

    /// A GET of `path` for `authority` with `extra` headers, ended at once,
    /// on the next stream; returns its id. Nothing is sent yet: the frames
    /// are appended to `batch`.
    pub fn get(&mut self, batch: &mut Vec<u8>, authority: &str, path: &str, extra: &[(&str, &str)]) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        // :method GET (2), :scheme http (6), then :path and :authority as
        // literals of static names 4 and 1, then literal names.
        let mut block = vec![0x82, 0x86];
        literal_indexed_name(&mut block, 4, path);
        literal_indexed_name(&mut block, 1, authority);
        for (name, value) in extra {
            block.push(0x00);
            string(&mut block, name);
            string(&mut block, value);
        }
        batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        id
    }

    /// Appends a RST_STREAM of `stream` with `code` to `batch`.
    pub fn reset(batch: &mut Vec<u8>, stream: u32, code: u32) {
        batch.extend(frame(RST_STREAM, 0, stream, &code.to_be_bytes()));
    }

    /// Writes `batch`; an error means the server has closed the connection.
    pub async fn send(&self, batch: &[u8]) -> std::io::Result<()> {
        self.writer.lock().await.write_all(batch).await
    }

    pub fn received(&self) -> Received {
        self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], kind, flags];
    bytes.extend((stream & 0x7fff_ffff).to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// A literal header field without indexing, its name from the static
/// table (RFC 7541 §6.2.2), for indexes below 15.
fn literal_indexed_name(block: &mut Vec<u8>, index: u8, value: &str) {
    block.push(index & 0x0f);
    string(block, value);
}

/// A string literal, not Huffman-coded; test strings are under 127 bytes.
fn string(block: &mut Vec<u8>, text: &str) {
    block.push(u8::try_from(text.len()).unwrap_or(0x7f).min(0x7e));
    block.extend(text.as_bytes());
}
