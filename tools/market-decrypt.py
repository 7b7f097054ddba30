#!/usr/bin/env python3
"""Decrypts a market download: the buyer's side of DownloadDataset, in any language's terms.

Usage: grpcurl ... DownloadDataset | tools/market-decrypt.py buyer.pem > dataset

buyer.pem is the buyer's X25519 private key (openssl genpkey -algorithm X25519). The input is
grpcurl's JSON output (a header message, then chunks). Needs the `cryptography` package.
"""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEGMENT_AAD = b"quintet.market.dataset.v1"
KEY_INFO = b"quintet.market.buyer-key.v1"


def messages(text):
    decoder, at = json.JSONDecoder(), 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return
        message, at = decoder.raw_decode(text, at)
        yield message


def main():
    with open(sys.argv[1], "rb") as f:
        private = serialization.load_pem_private_key(f.read(), password=None)
    header, ciphertext = None, bytearray()
    for message in messages(sys.stdin.read()):
        if "header" in message:
            header = message["header"]
        else:
            ciphertext += base64.b64decode(message["chunk"])
    purchase = header["purchase"]["id"].encode()
    wrapped = base64.b64decode(header["wrappedKey"])
    ephemeral, nonce, sealed = wrapped[:32], wrapped[32:44], wrapped[44:]
    mine = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    wrapping = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral + mine, info=KEY_INFO + purchase
    ).derive(shared)
    key = AESGCM(wrapping).decrypt(nonce, sealed, purchase)

    aes, base = AESGCM(key), base64.b64decode(header["baseNonce"])
    size, out, index, at = int(header["segmentSize"]), hashlib.sha256(), 0, 0
    while True:
        last = len(ciphertext) - at <= size + 16
        end = len(ciphertext) if last else at + size + 16
        counter = (int.from_bytes(base[4:], "big") ^ index).to_bytes(8, "big")
        aad = SEGMENT_AAD + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")
        plain = aes.decrypt(base[:4] + counter, bytes(ciphertext[at:end]), aad)
        out.update(plain)
        sys.stdout.buffer.write(plain)
        if last:
            break
        at, index = end, index + 1
    if out.hexdigest() != header["dataHash"]:
        sys.exit("the plaintext does not match the dataset's SHA-256")


if __name__ == "__main__":
    main()
