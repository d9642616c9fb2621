//! A second, independent sealer: it puts any plaintext behind a valid tag, so the fuzzer reaches the
//! header and address checks that only run after authentication, with headers no honest
//! [`Encryptor`](ss_crypto::Encryptor) would write.
//!
//! It seals with the RustCrypto AEADs directly rather than through ss-crypto's cipher module, so it
//! also cross-checks nonce order and the UDP layouts. Key derivation is ss-crypto's public API.

use aes::cipher::BlockEncrypt;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use ss_crypto::{Algorithm, Key, Method, NONCE_LEN};

/// Seals TCP records as a peer would: after the salt, one record per call under nonces 0, 1, 2, ...
#[derive(Debug)]
pub struct RecordSealer {
    algorithm: Algorithm,
    subkey: Key,
    counter: u64,
}

impl RecordSealer {
    /// The sealer for a stream that starts with `salt`.
    pub fn new(method: Method, key: &Key, salt: &[u8]) -> RecordSealer {
        RecordSealer { algorithm: method.algorithm(), subkey: key.session_subkey(method, salt), counter: 0 }
    }

    /// Appends `plaintext` sealed, then its tag, to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        seal(self.algorithm, self.subkey.as_bytes(), &nonce, plaintext, out);
    }
}

/// A classic datagram: `salt | seal(body)` under the salt's subkey and an all-zero nonce.
pub fn udp_classic(method: Method, key: &Key, salt: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = salt.to_vec();
    let subkey = key.session_subkey(method, salt);
    seal(method.algorithm(), subkey.as_bytes(), &[0; NONCE_LEN], body, &mut out);
    out
}

/// A 2022 datagram whose separate header (session id, packet id) is `ids` and whose body is `body`;
/// `xnonce` is used by the ChaCha method only.
pub fn udp_2022(method: Method, key: &Key, ids: [u8; 16], xnonce: [u8; 24], body: &[u8]) -> Vec<u8> {
    let psk = key.as_bytes();
    if method == Method::Blake3ChaCha20Poly1305 {
        let mut sealed = [&ids[..], body].concat();
        let cipher = XChaCha20Poly1305::new_from_slice(psk).expect("a 32-byte PSK");
        cipher.encrypt_in_place(&xnonce.into(), b"", &mut sealed).expect("a small datagram");
        return [&xnonce[..], &sealed].concat();
    }
    let mut out = ids.to_vec();
    let block = (&mut out[..]).into();
    match method {
        Method::Blake3Aes128Gcm => {
            aes::Aes128::new_from_slice(psk).expect("a 16-byte PSK").encrypt_block(block)
        }
        _ => aes::Aes256::new_from_slice(psk).expect("a 32-byte PSK").encrypt_block(block),
    }
    let subkey = key.blake3_subkey(&ids[..8]);
    let nonce: [u8; NONCE_LEN] = ids[4..].try_into().expect("12 bytes");
    seal(method.algorithm(), subkey.as_bytes(), &nonce, body, &mut out);
    out
}

/// Appends `plaintext` sealed under `key` and `nonce`, then the tag, to `out`.
fn seal(algorithm: Algorithm, key: &[u8], nonce: &[u8; NONCE_LEN], plaintext: &[u8], out: &mut Vec<u8>) {
    let mut sealed = plaintext.to_vec();
    // XChaCha20's 24-byte nonce is the same little-endian counter, zero-extended.
    let mut xnonce = [0; 24];
    xnonce[..NONCE_LEN].copy_from_slice(nonce);
    let xnonce = (&xnonce).into();
    let nonce = nonce.into();
    let sealed_ok = match algorithm {
        Algorithm::Aes128Gcm => {
            Aes128Gcm::new_from_slice(key).expect("16").encrypt_in_place(nonce, b"", &mut sealed)
        }
        Algorithm::Aes192Gcm => {
            AesGcm::<Aes192, U12>::new_from_slice(key).expect("24").encrypt_in_place(nonce, b"", &mut sealed)
        }
        Algorithm::Aes256Gcm => {
            Aes256Gcm::new_from_slice(key).expect("32").encrypt_in_place(nonce, b"", &mut sealed)
        }
        Algorithm::ChaCha20Poly1305 => {
            ChaCha20Poly1305::new_from_slice(key).expect("32").encrypt_in_place(nonce, b"", &mut sealed)
        }
        Algorithm::XChaCha20Poly1305 => {
            XChaCha20Poly1305::new_from_slice(key).expect("32").encrypt_in_place(xnonce, b"", &mut sealed)
        }
    };
    sealed_ok.expect("records are far below the AEAD limits");
    out.extend_from_slice(&sealed);
}
