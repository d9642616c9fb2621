//! The Shadowsocks wire protocol as pure code: methods, keys, TCP stream framing and UDP datagrams for
//! classic AEAD (SIP004) and AEAD-2022 (SIP022).
//!
//! Nothing here opens a socket, reads a clock, draws randomness or keeps global state: salts, padding and
//! the current time are inputs, so every byte on the wire can be reproduced in a test. The async adapter
//! over sockets, its buffer pool and the clock live in `ss-net`.
//!
//! ```
//! use ss_crypto::{Address, Decryptor, Encryptor, Key, Method, Salt};
//!
//! let method = Method::Aes256Gcm;
//! let key = Key::from_password(method, "correct horse battery staple").unwrap();
//! let salt = Salt::from_slice(method, &[7; 32]).unwrap();
//! let target = Address::domain("example.com", 443).unwrap();
//!
//! let mut wire = Vec::new();
//! Encryptor::request(method, &key, salt, &target, &[]).encrypt(b"hello", 0, &mut wire).unwrap();
//!
//! let mut server = Decryptor::request(method, &key);
//! let decoded = server.decrypt(&mut wire, 0).unwrap();
//! assert_eq!(decoded.target, Some(target));
//! assert_eq!(&wire[decoded.payload], b"hello");
//! ```

#![warn(missing_docs)]

mod address;
mod cipher;
pub mod identity;
mod key;
mod method;
pub mod tcp;
pub mod udp;

pub use address::{Address, AddressError, MAX_ADDRESS_LEN};
pub use cipher::{NonceCounter, NonceExhausted, SealError, BACKEND, NONCE_LEN};
pub use key::{is_weak_password, Key, KeyError, Salt};
pub use method::{Algorithm, Generation, Method, MethodError, MAX_KEY_LEN, MAX_SALT_LEN, TAG_LEN};
pub use tcp::{Decoded, DecryptError, Decryptor, Encryptor};
