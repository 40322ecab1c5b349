use super::*;

use tokio::io::AsyncReadExt;

/// Hands out its bytes at most `chunk` at a time, as a socket may.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this
            .chunk
            .min(this.bytes.len() - this.at)
            .min(buf.remaining());
        buf.put_slice(&this.bytes[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

async fn through_wrapper(bytes: &[u8], chunk: usize) -> Vec<u8> {
    let trickle = Trickle {
        bytes: bytes.to_vec(),
        at: 0,
        chunk,
    };
    let mut out = Vec::new();
    UrlAuthority::new(trickle)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameHeader {
        len: payload.len(),
        kind,
        flags,
        stream,
    }
    .write(&mut out);
    out.put_slice(payload);
    out.to_vec()
}

fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_string(out, bytes);
}

/// A first request block as grpc-go sends it: the path, authority and content type added to
/// the dynamic table (literal with incremental indexing, indexed name).
fn first_block(authority: &[u8]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    b.push(0x44); // :path, incremental indexing
    literal(&mut b, b"/etcdserverpb.Maintenance/Status");
    b.push(0x41); // :authority, incremental indexing
    literal(&mut b, authority);
    b.push(0x5f); // content-type (static index 31), incremental indexing
    literal(&mut b, b"application/grpc");
    b
}

/// A second request block that only refers to the entries the first one added.
fn second_block() -> Vec<u8> {
    // Dynamic entries, newest first: 62 content-type, 63 :authority, 64 :path.
    vec![0x83, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62]
}

/// A client's bytes: preface, SETTINGS, two requests with DATA, and a PING.
fn client_bytes(authority: &[u8]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
    bytes.extend(frame(
        FRAME_HEADERS,
        FLAG_END_HEADERS,
        1,
        &first_block(authority),
    ));
    bytes.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x05hello")); // DATA
    // The second block split over a padded, prioritized HEADERS frame and a CONTINUATION.
    let second = second_block();
    let mut headers_payload = vec![4]; // pad length
    headers_payload.extend([0x80, 0, 0, 1, 15]); // exclusive dependency on 1, weight 16
    headers_payload.extend(&second[..2]);
    headers_payload.extend([0; 4]);
    bytes.extend(frame(
        FRAME_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY,
        3,
        &headers_payload,
    ));
    bytes.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &second[2..]));
    bytes.extend(frame(0x0, FLAG_END_STREAM, 3, b"\0\0\0\0\x02hi"));
    bytes.extend(frame(0x6, 0, 0, &[7; 8])); // PING
    bytes
}

/// Splits what the server would read into frames, decoding header blocks with one decoder
/// for the connection, as the server does.
/// A frame as the server sees it: type, stream, decoded fields (header blocks) or payload.
type SeenFrame = (u8, u32, Fields, Vec<u8>);

fn server_view(bytes: &[u8]) -> Vec<SeenFrame> {
    assert_eq!(&bytes[..PREFACE.len()], PREFACE);
    let mut rest = &bytes[PREFACE.len()..];
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let header = FrameHeader::parse(rest).unwrap();
        if header.kind == FRAME_HEADERS {
            let block = HeaderBlock::gather(rest).unwrap().unwrap();
            let fields = decoder.decode(&block.fragment).unwrap();
            frames.push((header.kind, block.stream, fields, Vec::new()));
            rest = &rest[block.consumed..];
        } else {
            let payload = rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + header.len].to_vec();
            frames.push((header.kind, header.stream, Vec::new(), payload));
            rest = &rest[FRAME_HEADER_LEN + header.len..];
        }
    }
    frames
}

fn field<'a>(fields: &'a Fields, name: &[u8]) -> &'a [u8] {
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

