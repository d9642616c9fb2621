#!/usr/bin/env python3
"""Known-answer vectors for aes-192-gcm and xchacha20-ietf-poly1305 (SIP004 framing).

An implementation independent of ss-crypto: AES-192-GCM from `cryptography` (OpenSSL), XChaCha20-Poly1305
from PyNaCl (libsodium's crypto_aead_xchacha20poly1305_ietf, the function shadowsocks-libev calls), MD5 and
HKDF-SHA1 from the standard library / `cryptography`. Writes tcp_stream.json and udp_packet.json beside this
script; the output is deterministic, so running it again must leave the files unchanged.

    pip install cryptography pynacl && python3 generate.py
"""

import hashlib
import json
import os
import socket

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

PASSWORD = "correct horse battery staple"
MAX_CHUNK = 0x3FFF
# method: (key and salt length, nonce length)
METHODS = {"aes-192-gcm": (24, 12), "xchacha20-ietf-poly1305": (32, 24)}


def evp_bytes_to_key(password: bytes, key_len: int) -> bytes:
    key, previous = b"", b""
    while len(key) < key_len:
        previous = hashlib.md5(previous + password).digest()
        key += previous
    return key[:key_len]


def subkey(key: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA1(), length=len(key), salt=salt, info=b"ss-subkey").derive(key)


def seal(method: str, key: bytes, counter: int, plaintext: bytes) -> bytes:
    """AEAD seal (ciphertext | tag) under the little-endian counter nonce, no associated data."""
    nonce = counter.to_bytes(METHODS[method][1], "little")
    if method == "aes-192-gcm":
        return AESGCM(key).encrypt(nonce, plaintext, None)
    return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, None, nonce, key)


