//! Dataset encryption and key wrapping, with `ring`'s AES-256-GCM.
//!
//! A dataset is encrypted as it streams, under a fresh 256-bit key, in segments of
//! [`SEGMENT`] plaintext bytes, each sealed on its own (ciphertext + 16-byte tag), so that neither
//! side ever holds the whole file. Segment `i` (from 0) uses the dataset's 12-byte base nonce with
//! its last 8 bytes XORed with `i` (big-endian), and authenticates `AAD_PREFIX || i (u64 BE) ||
//! last (1 byte)`: segments cannot be reordered, dropped, or the file cut at a segment boundary
//! without decryption failing. An empty file is one empty final segment.
//!
//! The dataset key is stored only wrapped by the server's master key: `nonce (12) || AES-256-GCM
//! (master, nonce, aad = "quintet.market.key.v1" || dataset id, key)`.

use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    agreement, hkdf,
    rand::{SecureRandom, SystemRandom},
};

use crate::error::{Error, Result};

/// Plaintext bytes per sealed segment.
pub const SEGMENT: usize = 64 * 1024;
/// Bytes each segment grows by.
pub const TAG: usize = 16;
const AAD_PREFIX: &[u8] = b"quintet.market.dataset.v1";

pub use crate::hex::{from_hex, to_hex};

/// 32 random bytes.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system's random source works");
    key
}

pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system's random source works");
    nonce
}

fn aes(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

fn segment_nonce(base: &[u8; NONCE_LEN], index: u64) -> Nonce {
    let mut nonce = *base;
    for (byte, counter) in nonce[4..].iter_mut().zip(index.to_be_bytes()) {
        *byte ^= counter;
    }
    Nonce::assume_unique_for_key(nonce)
}

fn segment_aad(index: u64, last: bool) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Encrypts a stream: push plaintext, take ciphertext; [`Encryptor::finish`] seals the rest.
pub struct Encryptor {
    key: LessSafeKey,
    base: [u8; NONCE_LEN],
    pending: Vec<u8>,
    index: u64,
}

impl Encryptor {
    pub fn new(key: &[u8; 32], base_nonce: [u8; NONCE_LEN]) -> Self {
        Encryptor {
            key: aes(key),
            base: base_nonce,
            pending: Vec::with_capacity(2 * SEGMENT),
            index: 0,
        }
    }

    fn seal(&mut self, mut segment: Vec<u8>, last: bool, out: &mut Vec<u8>) {
        self.key
            .seal_in_place_append_tag(
                segment_nonce(&self.base, self.index),
                Aad::from(segment_aad(self.index, last)),
                &mut segment,
            )
            .expect("AES-GCM sealing of a bounded segment");
        self.index += 1;
        out.extend_from_slice(&segment);
    }

    /// The ciphertext of every complete segment now known not to be the last.
    pub fn push(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(plaintext);
        let mut out = Vec::with_capacity(self.pending.len() + self.pending.len() / SEGMENT * TAG);
        // A segment is sealed once more bytes follow it: only then is it known not to be last.
        let mut start = 0;
        while self.pending.len() - start > SEGMENT {
            let segment = self.pending[start..start + SEGMENT].to_vec();
            self.seal(segment, false, &mut out);
            start += SEGMENT;
        }
        // One move of the tail (under a segment), however large the chunk was.
        self.pending.drain(..start);
        out
    }

    /// The last segment's ciphertext.
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let segment = std::mem::take(&mut self.pending);
        self.seal(segment, true, &mut out);
        out
    }
}

/// Decrypts a whole ciphertext made by [`Encryptor`] (tests; buyers do the same on their side).
pub fn decrypt(key: &[u8; 32], base_nonce: [u8; NONCE_LEN], ciphertext: &[u8]) -> Result<Vec<u8>> {
    let key = aes(key);
    let mut out = Vec::with_capacity(ciphertext.len());
    let mut rest = ciphertext;
    let mut index = 0u64;
    loop {
        let last = rest.len() <= SEGMENT + TAG;
        let (segment, tail) = rest.split_at(if last { rest.len() } else { SEGMENT + TAG });
        let mut buffer = segment.to_vec();
        let plain = key
            .open_in_place(
                segment_nonce(&base_nonce, index),
                Aad::from(segment_aad(index, last)),
                &mut buffer,
            )
            .map_err(|_| Error::DataLoss(format!("segment {index} does not decrypt")))?;
        out.extend_from_slice(plain);
        if last {
            return Ok(out);
        }
        rest = tail;
        index += 1;
    }
}

