//! The fast path of the tokenizer, for the bodies upstreams actually send: compact JSON
//! (no whitespace between tokens) without a single backslash or control character.
//!
//! Stage 1 ([`Tape::build`]) classifies 64 bytes at a time into bit masks (SSE2 through
//! `safe_arch` on x86_64, a byte loop elsewhere), works out which bytes are inside strings
//! with a prefix XOR of the quote mask, and records the position of every structural
//! character outside strings and of the first byte of every scalar; strings are found
//! later from the quote masks it keeps. It refuses (`None`) any body outside the fast
//! path — a backslash, a control character, a string left open, invalid UTF-8 — and
//! stage 2 ([`Reader`]) gives up on anything it does not read
//! as valid JSON. Either way the caller reads the body again with
//! [`super::scan::Scanner`], which decides and names the error. So this file only has to
//! be right about the bodies it accepts: for those it finds the tokens, spans and
//! duplicate keys `Scanner` finds, and `Scanner`'s `dirty` flag is always false (no
//! whitespace, no `\/`, no `\u`), as is an escaped key.
//!
//! Stage 2 walks the tape instead of the bytes: a string ends at the next quote bit, a
//! scalar runs to the next tape entry, so the cost of a token no longer depends on its
//! length. On the 36 KB bench answer (50 services) parsing takes 571 k instructions
//! against the scanner's 818 k (callgrind).

use super::scan::{has_duplicate, Span};
use super::ScanError;

/// Token boundaries of a body: every structural character outside strings and the first
/// byte of every scalar, ending with a sentinel at `buf.len()`; strings are found through
/// `quotes`, the quote mask of each 64-byte block.
pub(super) struct Tape {
    at: Vec<u32>,
    quotes: Vec<u64>,
}

/// The masks of one 64-byte block: bit `i` describes byte `i`.
#[derive(Default)]
struct Masks {
    quote: u64,
    /// `{ } [ ] : ,`
    structural: u64,
    /// A backslash or a byte below 0x20: outside the fast path.
    refuse: u64,
    /// Bytes of 0x80 and above: the body needs a UTF-8 check.
    high: u64,
}

