//! Sui address ownership proofs. A user proves an address by signing, with its key, a personal
//! message that names the user: Sui wallets sign `Blake2b-256(intent || BCS(message))` with the
//! PersonalMessage intent `[3, 0, 0]`, where BCS of a byte vector is its ULEB128 length and the
//! bytes. The serialized signature is `flag || signature || public key` (base64), and the
//! address is `0x` + hex of `Blake2b-256(flag || public key)`. Ed25519 keys (flag 0x00) are
//! accepted; other schemes are refused with a clear error rather than half-checked.

use base64::Engine;
use blake2::{Blake2b, Digest, digest::consts::U32};
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::error::{Error, Result};

const PERSONAL_MESSAGE_INTENT: [u8; 3] = [3, 0, 0];
const ED25519_FLAG: u8 = 0x00;

/// The message a user signs to prove an address: it names the user, so that a proof cannot be
/// replayed for anyone else.
pub fn proof_message(user_id: uuid::Uuid) -> String {
    format!("quintet market: Sui address proof for user {user_id}")
}

fn blake2b256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Blake2b::<U32>::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn uleb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The digest a wallet signs for `message`.
pub fn personal_message_digest(message: &[u8]) -> [u8; 32] {
    let mut bcs = Vec::with_capacity(message.len() + 5);
    uleb128(message.len(), &mut bcs);
    bcs.extend_from_slice(message);
    blake2b256(&[&PERSONAL_MESSAGE_INTENT, &bcs])
}

/// The address of an Ed25519 public key.
pub fn ed25519_address(public_key: &[u8; 32]) -> String {
    let digest = blake2b256(&[&[ED25519_FLAG], public_key]);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{hex}")
}

/// Verifies a serialized signature of `message` and returns the signer's address.
pub fn verify_personal_message(field: &str, signature: &str, message: &[u8]) -> Result<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Error::invalid_argument(field, "not base64 (a Sui serialized signature)"))?;
    let Some((&flag, rest)) = bytes.split_first() else {
        return Err(Error::invalid_argument(field, "empty"));
    };
    if flag != ED25519_FLAG {
        return Err(Error::invalid_argument(
            field,
            format!(
                "signature scheme flag {flag:#04x} is not supported: sign with an Ed25519 key (flag 0x00)"
            ),
        ));
    }
    if rest.len() != 64 + 32 {
        return Err(Error::invalid_argument(
            field,
            "an Ed25519 Sui signature is flag, 64 signature bytes and a 32-byte public key",
        ));
    }
    let (sig, public_key) = rest.split_at(64);
    let digest = personal_message_digest(message);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&digest, sig)
        .map_err(|_| {
            Error::invalid_argument_because(
                "SIGNATURE_FAILED",
                field,
                "not a signature of the proof message by this key",
            )
        })?;
    Ok(ed25519_address(public_key.try_into().expect("32 bytes")))
}

/// A serialized signature of `message` by `key` (tests and tools: what a wallet produces).
pub fn sign_personal_message(key: &ring::signature::Ed25519KeyPair, message: &[u8]) -> String {
    use ring::signature::KeyPair;
    let digest = personal_message_digest(message);
    let mut bytes = vec![ED25519_FLAG];
    bytes.extend_from_slice(key.sign(&digest).as_ref());
    bytes.extend_from_slice(key.public_key().as_ref());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    #[test]
    fn uleb128_lengths() {
        for (n, expected) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 1]),
            (300, vec![0xac, 2]),
        ] {
            let mut out = Vec::new();
            uleb128(n, &mut out);
            assert_eq!(out, expected, "{n}");
        }
    }

    #[test]
    fn a_signed_proof_gives_the_key_address_and_nothing_else_passes() {
        let key = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let message = proof_message(uuid::Uuid::nil());
        let signature = sign_personal_message(&key, message.as_bytes());
        let address = verify_personal_message("s", &signature, message.as_bytes()).unwrap();
        let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        assert_eq!(address, ed25519_address(&public));
        assert_eq!(address.len(), 66);
        // Another message (another user's), a tampered signature, other schemes, garbage.
        let other = proof_message(uuid::Uuid::from_u128(1));
        assert!(verify_personal_message("s", &signature, other.as_bytes()).is_err());
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&signature)
            .unwrap();
        bytes[10] ^= 1;
        let tampered = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(verify_personal_message("s", &tampered, message.as_bytes()).is_err());
        bytes[0] = 0x01;
        let secp = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let error = verify_personal_message("s", &secp, message.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("Ed25519"));
        assert!(verify_personal_message("s", "%%", message.as_bytes()).is_err());
        assert!(verify_personal_message("s", "", message.as_bytes()).is_err());
    }
}