// Property: a client that sends `http://host:port` authorities is seen by the server with
// `host:port` in every request, including requests whose authority is only a reference to
// the client's compression table, while the other fields and frames are unchanged; whatever
// size the socket's reads come in.
// Method: the same connection bytes read through the wrapper in chunks of 1, 7 and 64 KiB,
// and the result decoded as a server would.
#[tokio::test]
async fn url_authorities_reach_the_server_as_host_and_port() {
    let original = client_bytes(b"http://127.0.0.1:2379");
    for chunk in [1, 7, 65_536] {
        let seen = server_view(&through_wrapper(&original, chunk).await);
        let kinds: Vec<(u8, u32)> = seen.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            [(0x4, 0), (0x1, 1), (0x0, 1), (0x1, 3), (0x0, 3), (0x6, 0)],
            "chunk {chunk}"
        );
        for request in [&seen[1].2, &seen[3].2] {
            assert_eq!(field(request, b":authority"), b"127.0.0.1:2379");
            assert_eq!(
                field(request, b":path"),
                b"/etcdserverpb.Maintenance/Status"
            );
            assert_eq!(field(request, b":method"), b"POST");
            assert_eq!(field(request, b"content-type"), b"application/grpc");
        }
        assert_eq!(seen[2].3, b"\0\0\0\0\x05hello");
        assert_eq!(seen[4].3, b"\0\0\0\0\x02hi");
        assert_eq!(seen[5].3, [7; 8]);
    }
}

// Property: a connection whose first request carries a plain authority is passed through
// byte for byte, even when a later request would carry a URL.
#[tokio::test]
async fn plain_authorities_pass_through_unchanged() {
    let original = client_bytes(b"127.0.0.1:2379");
    for chunk in [1, 5, 65_536] {
        assert_eq!(through_wrapper(&original, chunk).await, original);
    }
}

// Property: bytes that are not an HTTP/2 connection, and a connection cut in the middle of a
// header block, reach the server as sent (the server reports the error).
#[tokio::test]
async fn other_bytes_pass_through_unchanged() {
    let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(through_wrapper(&http1, 3).await, http1);
    let whole = client_bytes(b"http://127.0.0.1:2379");
    let cut = &whole[..PREFACE.len() + 15 + 20];
    assert_eq!(through_wrapper(cut, 4).await, cut);
}

// Property: a rewritten block longer than one frame is cut into a HEADERS frame and
// CONTINUATION frames the server accepts, END_STREAM on the first and END_HEADERS on the last.
#[tokio::test]
async fn long_rewritten_blocks_span_continuation_frames() {
    let mut block = first_block(b"https://db.example:2379/");
    block.push(0x40); // a new name, incremental indexing
    literal(&mut block, b"x-padding");
    literal(&mut block, &vec![b'p'; 40_000]);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(
        FRAME_HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        5,
        &block,
    ));
    let out = through_wrapper(&bytes, 65_536).await;
    let mut rest = &out[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let header = FrameHeader::parse(rest).unwrap();
        assert!(header.len <= FRAME_PAYLOAD_MAX);
        frames.push((header.kind, header.flags, header.stream));
        rest = &rest[FRAME_HEADER_LEN + header.len..];
    }
    assert_eq!(
        frames,
        [
            (FRAME_HEADERS, FLAG_END_STREAM, 5),
            (FRAME_CONTINUATION, 0, 5),
            (FRAME_CONTINUATION, FLAG_END_HEADERS, 5),
        ]
    );
    let seen = server_view(&out);
    assert_eq!(field(&seen[0].2, b":authority"), b"db.example:2379");
    assert_eq!(field(&seen[0].2, b"x-padding").len(), 40_000);
}

#[test]
fn url_hosts() {
    assert_eq!(
        url_host(b"http://10.0.0.1:2379"),
        Some(&b"10.0.0.1:2379"[..])
    );
    assert_eq!(url_host(b"https://h:1/x/y"), Some(&b"h:1"[..]));
    assert_eq!(url_host(b"10.0.0.1:2379"), None);
    assert_eq!(url_host(b"localhost"), None);
}

#[test]
fn integers_use_the_prefix_then_continuation_bytes() {
    // RFC 7541, C.1.1 and C.1.2.
    let mut out = Vec::new();
    encode_integer(&mut out, 10, 5, 0);
    assert_eq!(out, [10]);
    out.clear();
    encode_integer(&mut out, 1337, 5, 0);
    assert_eq!(out, [31, 154, 10]);
}