def fixed(label: str, length: int) -> bytes:
    """A fixed 'random' value: SHA-256 of a label, repeated as needed."""
    digest = hashlib.sha256(label.encode()).digest()
    return (digest * (length // len(digest) + 1))[:length]


def filler(length: int, seed: int) -> bytes:
    return bytes((31 * i + seed) % 256 for i in range(length))


def socks_addr(host: str, port: int) -> tuple[int, bytes]:
    for family, atyp in ((socket.AF_INET, 1), (socket.AF_INET6, 4)):
        try:
            return atyp, bytes([atyp]) + socket.inet_pton(family, host) + port.to_bytes(2, "big")
        except OSError:
            pass
    name = host.encode()
    return 3, bytes([3, len(name)]) + name + port.to_bytes(2, "big")


def target(host: str, port: int) -> dict:
    atyp, addr = socks_addr(host, port)
    return {"atyp": atyp, "host": host, "port": port, "socks_addr": addr.hex()}


def stream(method: str, session_key: bytes, salt: bytes, pieces: list[bytes]) -> bytes:
    """salt, then seal(u16 BE length) | seal(piece) per piece, pieces cut at 0x3FFF, empty ones skipped."""
    out, counter = bytearray(salt), 0
    for piece in pieces:
        for start in range(0, len(piece), MAX_CHUNK):
            chunk = piece[start : start + MAX_CHUNK]
            out += seal(method, session_key, counter, len(chunk).to_bytes(2, "big"))
            out += seal(method, session_key, counter + 1, chunk)
            counter += 2
    return bytes(out)


def tcp_vector(method: str, name: str, writes: list[bytes], dest: dict | None) -> dict:
    key_len = METHODS[method][0]
    key = evp_bytes_to_key(PASSWORD.encode(), key_len)
    salt = fixed(f"{method}/{name}/salt", key_len)
    session_key = subkey(key, salt)
    pieces = list(writes)
    vector = {"name": f"{method}/{name}", "method": method, "password": PASSWORD, "key": key.hex()}
    if dest is None:
        vector["direction"] = "server_to_client"
    else:
        vector["direction"] = "client_to_server"
        vector["target"] = dest
        pieces[0] = bytes.fromhex(dest["socks_addr"]) + pieces[0]
    vector.update(
        salt=salt.hex(),
        subkey=session_key.hex(),
        writes=[w.hex() for w in writes],
        stream=stream(method, session_key, salt, pieces).hex(),
    )
    return vector


def tcp_vectors(method: str) -> list[dict]:
    return [
        tcp_vector(
            method,
            "request/ipv4",
            [b"", filler(1, 1), filler(100, 2), filler(0x4000, 3)],
            target("127.0.0.1", 24480),
        ),
        tcp_vector(method, "request/domain", [filler(100, 4)], target("localhost", 24480)),
        tcp_vector(method, "request/ipv6", [filler(0x3FFF - 19, 5), filler(7, 6)], target("::1", 24480)),
        tcp_vector(method, "response", [filler(19, 7), filler(300, 8)], None),
        # 600 records: the nonce counter carries into its second byte.
        tcp_vector(method, "response/many-chunks", [filler(1, i) for i in range(300)], None),
    ]


def negatives(vectors: list[dict]) -> list[dict]:
    """Damaged copies of each method's IPv4 request: a flipped tag bit, and the stream cut mid-record."""
    cases = []
    for vector in vectors:
        if not vector["name"].endswith("request/ipv4"):
            continue
        good = bytes.fromhex(vector["stream"])
        salt_len = len(bytes.fromhex(vector["salt"]))
        flipped = bytearray(good)
        flipped[salt_len + 2 + 16 - 1] ^= 0x01  # last byte of the first length record's tag
        base = {k: vector[k] for k in ("method", "password", "key", "direction", "target")}
        cases.append(
            {**base, "name": f"{vector['name']}/flipped-tag", "stream": flipped.hex(),
             "expect": {"error": "auth_failure", "payload_before_error": ""}}
        )
        cases.append(
            {**base, "name": f"{vector['name']}/cut", "stream": good[: salt_len + 2 + 16 + 5].hex(),
             "expect": {"error": "truncated", "payload_before_error": ""}}
        )
    return cases


def udp_vector(method: str, name: str, payload: bytes, host: str, port: int, to_server: bool) -> dict:
    key_len = METHODS[method][0]
    key = evp_bytes_to_key(PASSWORD.encode(), key_len)
    salt = fixed(f"{method}/udp/{name}/salt", key_len)
    session_key = subkey(key, salt)
    _, addr = socks_addr(host, port)
    packet = salt + seal(method, session_key, 0, addr + payload)
    return {
        "name": f"{method}/{name}",
        "direction": "client_to_server" if to_server else "server_to_client",
        "method": method,
        "password": PASSWORD,
        "key": key.hex(),
        "salt": salt.hex(),
        "subkey": session_key.hex(),
        "target" if to_server else "source": {"host": host, "port": port},
        "payload": payload.hex(),
        "packet": packet.hex(),
    }


def udp_vectors(method: str) -> list[dict]:
    return [
        udp_vector(method, "client/ipv4", filler(100, 9), "127.0.0.1", 24481, True),
        udp_vector(method, "client/domain-empty", b"", "localhost", 24481, True),
        udp_vector(method, "client/ipv6", filler(1200, 10), "::1", 24481, True),
        udp_vector(method, "server/ipv4", filler(512, 11), "127.0.0.1", 24481, False),
    ]


def write(name: str, content: dict) -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    with open(path, "w", encoding="ascii") as file:
        json.dump(content, file, indent=1)
        file.write("\n")


def main() -> None:
    about = "generated by generate.py (cryptography + PyNaCl/libsodium); see README.md beside it"
    tcp = [v for method in METHODS for v in tcp_vectors(method)]
    write("tcp_stream.json", {"about": about, "vectors": tcp, "negative": negatives(tcp)})
    write("udp_packet.json", {"about": about, "vectors": [v for m in METHODS for v in udp_vectors(m)]})


if __name__ == "__main__":
    main()
