//! A small iterative JSON tokenizer over upstream bytes: validates exactly what
//! `serde_json::from_slice` validates (grammar, UTF-8, escapes, unpaired surrogates,
//! control characters), reports spans instead of building values, and has no depth
//! limit: skipping a value keeps one byte per open container on a heap stack.
//!
//! It also notes, per value, the two things that decide whether a span can be copied
//! as is: insignificant whitespace or an escape the oracle would respell (`dirty`), and
//! a duplicate or escaped object key anywhere (`irregular`; the oracle keeps the last
//! value of a duplicate at the first key's position).

use super::ScanError;

/// A byte range of the body. `u32` halves the index; bodies over 4 GiB are refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn of(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
    /// A string span without its quotes.
    pub fn inner(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize + 1..self.end as usize - 1]
    }
}

const OBJECT: u8 = b'{';
const ARRAY: u8 = b'[';

pub(super) struct Scanner<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    /// Whitespace between tokens, or a `\/` or `\u` escape, was passed since the last reset.
    pub dirty: bool,
    /// A key with an escape, or a duplicate key in one object, was passed since the last reset.
    pub irregular: bool,
    /// Open containers of [`Scanner::skip_value`].
    stack: Vec<u8>,
    /// Keys of the open objects of `skip_value`, for the duplicate check on close.
    keys: Vec<Span>,
    frames: Vec<usize>,
}

impl<'a> Scanner<'a> {
    pub fn new(buf: &'a [u8]) -> Scanner<'a> {
        Scanner {
            buf,
            pos: 0,
            dirty: false,
            irregular: false,
            stack: Vec::new(),
            keys: Vec::new(),
            frames: Vec::new(),
        }
    }

    pub fn error(&self, reason: &'static str) -> ScanError {
        ScanError::Syntax {
            offset: self.pos,
            reason,
        }
    }

    pub fn ws(&mut self) {
        let start = self.pos;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.pos) {
            self.pos += 1;
        }
        self.dirty |= self.pos != start;
    }

    pub fn peek(&self) -> Result<u8, ScanError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.error("unexpected end of input"))
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn span(&self, start: usize) -> Span {
        // Bodies are checked to fit u32 before scanning starts.
        Span {
            start: start as u32,
            end: self.pos as u32,
        }
    }

    /// Consumes `{` or `[` (the caller has peeked it).
    pub fn enter(&mut self) {
        self.pos += 1;
    }

    /// The next key of an object entered with [`Scanner::enter`], with the `:` after it
    /// consumed; `None` at the closing brace.
    pub fn next_key(&mut self, first: &mut bool) -> Result<Option<Span>, ScanError> {
        self.ws();
        let b = self.peek()?;
        if *first {
            *first = false;
            if b == b'}' {
                self.pos += 1;
                return Ok(None);
            }
        } else {
            match b {
                b',' => {
                    self.pos += 1;
                    self.ws();
                }
                b'}' => {
                    self.pos += 1;
                    return Ok(None);
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
        self.key().map(Some)
    }

    /// Is there another element in an array entered with [`Scanner::enter`]?
    pub fn next_element(&mut self, first: &mut bool) -> Result<bool, ScanError> {
        self.ws();
        let b = self.peek()?;
        if b == b']' {
            self.pos += 1;
            return Ok(false);
        }
        if *first {
            *first = false;
            return Ok(true);
        }
        if b == b',' {
            self.pos += 1;
            return Ok(true);
        }
        Err(self.error("expected ',' or ']'"))
    }

    /// A key string and its `:`; leaves `pos` at the value.
    fn key(&mut self) -> Result<Span, ScanError> {
        if self.peek()? != b'"' {
            return Err(self.error("expected a key string"));
        }
        let start = self.pos;
        let escaped = self.string()?;
        self.irregular |= escaped;
        let key = self.span(start);
        self.ws();
        if self.peek()? != b':' {
            return Err(self.error("expected ':'"));
        }
        self.pos += 1;
        self.ws();
        Ok(key)
    }

    /// Skips one value (after optional whitespace) of any depth and returns its span.
    pub fn skip_value(&mut self) -> Result<Span, ScanError> {
        self.ws();
        let start = self.pos;
        let base = self.stack.len();
        loop {
            if self.open_or_scalar()? {
                continue;
            }
            loop {
                if self.stack.len() == base {
                    return Ok(self.span(start));
                }
                self.ws();
                let top = self.stack[self.stack.len() - 1];
                match (top, self.peek()?) {
                    (_, b',') => {
                        self.pos += 1;
                        self.ws();
                        if top == OBJECT {
                            let key = self.key()?;
                            self.keys.push(key);
                        }
                        break;
                    }
                    (OBJECT, b'}') => {
                        self.pos += 1;
                        self.close_object();
                    }
                    (ARRAY, b']') => {
                        self.pos += 1;
                        self.stack.pop();
                    }
                    _ => return Err(self.error("expected ',' or a closing bracket")),
                }
            }
        }
    }

    /// Reads a scalar, or opens a non-empty container (consuming an object's first key).
    /// True when a container was opened, i.e. a value is expected next.
    fn open_or_scalar(&mut self) -> Result<bool, ScanError> {
        self.ws();
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.pos += 1;
                    return Ok(false);
                }
                self.stack.push(OBJECT);
                self.frames.push(self.keys.len());
                let key = self.key()?;
                self.keys.push(key);
                Ok(true)
            }
            b'[' => {
                self.pos += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.pos += 1;
                    return Ok(false);
                }
                self.stack.push(ARRAY);
                Ok(true)
            }
            b'"' => self.string().map(|_| false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| false),
            _ => Err(self.error("expected a value")),
        }
    }

    fn close_object(&mut self) {
        self.stack.pop();
        let frame = self.frames.pop().unwrap_or(0);
        self.irregular |= has_duplicate(self.buf, &mut self.keys[frame..]);
        self.keys.truncate(frame);
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<bool, ScanError> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(false)
        } else {
            Err(self.error("expected a literal"))
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, as RFC 8259 and serde_json read it.
    pub fn number(&mut self) -> Result<(), ScanError> {
        let digits = |s: &mut Self| {
            let start = s.pos;
            while s.buf.get(s.pos).is_some_and(u8::is_ascii_digit) {
                s.pos += 1;
            }
            s.pos - start
        };
        if self.buf.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.buf.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.buf.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.buf.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.buf.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    /// A string at `pos` (on its opening quote). True when it holds an escape.
    pub fn string(&mut self) -> Result<bool, ScanError> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.pos += plain_ascii_run(&self.buf[self.pos..]);
            match self.buf.get(self.pos) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(&b) if b >= 0x80 => {
                    // Every byte of a multi-byte character is >= 0x80, so a run of them
                    // is a sequence of whole characters when it is valid UTF-8.
                    let run = self.buf[self.pos..]
                        .iter()
                        .position(|&b| b < 0x80)
                        .unwrap_or(self.buf.len() - self.pos);
                    if std::str::from_utf8(&self.buf[self.pos..self.pos + run]).is_err() {
                        return Err(self.error("invalid UTF-8 in a string"));
                    }
                    self.pos += run;
                }
                Some(_) => return Err(self.error("control character in a string")),
            }
        }
    }

    /// One escape at `pos` (on the backslash).
    fn escape(&mut self) -> Result<(), ScanError> {
        match self.buf.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 2;
                Ok(())
            }
            Some(b'/') => {
                self.dirty = true;
                self.pos += 2;
                Ok(())
            }
            Some(b'u') => {
                self.dirty = true;
                let unit = self.hex4(self.pos + 2)?;
                self.pos += 6;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = if self.buf[self.pos..].starts_with(b"\\u") {
                            self.hex4(self.pos + 2)?
                        } else {
                            0
                        };
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(self.error("lone leading surrogate"));
                        }
                        self.pos += 6;
                        Ok(())
                    }
                    0xDC00..=0xDFFF => Err(self.error("lone trailing surrogate")),
                    _ => Ok(()),
                }
            }
            _ => Err(self.error("invalid escape")),
        }
    }

    fn hex4(&self, at: usize) -> Result<u32, ScanError> {
        let digits = self
            .buf
            .get(at..at + 4)
            .ok_or_else(|| self.error("unexpected end of hex escape"))?;
        let mut unit = 0;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid hex escape"))?;
            unit = unit * 16 + v;
        }
        Ok(unit)
    }
}

