//! Hex encoding of bytes, for keys and digests shown to people and stored as text.

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex digits; `None` if `text` is not an even number of them.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    // Checked first: `u8::from_str_radix` would also take a sign ("+a").
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_digits_are_hex() {
        assert_eq!(from_hex("00ff7A"), Some(vec![0, 255, 122]));
        assert_eq!(to_hex(&[0, 255, 122]), "00ff7a");
        for bad in ["+a", "0", "zz", "-1", " 1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
    }
}
