//! The AT Protocol's identifier syntaxes, checked once at the edge: handles, DIDs, NSIDs, record
//! keys, TIDs and AT-URIs (atproto.com/specs/{handle,did,nsid,record-key,tid,at-uri-scheme}).
//! Every rule here is exercised by the interop vectors (tests/it/pds_vectors.rs).

use std::sync::atomic::{AtomicU64, Ordering};

/// A handle: a DNS name of at least two labels, ASCII, up to 253 characters, each label 1 to 63
/// letters, digits and hyphens, not starting or ending with a hyphen, the last not starting with
/// a digit.
pub fn is_handle(text: &str) -> bool {
    if text.is_empty() || text.len() > 253 || !text.is_ascii() {
        return false;
    }
    let labels: Vec<&str> = text.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    labels.iter().all(|l| label_ok(l))
        && !labels
            .last()
            .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_digit()))
}

/// A DID: `did:<lowercase method>:<identifier>`, the identifier of ASCII letters, digits and
/// `._:%-`, not ending in `:` or `%`, the whole at most 2 KiB.
pub fn is_did(text: &str) -> bool {
    if text.len() > 2048 {
        return false;
    }
    let Some(rest) = text.strip_prefix("did:") else {
        return false;
    };
    let Some((method, identifier)) = rest.split_once(':') else {
        return false;
    };
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_lowercase())
        && !identifier.is_empty()
        && identifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:%-".contains(&b))
        && !identifier.ends_with(':')
        && !identifier.ends_with('%')
}

/// An NSID: a reversed domain authority (at least two labels, the first not starting with a
/// digit) and a name of letters and digits not starting with a digit; at most 317 characters.
pub fn is_nsid(text: &str) -> bool {
    if text.len() > 317 || !text.is_ascii() {
        return false;
    }
    let segments: Vec<&str> = text.split('.').collect();
    if segments.len() < 3 {
        return false;
    }
    let (name, authority) = segments.split_last().expect("three segments");
    let authority_ok = authority.iter().enumerate().all(|(i, s)| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
            && (i > 0 || !s.starts_with(|c: char| c.is_ascii_digit()))
    });
    authority_ok
        && !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric())
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// A record key: 1 to 512 of `A-Za-z0-9._:~-`, neither `.` nor `..`.
pub fn is_record_key(text: &str) -> bool {
    (1..=512).contains(&text.len())
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:~-".contains(&b))
}

/// The base32-sortable alphabet of TIDs.
const TID_ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// A TID: 13 base32-sortable characters encoding 64 bits with the top bit clear. Thirteen
/// characters carry 65 bits, so the first character carries the 64 bits' top one: it is one of
/// `234567ab` (the syntax's own pattern allows up to `j`, which would set the top bit, so that a
/// TID the syntax accepts could not be exceeded by any TID and [`next_tid`] would overflow).
pub fn is_tid(text: &str) -> bool {
    text.len() == 13
        && text.bytes().all(|b| TID_ALPHABET.contains(&b))
        && b"234567ab".contains(&text.as_bytes()[0])
}

/// An AT-URI naming a repository, a collection or a record:
/// `at://<did or handle>[/<nsid>[/<record key>]]`, at most 8 KiB.
pub fn is_at_uri(text: &str) -> bool {
    if text.len() > 8 * 1024 {
        return false;
    }
    let Some(rest) = text.strip_prefix("at://") else {
        return false;
    };
    let mut parts = rest.split('/');
    let authority = parts.next().unwrap_or_default();
    if !(is_did(authority) || is_handle(authority)) {
        return false;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => true,
        (Some(collection), None, _) => is_nsid(collection),
        (Some(collection), Some(rkey), None) => is_nsid(collection) && is_record_key(rkey),
        _ => false,
    }
}

/// Encodes 64 bits as a TID.
pub fn encode_tid(value: u64) -> String {
    (0..13)
        .rev()
        .map(|i| TID_ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Decodes a TID (checked with [`is_tid`]) to its 64 bits.
pub fn decode_tid(text: &str) -> Option<u64> {
    if !is_tid(text) {
        return None;
    }
    text.bytes().try_fold(0u64, |acc, b| {
        let digit = TID_ALPHABET.iter().position(|&c| c == b)? as u64;
        Some((acc << 5) | digit)
    })
}

/// The last timestamp handed out by this process, so that TIDs it makes are strictly increasing
/// even within one microsecond.
static LAST_MICROS: AtomicU64 = AtomicU64::new(0);

/// A new TID for now: microseconds since the epoch in the top 53 bits, a random 10-bit clock id
/// below. `after`, if given, is a TID the new one must exceed (a repository's last revision,
/// possibly made by another process or with a clock that ran ahead).
pub fn next_tid(after: Option<&str>) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    let mut micros = u64::try_from(now).unwrap_or(0) & ((1 << 53) - 1);
    if let Some(floor) = after.and_then(decode_tid) {
        micros = micros.max((floor >> 10) + 1);
    }
    let mut last = LAST_MICROS.load(Ordering::Relaxed);
    loop {
        let candidate = micros.max(last + 1);
        match LAST_MICROS.compare_exchange(last, candidate, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => {
                micros = candidate;
                break;
            }
            Err(actual) => last = actual,
        }
    }
    let mut clock = [0u8; 2];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut clock)
        .expect("the system's random source works");
    let clock_id = u64::from(u16::from_be_bytes(clock) & 0x3ff);
    encode_tid((micros << 10) | clock_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_round_trip_and_increase() {
        assert_eq!(encode_tid(0), "2222222222222");
        assert_eq!(decode_tid(&encode_tid(123_456_789)).unwrap(), 123_456_789);
        let mut previous = next_tid(None);
        for _ in 0..1000 {
            let next = next_tid(Some(&previous));
            assert!(is_tid(&next), "{next}");
            assert!(next > previous, "{next} <= {previous}");
            previous = next;
        }
        // A floor far in the future is exceeded.
        let future = encode_tid(((1u64 << 52) + 5) << 10);
        assert!(next_tid(Some(&future)) > future);
    }

    #[test]
    fn tids_have_the_top_bit_clear() {
        // "didmethodlval" was a TID decoding to a value with the top bit set: a repository
        // imported with such a revision made the next revision overflow. Found by the syntax
        // fuzz target.
        assert!(is_tid("bzzzzzzzzzzzz"));
        assert_eq!(decode_tid("bzzzzzzzzzzzz"), Some(u64::MAX >> 1));
        for text in ["czzzzzzzzzzzz", "jzzzzzzzzzzzz", "didmethodlval"] {
            assert!(!is_tid(text), "{text}");
            assert_eq!(decode_tid(text), None, "{text}");
        }
    }
}