/// The length of the leading run of bytes that a string passes over as they are: ASCII,
/// neither `"` nor `\\` nor a control character. Eight bytes at a time (the classic
/// "has zero byte" word tricks: a flag can be wrong only above a byte that is truly
/// flagged, so the lowest flag is exact).
pub(super) fn plain_ascii_run(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("an 8-byte slice"));
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let stops = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w)
            | w;
        let stops = stops & HIGH;
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))
        .unwrap_or(s.len() - i)
}

/// Do two keys of one object have the same bytes? Keys are compared as written, which is
/// exact because a key with an escape already marks its service irregular.
pub(super) fn has_duplicate(buf: &[u8], keys: &mut [Span]) -> bool {
    // Two keys can be equal only if their lengths and first and last content bytes are;
    // comparing that fingerprint first leaves the byte comparison to true candidates.
    let fingerprint = |k: &Span| {
        let bytes = k.of(buf);
        let edge = |i: usize| u64::from(bytes.get(i).copied().unwrap_or(0));
        (u64::from(k.end - k.start) << 16) | (edge(1) << 8) | edge(bytes.len().wrapping_sub(2))
    };
    if keys.len() < 2 || !bloom_collides(buf, keys) {
        return false;
    }
    match keys.len() {
        0 | 1 => false,
        n @ 2..=32 => {
            let mut prints = [0u64; 32];
            for (print, key) in prints.iter_mut().zip(keys.iter()) {
                *print = fingerprint(key);
            }
            (1..n).any(|i| {
                (0..i).any(|j| prints[j] == prints[i] && keys[j].of(buf) == keys[i].of(buf))
            })
        }
        _ => {
            // Sorting the frame's spans in place is fine: they are dropped after the check.
            keys.sort_unstable_by(|a, b| a.of(buf).cmp(b.of(buf)));
            keys.windows(2).any(|w| w[0].of(buf) == w[1].of(buf))
        }
    }
}

/// Do two keys fall in the same of 256 buckets (by length and edge bytes)? Distinct keys
/// of a small object rarely do, which settles most objects in one pass; a collision sends
/// the object to the exact comparison.
fn bloom_collides(buf: &[u8], keys: &[Span]) -> bool {
    let mut seen = [0u64; 4];
    for k in keys {
        let (start, end) = (k.start as usize, k.end as usize);
        let edge = |i: usize| u32::from(buf.get(i).copied().unwrap_or(0));
        let h = ((end - start) as u32)
            .wrapping_mul(0x9E37_79B1)
            .wrapping_add(edge(start + 1).wrapping_mul(0x85EB_CA77))
            .wrapping_add(edge(end.wrapping_sub(2)).wrapping_mul(0xC2B2_AE3D));
        let bucket = (h >> 24) as usize;
        let (word, bit) = (bucket >> 6, 1u64 << (bucket & 63));
        if seen[word] & bit != 0 {
            return true;
        }
        seen[word] |= bit;
    }
    false
}
