//! Signing keys as the AT Protocol uses them (atproto.com/specs/cryptography): secp256k1
//! ("ES256K", `k256`) for the keys quintet makes, and NIST P-256 ("ES256", `p256`) accepted for
//! verification. Public keys travel as compressed points in multibase Multikey form and as
//! `did:key`; signatures are 64 bytes (r || s) over SHA-256, and only low-S signatures count.

use k256::{
    ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier},
    elliptic_curve::sec1::ToSec1Point,
};

/// Multicodec varint prefixes of compressed public keys.
const SECP256K1_PUB: [u8; 2] = [0xe7, 0x01];
const P256_PUB: [u8; 2] = [0x80, 0x24];
/// Half the group orders: a signature's `s` above these is "high".
const SECP256K1_HALF_ORDER: [u8; 32] =
    hex32("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0");
const P256_HALF_ORDER: [u8; 32] =
    hex32("7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8");

const fn hex32(text: &str) -> [u8; 32] {
    let bytes = text.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(bytes[2 * i]) << 4) | nibble(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("hex digit"),
    }
}

/// Which curve a public key is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    Secp256k1,
    P256,
}

/// A public key: its curve and compressed SEC1 point (33 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub curve: Curve,
    pub compressed: Vec<u8>,
}

impl PublicKey {
    /// Multibase (base58btc, `z`) of the multicodec-prefixed compressed key.
    pub fn multikey(&self) -> String {
        let prefix = match self.curve {
            Curve::Secp256k1 => SECP256K1_PUB,
            Curve::P256 => P256_PUB,
        };
        format!(
            "z{}",
            bs58::encode([&prefix[..], &self.compressed].concat()).into_string()
        )
    }

    pub fn did_key(&self) -> String {
        format!("did:key:{}", self.multikey())
    }

    /// Parses a Multikey (`z...`); the point must be on its curve.
    pub fn from_multikey(text: &str) -> Option<PublicKey> {
        let bytes = bs58::decode(text.strip_prefix('z')?).into_vec().ok()?;
        let (curve, point) = if let Some(point) = bytes.strip_prefix(&SECP256K1_PUB[..]) {
            k256::PublicKey::from_sec1_bytes(point).ok()?;
            (Curve::Secp256k1, point)
        } else if let Some(point) = bytes.strip_prefix(&P256_PUB[..]) {
            p256::PublicKey::from_sec1_bytes(point).ok()?;
            (Curve::P256, point)
        } else {
            return None;
        };
        // Keys are published compressed; normalise whatever form was given.
        let compressed = match curve {
            Curve::Secp256k1 => k256::PublicKey::from_sec1_bytes(point)
                .ok()?
                .to_sec1_point(true)
                .as_bytes()
                .to_vec(),
            Curve::P256 => p256::PublicKey::from_sec1_bytes(point)
                .ok()?
                .to_sec1_point(true)
                .as_bytes()
                .to_vec(),
        };
        Some(PublicKey { curve, compressed })
    }

    pub fn from_did_key(text: &str) -> Option<PublicKey> {
        PublicKey::from_multikey(text.strip_prefix("did:key:")?)
    }

    /// Whether `signature` (64 bytes, low-S) signs `message` (hashed with SHA-256).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != 64 {
            return false;
        }
        let half = match self.curve {
            Curve::Secp256k1 => &SECP256K1_HALF_ORDER,
            Curve::P256 => &P256_HALF_ORDER,
        };
        if signature[32..] > half[..] {
            return false;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        match self.curve {
            Curve::Secp256k1 => {
                let (Ok(key), Ok(sig)) = (
                    k256::ecdsa::VerifyingKey::from_sec1_bytes(&self.compressed),
                    k256::ecdsa::Signature::from_slice(signature),
                ) else {
                    return false;
                };
                key.verify_prehash(digest.as_ref(), &sig).is_ok()
            }
            Curve::P256 => {
                let (Ok(key), Ok(sig)) = (
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&self.compressed),
                    p256::ecdsa::Signature::from_slice(signature),
                ) else {
                    return false;
                };
                key.verify_prehash(digest.as_ref(), &sig).is_ok()
            }
        }
    }
}

/// A secp256k1 private key (the keys quintet makes for accounts).
#[derive(Clone)]
pub struct SigningKey(k256::ecdsa::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn generate() -> SigningKey {
        loop {
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .expect("the system's random source works");
            if let Some(key) = SigningKey::from_bytes(&bytes) {
                return key;
            }
        }
    }

    /// From the 32-byte scalar; `None` if it is zero or not below the group order.
    pub fn from_bytes(bytes: &[u8]) -> Option<SigningKey> {
        k256::ecdsa::SigningKey::from_slice(bytes)
            .ok()
            .map(SigningKey)
    }

    /// The 32-byte scalar (to be wrapped before it is stored).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            curve: Curve::Secp256k1,
            compressed: self
                .0
                .verifying_key()
                .to_sec1_point(true)
                .as_bytes()
                .to_vec(),
        }
    }

    /// A 64-byte low-S signature of SHA-256(`message`).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let signature: k256::ecdsa::Signature = self
            .0
            .sign_prehash(digest.as_ref())
            .expect("signing a 32-byte digest");
        let signature = signature.normalize_s();
        signature.to_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_published_key_only() {
        let key = SigningKey::generate();
        let public = PublicKey::from_did_key(&key.public_key().did_key()).unwrap();
        assert_eq!(public, key.public_key());
        let signature = key.sign(b"commit");
        assert!(public.verify(b"commit", &signature));
        assert!(!public.verify(b"commit!", &signature));
        assert!(
            !SigningKey::generate()
                .public_key()
                .verify(b"commit", &signature)
        );
        let again = SigningKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(again.public_key(), public);
        assert!(format!("{key:?}") == "SigningKey(..)");
    }
}