/// The master key that wraps dataset keys (`quintet.market.key.v1` || dataset id as AAD).
pub use crate::master_key::MasterKey;

/// The HKDF `info` prefix of keys wrapped for buyers.
const BUYER_KEY_INFO: &[u8] = b"quintet.market.buyer-key.v1";
/// Bytes of a key wrapped for a buyer: ephemeral public key, nonce, sealed key and tag.
pub const BUYER_WRAPPED_LEN: usize = 32 + NONCE_LEN + 32 + TAG;

/// The AES key both sides derive from the X25519 shared secret.
fn buyer_wrapping_key(
    shared: &[u8],
    ephemeral_public: &[u8],
    buyer_public: &[u8],
    purchase: &str,
) -> LessSafeKey {
    let salt = hkdf::Salt::new(
        hkdf::HKDF_SHA256,
        &[ephemeral_public, buyer_public].concat(),
    );
    let info = [BUYER_KEY_INFO, purchase.as_bytes()];
    let mut key = [0u8; 32];
    salt.extract(shared)
        .expand(&info, hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut key))
        .expect("HKDF-SHA256 yields 32 bytes");
    aes(&key)
}

/// Whether `public` is an X25519 public key a key can be wrapped for (not of low order).
pub fn check_buyer_public_key(public: &[u8]) -> bool {
    public.len() == 32 && wrap_for_buyer(&[0u8; 32], public, "check").is_ok()
}

/// Wraps a dataset key for a buyer's X25519 public key (ECIES: an ephemeral key pair, HKDF-SHA256
/// of the shared secret, AES-256-GCM with the purchase id as additional data). Only the holder
/// of the buyer's private key can unwrap it; the server keeps no way to.
pub fn wrap_for_buyer(key: &[u8; 32], buyer_public: &[u8], purchase: &str) -> Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .expect("the system's random source works");
    let ephemeral_public = ephemeral
        .compute_public_key()
        .expect("an X25519 public key");
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, buyer_public);
    let wrapping = agreement::agree_ephemeral(ephemeral, &peer, |shared| {
        buyer_wrapping_key(shared, ephemeral_public.as_ref(), buyer_public, purchase)
    })
    .map_err(|_| {
        Error::invalid_argument(
            "buyer_public_key",
            "not a usable X25519 public key (32 bytes, not of low order)",
        )
    })?;
    let nonce = random_nonce();
    let mut sealed = key.to_vec();
    wrapping
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purchase.as_bytes()),
            &mut sealed,
        )
        .expect("AES-GCM sealing of 32 bytes");
    Ok([ephemeral_public.as_ref(), &nonce[..], &sealed].concat())
}

