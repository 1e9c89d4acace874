//! Raw HTTP/2 frames for tests that must send what no well-behaved client sends
//! (a second HEADERS without END_STREAM, a pseudo-header in trailers, a body that
//! disagrees with its content-length).

/// One HTTP/2 frame as written on the wire (RFC 9113 §4.1).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block of HPACK literals without indexing, new names, no Huffman
/// (RFC 7541 §6.2.2): enough for a client, no encoder needed.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(u8::try_from(name.len()).expect("short name"));
        out.extend_from_slice(name.as_bytes());
        out.push(u8::try_from(value.len()).expect("short value"));
        out.extend_from_slice(value.as_bytes());
    }
    out
}

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
