//! The body type every handler answers with, its constructors, and a short text
//! built on the stack for header values.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors carried inside response and request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every handler answers with.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A short text written without allocating: header values built on every request
/// (`Cache-Status` of a hit, the client address in the forwarding headers).
pub struct StackText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    /// Appends `text`; past 64 bytes nothing is written and the result is an error.
    pub fn push(&mut self, text: &[u8]) -> std::fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(text);
        self.len = end;
        Ok(())
    }

    /// Appends the decimal digits of `n`.
    pub fn push_integer(&mut self, n: impl itoa::Integer) -> std::fmt::Result {
        self.push(itoa::Buffer::new().format(n).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes())
    }
}
