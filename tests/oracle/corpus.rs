//! The inputs the generator draws from: contact keys, customer ids, tenants, and every
//! legal way of spelling a path segment.

use std::sync::LazyLock;

/// Longest contact key or customer id (`server.max_key_bytes`, and the store's fixed 256).
pub const MAX_KEY_BYTES: usize = 256;

/// Contact keys. Index 0 is the plain US number every example-based test used, so a
/// shrunk failure keeps the key that matters rather than falling back to it. Keys that
/// one numeric normalisation would merge sit side by side (`+14088327799` and
/// `14088327799`, `0612345678` and `612345678`, `000`, `0` and `+0`, `007` and `7`).
pub static KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut keys: Vec<String> = [
        "4088327799",
        "+14088327799",
        "14088327799",
        "0612345678",
        "612345678",
        "000",
        "0",
        "+0",
        "007",
        "7",
        "408-832-7799",
        "408 832 7799",
        "408.832.7799",
        "ünï-cødé",
        "電話",
        "a+b@example.com",
    ]
    .map(str::to_owned)
    .to_vec();
    // The longest keys: all digits with a leading zero, and multi-byte UTF-8.
    keys.push(format!("0{}", "9".repeat(MAX_KEY_BYTES - 1)));
    keys.push(format!("{}x", "電".repeat((MAX_KEY_BYTES - 1) / 3)));
    debug_assert!(keys.iter().all(|k| k.len() <= MAX_KEY_BYTES));
    // One byte over: refused by both sides, never written.
    keys.push("1".repeat(MAX_KEY_BYTES + 1));
    keys
});

/// Customer ids (associations and the three customer routes).
pub const CUSTOMERS: [&str; 5] = ["ABC1234", "cust 7", "+33612345678", "007", "ünï"];

/// A tenant as the corpus names it: the two header values (absent = `None`).
#[derive(Clone, Copy, Debug)]
pub struct TenantDef {
    pub contact_center: Option<&'static str>,
    pub group: Option<&'static str>,
}

const fn tenant(contact_center: Option<&'static str>, group: Option<&'static str>) -> TenantDef {
    TenantDef {
        contact_center,
        group,
    }
}

/// Tenants: none, `ContactCenterId` only, with `GroupId`, an empty value (the same
/// tenant as none), a numeric id, and a value over 256 bytes (which the fixed gateway
/// refuses).
pub static TENANTS: LazyLock<Vec<TenantDef>> = LazyLock::new(|| {
    let long: &'static str = Box::leak("L".repeat(300).into_boxed_str());
    vec![
        tenant(None, None),
        tenant(Some("cc1"), None),
        tenant(Some("cc1"), Some("g1")),
        tenant(Some("cc2"), None),
        tenant(Some(""), None),
        tenant(Some("42"), Some("")),
        tenant(Some(long), None),
    ]
});

/// Which tenant's data a request reaches, as the store reads the headers (values
/// trimmed, empty = absent): what "the same owner" means for concurrency.
pub type TenantId = (Option<String>, Option<String>);

impl TenantDef {
    pub fn id(&self) -> TenantId {
        let norm = |v: Option<&str>| {
            v.map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        (norm(self.contact_center), norm(self.group))
    }

    /// Over the tenant length limit: the fixed gateway answers 400.
    pub fn over_long(&self) -> bool {
        [self.contact_center, self.group]
            .into_iter()
            .flatten()
            .any(|v| v.len() > MAX_KEY_BYTES)
    }
}

/// Bytes a path segment may carry literally (RFC 3986 pchar minus `;`, which the
/// gateway refuses as a path parameter).
fn literal(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn escape(out: &mut String, b: u8, lower: bool) {
    let hex = if lower {
        format!("%{b:02x}")
    } else {
        format!("%{b:02X}")
    };
    out.push_str(&hex);
}

/// The canonical spelling the oracle sends to the store: every byte but the unreserved
/// ones escaped, upper-case hex.
pub fn canonical(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            escape(&mut out, b, false);
        }
    }
    out
}

/// A small deterministic generator for per-byte spelling choices.
pub struct Bits(u32);

impl Bits {
    pub fn new(seed: u32) -> Bits {
        Bits(seed.wrapping_mul(2_654_435_761).wrapping_add(0x9E37_79B9) | 1)
    }

    pub fn next(&mut self) -> u32 {
        // xorshift32
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// One legal spelling of a path segment holding `text`; every one decodes to `text`.
/// `mode`: 0 only what must be escaped, 1 every byte (upper-case hex), 2 every byte
/// (lower-case hex), 3 a per-byte mix of literal, `%XX` and `%xx` (so `%34` for `4`
/// and `%2b` for `+` both occur).
pub fn spell(text: &str, mode: u8, seed: u32) -> String {
    let mut bits = Bits::new(seed);
    let mut out = String::new();
    for b in text.bytes() {
        let must = !literal(b);
        match mode % 4 {
            0 if !must => out.push(char::from(b)),
            0 => escape(&mut out, b, false),
            1 => escape(&mut out, b, false),
            2 => escape(&mut out, b, true),
            _ => {
                if must || bits.coin() {
                    let lower = bits.coin();
                    escape(&mut out, b, lower);
                } else {
                    out.push(char::from(b));
                }
            }
        }
    }
    out
}

/// The decoded text of a percent-encoded segment (for the tests of this module).
#[cfg(test)]
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .expect("utf-8")
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_decodes_to_the_key() {
        for key in KEYS.iter() {
            for mode in 0..4 {
                for seed in 0..20 {
                    assert_eq!(decode(&spell(key, mode, seed)), *key);
                }
            }
            assert_eq!(decode(&canonical(key)), *key);
        }
    }
}