impl Tape {
    /// The tape of a compact body, or `None` when the body is outside the fast path.
    pub fn build(buf: &[u8]) -> Option<Tape> {
        let len = u32::try_from(buf.len()).ok()?;
        let blocks = buf.len().div_ceil(64);
        // Compact JSON has a token boundary every 4 to 8 bytes.
        let mut at = Vec::with_capacity(buf.len() / 4 + 2);
        let mut quotes = Vec::with_capacity(blocks + 1);
        let mut in_string = 0u64; // all ones when the previous block ended inside a string
        let mut prev_other = 0u64; // the previous block's last byte was part of a scalar
        let mut high = 0u64;
        let mut padded = [b' '; 64];
        for (block, chunk) in buf.chunks(64).enumerate() {
            let (m, valid) = match <&[u8; 64]>::try_from(chunk) {
                Ok(full) => (classify(full), u64::MAX),
                Err(_) => {
                    // The tail, padded with spaces that `valid` drops.
                    padded[..chunk.len()].copy_from_slice(chunk);
                    (classify(&padded), (1u64 << chunk.len()) - 1)
                }
            };
            high |= m.high;
            if m.refuse & valid != 0 {
                return None;
            }
            // Set from an opening quote up to (not including) its closing quote.
            let inside = prefix_xor(m.quote) ^ in_string;
            in_string = ((inside as i64) >> 63) as u64;
            let outside = !inside & !m.quote & valid;
            let structural = m.structural & outside;
            // A space outside strings is "other" too: it starts or ends a scalar, which then
            // fails `valid_scalar`, or sits where a token must, so stage 2 gives up on it.
            let other = outside & !m.structural;
            let scalar_start = other & !((other << 1) | prev_other);
            prev_other = other >> 63;
            quotes.push(m.quote & valid);
            let mut bits = structural | scalar_start;
            let base = (block * 64) as u32;
            while bits != 0 {
                at.push(base + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        if in_string != 0 || (high != 0 && std::str::from_utf8(buf).is_err()) {
            return None;
        }
        at.push(len);
        quotes.push(0);
        Some(Tape { at, quotes })
    }

    pub fn reader<'a>(&'a self, buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            at: &self.at,
            quotes: &self.quotes,
            t: 0,
            pos: 0,
            irregular: false,
            stack: Vec::new(),
            keys: Vec::new(),
            frames: Vec::new(),
        }
    }
}

/// `x ^ x << 1 ^ x << 2 ^ …`: bit i is the parity of bits 0..=i.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

#[cfg(target_arch = "x86_64")]
fn classify(block: &[u8; 64]) -> Masks {
    use safe_arch::{
        bitor_m128i as or, cmp_eq_mask_i8_m128i as eq, load_unaligned_m128i, max_u8_m128i,
        move_mask_i8_m128i, set_splat_i8_m128i,
    };
    let splat = |b: u8| set_splat_i8_m128i(b as i8);
    let (quote, backslash) = (splat(b'"'), splat(b'\\'));
    // `[` and `]` are `{` and `}` without bit 0x20.
    let (bit5, open, close) = (splat(0x20), splat(b'{'), splat(b'}'));
    let (colon, comma, control) = (splat(b':'), splat(b','), splat(0x1f));
    let mut m = Masks::default();
    for (i, lane) in block.chunks_exact(16).enumerate() {
        let v = load_unaligned_m128i(lane.try_into().expect("a 16-byte lane"));
        let bits = |x| u64::from(move_mask_i8_m128i(x) as u16) << (16 * i);
        m.quote |= bits(eq(v, quote));
        let folded = or(v, bit5);
        let structural = or(
            or(eq(folded, open), eq(folded, close)),
            or(eq(v, colon), eq(v, comma)),
        );
        m.structural |= bits(structural);
        // Unsigned v <= 0x1f: max(v, 0x1f) == 0x1f.
        let below = eq(max_u8_m128i(v, control), control);
        m.refuse |= bits(or(below, eq(v, backslash)));
        m.high |= bits(v);
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(block: &[u8; 64]) -> Masks {
    let mut m = Masks::default();
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        match b {
            b'"' => m.quote |= bit,
            b'{' | b'}' | b'[' | b']' | b':' | b',' => m.structural |= bit,
            b'\\' | 0..=0x1f => m.refuse |= bit,
            0x80.. => m.high |= bit,
            _ => {}
        }
    }
    m
}

const OBJECT: u8 = b'{';
const ARRAY: u8 = b'[';

/// Stage 2: [`super::scan::Scanner`]'s reading interface over a tape. `pos` is the byte
/// position of the next token and `at[t]` the first tape entry at or after it: the token
/// itself unless it is a string (a compact body has no byte between two tokens).
pub(super) struct Reader<'a> {
    pub buf: &'a [u8],
    at: &'a [u32],
    quotes: &'a [u64],
    t: usize,
    pub pos: usize,
    pub irregular: bool,
    stack: Vec<u8>,
    keys: Vec<Span>,
    frames: Vec<usize>,
}

/// What stage 2 reports when it stops: the caller reads the body again with `Scanner`
/// for the real error.
pub(super) fn refused() -> ScanError {
    ScanError::Syntax {
        offset: 0,
        reason: "outside the fast path",
    }
}

impl<'a> Reader<'a> {
    pub fn peek(&self) -> Result<u8, ScanError> {
        self.buf.get(self.pos).copied().ok_or_else(refused)
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Consumes one structural byte at `pos` (which is `at[t]`).
    fn step(&mut self) {
        self.pos += 1;
        self.t += 1;
    }

    /// Consumes `{` or `[` (the caller has peeked it).
    pub fn enter(&mut self) {
        self.step();
    }

    pub fn next_key(&mut self, first: &mut bool) -> Result<Option<Span>, ScanError> {
        let b = self.peek()?;
        if *first {
            *first = false;
            if b == b'}' {
                self.step();
                return Ok(None);
            }
        } else {
            match b {
                b',' => self.step(),
                b'}' => {
                    self.step();
                    return Ok(None);
                }
                _ => return Err(refused()),
            }
        }
        self.key().map(Some)
    }

    pub fn next_element(&mut self, first: &mut bool) -> Result<bool, ScanError> {
        let b = self.peek()?;
        if b == b']' {
            self.step();
            return Ok(false);
        }
        if *first {
            *first = false;
            return Ok(true);
        }
        if b == b',' {
            self.step();
            return Ok(true);
        }
        Err(refused())
    }

    /// A string at `pos` (on its opening quote): its span, quotes included. The closing
    /// quote is the next bit of the quote masks; stage 1 left no string open.
    fn string(&mut self) -> Result<Span, ScanError> {
        let from = self.pos + 1;
        let mut block = from / 64;
        let mut word = self.quotes.get(block).ok_or_else(refused)? & (u64::MAX << (from % 64));
        while word == 0 {
            block += 1;
            word = *self.quotes.get(block).ok_or_else(refused)?;
        }
        let end = block * 64 + word.trailing_zeros() as usize + 1;
        let start = self.pos as u32;
        self.pos = end;
        Ok(Span {
            start,
            end: end as u32,
        })
    }

    /// A key string and its `:`.
    fn key(&mut self) -> Result<Span, ScanError> {
        if self.peek()? != b'"' {
            return Err(refused());
        }
        let key = self.string()?;
        if self.peek()? != b':' {
            return Err(refused());
        }
        self.step();
        Ok(key)
    }

    /// A number or literal at `pos`: it runs to the next tape entry.
    fn scalar(&mut self) -> Result<(), ScanError> {
        let end = *self.at.get(self.t + 1).ok_or_else(refused)? as usize;
        if self.at[self.t] as usize != self.pos || !valid_scalar(&self.buf[self.pos..end]) {
            return Err(refused());
        }
        self.pos = end;
        self.t += 1;
        Ok(())
    }

    /// Skips one value of any depth and returns its span; keys of every object inside
    /// are checked for duplicates as `Scanner::skip_value` checks them.
    pub fn skip_value(&mut self) -> Result<Span, ScanError> {
        let start = self.pos;
        let base = self.stack.len();
        loop {
            match self.peek()? {
                b'{' => {
                    self.step();
                    if self.peek()? == b'}' {
                        self.step();
                    } else {
                        self.stack.push(OBJECT);
                        self.frames.push(self.keys.len());
                        let key = self.key()?;
                        self.keys.push(key);
                        continue;
                    }
                }
                b'[' => {
                    self.step();
                    if self.peek()? == b']' {
                        self.step();
                    } else {
                        self.stack.push(ARRAY);
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                _ => self.scalar()?,
            }
            // After a value: close what ends here, or move to the next member.
            loop {
                let Some(&top) = self.stack[base..].last() else {
                    return Ok(Span {
                        start: start as u32,
                        end: self.pos as u32,
                    });
                };
                match (top, self.peek()?) {
                    (_, b',') => {
                        self.step();
                        if top == OBJECT {
                            let key = self.key()?;
                            self.keys.push(key);
                        }
                        break;
                    }
                    (OBJECT, b'}') => {
                        self.step();
                        self.stack.pop();
                        let frame = self.frames.pop().unwrap_or(0);
                        self.irregular |= has_duplicate(self.buf, &mut self.keys[frame..]);
                        self.keys.truncate(frame);
                    }
                    (ARRAY, b']') => {
                        self.step();
                        self.stack.pop();
                    }
                    _ => return Err(refused()),
                }
            }
        }
    }
}

/// `true`, `false`, `null`, or a number as RFC 8259 spells it, filling all of `s`.
fn valid_scalar(s: &[u8]) -> bool {
    match s.first() {
        Some(b't') => s == b"true",
        Some(b'f') => s == b"false",
        Some(b'n') => s == b"null",
        Some(_) => valid_number(s),
        None => false,
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, exactly.
fn valid_number(s: &[u8]) -> bool {
    let mut i = usize::from(s.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = s.get(i) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == s.len()
}
