//! Client connections whose requests carry a URL as their HTTP/2 `:authority`.
//!
//! etcdctl 3.4 dials `endpoint status`, `endpoint health`, `endpoint hashkv` and `move-leader`
//! with one client per endpoint, and grpc-go then sends the endpoint exactly as given as each
//! request's `:authority`: `http://127.0.0.1:2379` when the user wrote
//! `--endpoints http://127.0.0.1:2379`. etcd's Go server accepts that; the `h2` server under
//! hyper refuses it as a malformed header and resets the stream, which etcdctl reports as
//! "stream terminated by RST_STREAM with error code: PROTOCOL_ERROR".
//!
//! [`UrlAuthority`] sits between the socket and the HTTP/2 server and reads the connection's
//! first request header block. When its `:authority` is a well-formed host (every Rust client,
//! etcdctl given bare `host:port` endpoints), the wrapper steps aside for the rest of the
//! connection and costs nothing more. When it is a URL, the wrapper decodes every header block
//! the client sends on that connection and encodes it again, with the authority reduced to the
//! URL's `host:port`, as literal fields that do not touch the server's HPACK table (so the
//! server's table never has to agree with the client's). Everything else (DATA, SETTINGS,
//! WINDOW_UPDATE frames) and the whole write direction pass through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The 24 octets every HTTP/2 client connection starts with (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header: length (24 bits), type, flags and stream id (32 bits).
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload the HTTP/2 server accepts unless it advertised more
/// (`SETTINGS_MAX_FRAME_SIZE`'s initial value); rewritten header blocks are cut at it.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// A header block (HEADERS plus CONTINUATION frames) larger than this ends the connection.
const HEADER_BLOCK_MAX: usize = 1 << 20;
const READ_CHUNK: usize = 16_384;

/// A header block's fields in order: (name, value).
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// What the wrapper does with the bytes the client sends.
#[derive(Debug)]
enum Mode {
    /// Waiting for the client preface and the first request's header block.
    Inspect,
    /// Re-encoding every header block, with its URL authority reduced to `host:port`.
    Rewrite,
    /// Out of the way: reads go straight to the socket.
    PassThrough,
}

/// A client connection whose request headers are repaired as described in the module docs.
pub struct UrlAuthority<S> {
    inner: S,
    mode: Mode,
    /// The client's header compression state, while inspecting or rewriting.
    decoder: Decoder<'static>,
    /// Received bytes not yet processed (at most part of one frame, or of one header block).
    input: BytesMut,
    /// Processed bytes not yet handed to the HTTP/2 server.
    output: BytesMut,
    /// Whether the preface was seen (in `Inspect` mode).
    preface_seen: bool,
    /// The socket reached end of file.
    eof: bool,
}

impl<S> UrlAuthority<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        UrlAuthority {
            inner,
            mode: Mode::Inspect,
            decoder: Decoder::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            preface_seen: false,
            eof: false,
        }
    }

    /// Moves every complete unit of `input` to `output`, transformed as the mode says.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::PassThrough => {
                    let rest = self.input.split();
                    self.output.extend_from_slice(&rest);
                    return Ok(());
                }
                Mode::Inspect if !self.preface_seen => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        // Not HTTP/2 with prior knowledge: none of this wrapper's business.
                        self.mode = Mode::PassThrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.output
                        .extend_from_slice(&self.input.split_to(PREFACE.len()));
                    self.preface_seen = true;
                }
                Mode::Inspect | Mode::Rewrite => {
                    if !self.process_frame()? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Processes the next frame (a header block: all of its frames) if it has fully arrived.
    fn process_frame(&mut self) -> io::Result<bool> {
        let Some(header) = FrameHeader::parse(&self.input) else {
            return Ok(false);
        };
        if header.kind != FRAME_HEADERS {
            // CONTINUATION frames are consumed with their HEADERS frame, so one here is out of
            // place; the server reports that.
            let total = FRAME_HEADER_LEN + header.len;
            if self.input.len() < total {
                return Ok(false);
            }
            self.output.extend_from_slice(&self.input.split_to(total));
            return Ok(true);
        }
        let Some(block) = HeaderBlock::gather(&self.input)? else {
            return Ok(false);
        };
        let (fields, rewritten) = match self.decode(&block.fragment) {
            Ok(decoded) => decoded,
            Err(error) if matches!(self.mode, Mode::Inspect) => {
                // Let the server see the block as sent and answer the client's mistake itself.
                tracing::debug!(?error, "undecodable first header block; passing through");
                self.mode = Mode::PassThrough;
                return Ok(true);
            }
            Err(error) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("header block: {error:?}"),
                ));
            }
        };
        if matches!(self.mode, Mode::Inspect) {
            if !rewritten {
                // The server decodes this block itself, from the bytes the client sent; its
                // table then matches the client's as it would without this wrapper.
                self.mode = Mode::PassThrough;
                return Ok(true);
            }
            tracing::debug!("client sends URL authorities; rewriting its header blocks");
            self.mode = Mode::Rewrite;
        }
        self.input.advance(block.consumed);
        encode_block(&mut self.output, &block, &fields);
        Ok(true)
    }

    /// The block's fields with a URL authority reduced to `host:port`, and whether there was
    /// one.
    fn decode(&mut self, fragment: &[u8]) -> Result<(Fields, bool), String> {
        let mut fields = Vec::new();
        let mut rewritten = false;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                let value = match (&*name, url_host(&value)) {
                    (b":authority", Some(host)) => {
                        rewritten = true;
                        host.to_vec()
                    }
                    _ => value.into_owned(),
                };
                fields.push((name.into_owned(), value));
            })
            .map_err(|error| format!("{error:?}"))?;
        Ok((fields, rewritten))
    }
}