/// The buyer's side of [`wrap_for_buyer`], with a private key ring can hold (tests and tools;
/// clients use their own X25519 libraries).
pub fn unwrap_as_buyer(
    private: agreement::EphemeralPrivateKey,
    wrapped: &[u8],
    purchase: &str,
) -> Result<[u8; 32]> {
    if wrapped.len() != BUYER_WRAPPED_LEN {
        return Err(Error::DataLoss("a wrapped key has the wrong length".into()));
    }
    let buyer_public = private.compute_public_key().expect("an X25519 public key");
    let (ephemeral_public, rest) = wrapped.split_at(32);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, ephemeral_public);
    let wrapping = agreement::agree_ephemeral(private, &peer, |shared| {
        buyer_wrapping_key(shared, ephemeral_public, buyer_public.as_ref(), purchase)
    })
    .map_err(|_| Error::DataLoss("the ephemeral key is not usable".into()))?;
    let mut buffer = sealed.to_vec();
    let key = wrapping
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).expect("12 bytes"),
            Aad::from(purchase.as_bytes()),
            &mut buffer,
        )
        .map_err(|_| Error::DataLoss("the wrapped key does not unwrap".into()))?;
    Ok(key.try_into().expect("32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt_in_pieces(key: &[u8; 32], nonce: [u8; 12], data: &[u8], piece: usize) -> Vec<u8> {
        let mut encryptor = Encryptor::new(key, nonce);
        let mut out = Vec::new();
        for chunk in data.chunks(piece.max(1)) {
            out.extend(encryptor.push(chunk));
        }
        out.extend(encryptor.finish());
        out
    }

    #[test]
    fn round_trips_at_every_segment_boundary() {
        let key = random_key();
        let nonce = random_nonce();
        for len in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            3 * SEGMENT + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            for piece in [1000, SEGMENT, 100_000] {
                let sealed = encrypt_in_pieces(&key, nonce, &data, piece);
                let segments = len.div_ceil(SEGMENT).max(1);
                assert_eq!(sealed.len(), len + segments * TAG, "len {len}");
                assert_eq!(decrypt(&key, nonce, &sealed).unwrap(), data, "len {len}");
            }
        }
    }

    #[test]
    fn truncation_reordering_and_tampering_fail() {
        let key = random_key();
        let nonce = random_nonce();
        let data = vec![5u8; 2 * SEGMENT + 10];
        let sealed = encrypt_in_pieces(&key, nonce, &data, 4096);
        // Cut at a segment boundary: the now-last segment was sealed as not last.
        assert!(decrypt(&key, nonce, &sealed[..2 * (SEGMENT + TAG)]).is_err());
        let mut swapped = sealed.clone();
        swapped[..SEGMENT + TAG].copy_from_slice(&sealed[SEGMENT + TAG..2 * (SEGMENT + TAG)]);
        swapped[SEGMENT + TAG..2 * (SEGMENT + TAG)].copy_from_slice(&sealed[..SEGMENT + TAG]);
        assert!(decrypt(&key, nonce, &swapped).is_err());
        let mut flipped = sealed.clone();
        flipped[10] ^= 1;
        assert!(decrypt(&key, nonce, &flipped).is_err());
        assert!(decrypt(&random_key(), nonce, &sealed).is_err());
    }

    #[test]
    fn wrapped_keys_unwrap_only_with_their_master_and_context() {
        let master = MasterKey::from_bytes(crate::master_key::Purpose::Market, random_key());
        let key = random_key();
        let wrapped = master.wrap(&key, b"dataset-1");
        assert_eq!(master.unwrap(&wrapped, b"dataset-1").unwrap(), key);
        assert!(master.unwrap(&wrapped, b"dataset-2").is_err());
        let other = MasterKey::from_bytes(crate::master_key::Purpose::Market, random_key());
        assert!(other.unwrap(&wrapped, b"dataset-1").is_err());
        assert_ne!(master.check_value(), other.check_value());
        assert!(!format!("{master:?}").contains(&format!("{}", key[0])));
    }

    #[test]
    fn keys_wrapped_for_a_buyer_unwrap_only_with_their_private_key_and_purchase() {
        let rng = SystemRandom::new();
        let key = random_key();
        let buyer = || agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
        let private = buyer();
        let public = private.compute_public_key().unwrap();
        let wrapped = wrap_for_buyer(&key, public.as_ref(), "purchase-1").unwrap();
        assert_eq!(wrapped.len(), BUYER_WRAPPED_LEN);
        // A fresh ephemeral key every time.
        assert_ne!(
            wrapped,
            wrap_for_buyer(&key, public.as_ref(), "purchase-1").unwrap()
        );
        assert_eq!(
            unwrap_as_buyer(private, &wrapped, "purchase-1").unwrap(),
            key
        );
        let private = buyer();
        let public = private.compute_public_key().unwrap();
        let wrapped = wrap_for_buyer(&key, public.as_ref(), "purchase-1").unwrap();
        assert!(unwrap_as_buyer(private, &wrapped, "purchase-2").is_err());
        assert!(unwrap_as_buyer(buyer(), &wrapped, "purchase-1").is_err());
        // Low-order points and wrong lengths are refused.
        assert!(!check_buyer_public_key(&[0u8; 32]));
        assert!(!check_buyer_public_key(&[1u8; 31]));
        assert!(check_buyer_public_key(
            buyer().compute_public_key().unwrap().as_ref()
        ));
    }
}
