//! `canonicalise` against its reference, and the literal-byte table against its rule.

use std::borrow::Cow;

use super::super::path::{has_stray_percent, LITERAL};
use super::super::{canonical_path, canonicalise, check_path};

proptest::proptest! {
    /// The fast paths give what the reference does: `check_path` then the stray-'%'
    /// rule then `canonical_path`.
    #[test]
    fn canonicalise_is_check_then_canonical(path in "[a-z/.%;+~:@A-F0-9 é]{0,16}") {
        let reference = check_path(&path).map(|()| {
            if has_stray_percent(&path) {
                path.clone()
            } else {
                canonical_path(&path).into_owned()
            }
        });
        proptest::prop_assert_eq!(
            canonicalise(&path).map(Cow::into_owned).map_err(|e| e.to_string()),
            reference.map_err(|e| e.to_string())
        );
    }

    #[test]
    fn the_literal_table_is_the_rule(b in 0u8..=255) {
        let rule = b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,=:@".contains(&b);
        proptest::prop_assert_eq!(LITERAL[usize::from(b)], rule);
    }
}