/// `host:port` of a URL authority such as `http://host:port` or `https://host:port/`, or
/// `None` when the value has no scheme.
fn url_host(value: &[u8]) -> Option<&[u8]> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(&rest[..end])
}

#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let b = bytes.get(..FRAME_HEADER_LEN)?;
        Some(FrameHeader {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    fn write(&self, out: &mut BytesMut) {
        let len = u32::try_from(self.len).expect("frame payloads are cut below 16 MiB");
        out.put_slice(&len.to_be_bytes()[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream);
    }
}

/// A HEADERS frame and its CONTINUATION frames, as received.
#[derive(Debug)]
struct HeaderBlock {
    stream: u32,
    end_stream: bool,
    /// The concatenated header block fragment, without padding or priority fields.
    fragment: Vec<u8>,
    /// Bytes of input the frames take.
    consumed: usize,
}

impl HeaderBlock {
    /// The block at the start of `input` (which starts with a HEADERS frame), or `None` until
    /// all of its frames have arrived.
    fn gather(input: &[u8]) -> io::Result<Option<HeaderBlock>> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let first = FrameHeader::parse(input).expect("the caller parsed this header");
        let mut at = 0;
        let mut fragment = Vec::new();
        let mut header = first;
        loop {
            let start = at + FRAME_HEADER_LEN;
            let Some(payload) = input.get(start..start + header.len) else {
                return Ok(None);
            };
            let mut payload = payload;
            if header.kind == FRAME_HEADERS {
                if header.flags & FLAG_PADDED != 0 {
                    let (&pad, rest) = payload
                        .split_first()
                        .ok_or_else(|| invalid("HEADERS frame too short for its padding"))?;
                    payload = rest
                        .get(..rest.len().saturating_sub(usize::from(pad)))
                        .filter(|_| usize::from(pad) <= rest.len())
                        .ok_or_else(|| invalid("HEADERS padding longer than the frame"))?;
                }
                if header.flags & FLAG_PRIORITY != 0 {
                    payload = payload
                        .get(5..)
                        .ok_or_else(|| invalid("HEADERS frame too short for its priority"))?;
                }
            }
            fragment.extend_from_slice(payload);
            if fragment.len() > HEADER_BLOCK_MAX {
                return Err(invalid("header block too large"));
            }
            at = start + header.len;
            if header.flags & FLAG_END_HEADERS != 0 {
                return Ok(Some(HeaderBlock {
                    stream: first.stream,
                    end_stream: first.flags & FLAG_END_STREAM != 0,
                    fragment,
                    consumed: at,
                }));
            }
            let Some(next) = FrameHeader::parse(&input[at..]) else {
                return Ok(None);
            };
            if next.kind != FRAME_CONTINUATION || next.stream != first.stream {
                return Err(invalid("header block interrupted by another frame"));
            }
            header = next;
        }
    }
}

/// Writes `fields` as the header block of a HEADERS frame (and CONTINUATION frames when it
/// exceeds one frame), each field a literal without indexing and with a literal name.
fn encode_block(out: &mut BytesMut, block: &HeaderBlock, fields: &Fields) {
    let mut encoded = Vec::new();
    for (name, value) in fields {
        encoded.push(0x00);
        encode_string(&mut encoded, name);
        encode_string(&mut encoded, value);
    }
    let mut chunks = encoded.chunks(FRAME_PAYLOAD_MAX).peekable();
    let mut first = true;
    // An empty block still needs its HEADERS frame.
    let empty: &[u8] = &[];
    let mut next = chunks.next().or(Some(empty));
    while let Some(chunk) = next {
        next = chunks.next();
        let mut flags = 0;
        if first && block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if next.is_none() {
            flags |= FLAG_END_HEADERS;
        }
        let kind = if first {
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        FrameHeader {
            len: chunk.len(),
            kind,
            flags,
            stream: block.stream,
        }
        .write(out);
        out.put_slice(chunk);
        first = false;
    }
}

/// An HPACK string literal without Huffman coding (RFC 7541, section 5.2).
fn encode_string(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_integer(out, bytes.len(), 7, 0x00);
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541, section 5.1).
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first_byte: u8) {
    let limit = (1usize << prefix_bits) - 1;
    if value < limit {
        out.push(first_byte | value as u8);
        return;
    }
    out.push(first_byte | limit as u8);
    value -= limit;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for UrlAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is an incomplete frame: hand it over for the server to
                // report, then end of file.
                let rest = this.input.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.output = rest;
                continue;
            }
            if matches!(this.mode, Mode::PassThrough) && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
            if chunk_buf.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(chunk_buf.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for UrlAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
