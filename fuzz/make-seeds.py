#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into fuzz/seeds/<target>/ (ignored by git): the AT
Protocol interop vectors of tests/vectors/, the RSA fixture of tests/fixtures/ (through openssl),
and small valid inputs made here (DAG-CBOR blocks, repository CAR files, tar archives, protobuf
uploads, manifests, tokens). Each input starts with the mode byte its target's source describes.

The committed corpora in fuzz/corpus/ began as these seeds plus what fuzzing them found, merged
and minimised with libFuzzer's -set_cover_merge=1 (as scripts/fuzz's header shows), plus the
crash-* inputs of the bugs the targets found. Standard library only.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VECTORS = os.path.join(ROOT, "tests", "vectors", "atproto-interop-tests")
OUT = os.path.join(HERE, "seeds")


def write(target, name, data):
    directory = os.path.join(OUT, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def vector(*path):
    return os.path.join(VECTORS, *path)


def lines(*path):
    with open(vector(*path), encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")]


# ---- DAG-CBOR, CIDs, CAR files, the MST -----------------------------------------------------


class Link:
    def __init__(self, cid):
        self.cid = cid  # binary CID


def head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for size, extra in ((0xFF, 24), (0xFFFF, 25), (0xFFFFFFFF, 26)):
        if n <= size:
            return bytes([major << 5 | extra]) + n.to_bytes(1 << (extra - 24), "big")
    return bytes([major << 5 | 27]) + n.to_bytes(8, "big")


def cbor(value):
    """DAG-CBOR of a value: map keys sorted length first, shortest integer forms."""
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return head(5, len(keys)) + b"".join(cbor(k) + cbor(value[k]) for k in keys)
    if isinstance(value, Link):
        return b"\xd8\x2a" + cbor(b"\x00" + value.cid)
    raise TypeError(value)


def cid_of(data, codec=0x71):
    return bytes([0x01, codec, 0x12, 0x20]) + hashlib.sha256(data).digest()


def cid_text(cid):
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def car(roots, blocks):
    header = cbor({"version": 1, "roots": [Link(r) for r in roots]})
    out = varint(len(header)) + header
    for cid, data in blocks:
        out += varint(len(cid) + len(data)) + cid + data
    return out


def height(key):
    digest = hashlib.sha256(key).digest()
    zeros = 0
    for byte in digest:
        if byte == 0:
            zeros += 8
            continue
        zeros += 8 - byte.bit_length()
        break
    return zeros // 2


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def mst(leaves, blocks):
    """The canonical tree of sorted (key, cid) leaves; its nodes go to blocks; returns the root."""
    items = [(k, v, height(k)) for k, v in leaves]
    layer = max((h for _, _, h in items), default=0)

    def build(items, layer):
        if not items:
            return None
        below = lambda gap: None if layer == 0 else build(gap, layer - 1)
        here = [i for i, item in enumerate(items) if item[2] == layer]
        left = below(items[: here[0] if here else len(items)])
        entries, previous = [], b""
        for n, at in enumerate(here):
            end = here[n + 1] if n + 1 < len(here) else len(items)
            key, value, _ = items[at]
            right = below(items[at + 1 : end])
            prefix = common_prefix(previous, key)
            entries.append(
                {"k": key[prefix:], "p": prefix, "t": Link(right) if right else None,
                 "v": Link(value)}
            )
            previous = key
        node = cbor({"e": entries, "l": Link(left) if left else None})
        cid = cid_of(node)
        blocks.append((cid, node))
        return cid

    root = build(items, layer)
    if root is None:
        node = cbor({"e": [], "l": None})
        root = cid_of(node)
        blocks.append((root, node))
    return root


TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def tid(n):
    return "".join(TID_ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(13)))


PDS_DID = "did:plc:fuzzfuzzfuzzfuzzfuzzfuzz"


def repository(records, did=PDS_DID):
    """A repository CAR: a commit (signature zeroed: the target re-signs it), its tree, records."""
    blocks, record_blocks, leaves = [], [], []
    for path, record in records:
        data = cbor(record)
        cid = cid_of(data)
        record_blocks.append((cid, data))
        leaves.append((path.encode(), cid))
    leaves.sort()
    root = mst(leaves, blocks)
    commit = cbor({"did": did, "version": 3, "data": Link(root), "rev": tid(1 << 50),
                   "prev": None, "sig": bytes(64)})
    commit_cid = cid_of(commit)
    return car([commit_cid], [(commit_cid, commit)] + blocks + record_blocks), blocks


def pds_seeds():
    fixtures = json.load(open(vector("data-model", "data-model-fixtures.json")))
    fixture_blocks = []
    for n, fixture in enumerate(fixtures):
        data = base64.b64decode(fixture["cbor_base64"] + "==")
        write("dag_cbor", f"fixture-{n}.cbor", b"\x00" + data)
        write("dag_cbor", f"fixture-{n}.json", b"\x01" + json.dumps(fixture["json"]).encode())
        fixture_blocks.append((cid_of(data), data))
    for name in ("data-model-valid.json", "data-model-invalid.json"):
        for n, case in enumerate(json.load(open(vector("data-model", name)))):
            write("dag_cbor", f"{name[11:-5]}-{n}.json", b"\x01" + json.dumps(case["json"]).encode())
    write("car", "fixtures.car", car([fixture_blocks[0][0]], fixture_blocks))
    write("car", "no-roots.car", car([], fixture_blocks[1:]))

    post = lambda n, text: {"$type": "app.bsky.feed.post", "text": text, "createdAt": "2024-01-01T00:00:00Z", "n": n}
    blob = {"$type": "blob", "ref": Link(cid_of(b"image", 0x55)), "mimeType": "image/png", "size": 5}
    repos = {
        "empty": [],
        "one": [("app.bsky.feed.post/3kabcdefghij2", post(1, "hello"))],
        "blob": [("app.bsky.actor.profile/self", {"$type": "app.bsky.actor.profile", "avatar": blob})],
        "many": [(f"app.bsky.feed.{c}/{tid(1000 * i + 7)}", post(i, c * 3))
                 for i in range(24) for c in ("post", "like")],
    }
    for name, records in repos.items():
        file, nodes = repository(records)
        write("car", f"repo-{name}.car", file)
        write("repo_import", f"raw-{name}", b"\x00" + file)
        write("repo_import", f"resign-{name}", b"\x01" + file)
        for n, (_, node) in enumerate(nodes[:4]):
            write("dag_cbor", f"node-{name}-{n}.cbor", b"\x00" + node)
    write("dag_cbor", "commit.cbor", b"\x00" + cbor({"did": PDS_DID, "version": 3, "data": Link(cid_of(b"x")), "rev": tid(5), "prev": None, "sig": bytes(64)}))
    # The writer: op, key length, key bytes; op bit 0 deletes a held key.
    write("repo_import", "write-few", b"\x02" + bytes([0, 5]) + b"abcde" + bytes([2, 3]) + b"xyz" + bytes([1, 5]) + b"abcde")
    write("repo_import", "write-many", b"\x02" + b"".join(bytes([i % 6, 12]) + f"key{i:09d}".encode() for i in range(40)))

    valid = {name: lines("syntax", f"{name}_syntax_valid.txt")
             for name in ("did", "handle", "nsid", "recordkey", "tid", "aturi", "cid")}
    invalid = {name: lines("syntax", f"{name}_syntax_invalid.txt")
               for name in ("did", "handle", "nsid", "recordkey", "tid", "aturi", "cid")}
    for kind in valid:
        for n, text in enumerate(valid[kind][:12]):
            write("syntax", f"{kind}-valid-{n}", text)
        for n, text in enumerate(invalid[kind][:12]):
            write("syntax", f"{kind}-invalid-{n}", text)
    for n in range(8):
        authority = (valid["did"] + valid["handle"])[n * 3 % len(valid["did"] + valid["handle"])]
        write("syntax", f"parts-{n}", "\n".join([authority, valid["nsid"][n], valid["recordkey"][n]]))
    for n, text in enumerate(valid["cid"][:6]):
        if text.startswith("b"):
            raw = base64.b32decode(text[1:].upper() + "=" * (-len(text[1:]) % 8))
            write("syntax", f"cid-bytes-{n}", raw)


# ---- Page tokens, JWTs ------------------------------------------------------------------------


def token_seeds():
    write("page_token", "raw-empty", b"\x00")
    write("page_token", "raw-garbage", b"\x00AQAAAABlAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    positions = [
        "[[2024,100,12,30,45,123456789,0,0,0],\"weather-sensor\"]",
        "[[2024,100,12,30,45,0,0,0,0],\"0191d6a2-7f44-7a5c-9d7e-1c2b3a4d5e6f\"]",
        "[42,\"left-pad\"]",
        "\"minimap\"",
        "{\"stars\":5,\"name\":\"x\"}",
    ]
    for n, payload in enumerate(positions):
        query = b"registry.List?q=&order=Downloads"
        age = (3600 * n).to_bytes(4, "little")
        write("page_token", f"sealed-{n}", b"\x01" + bytes([len(query)]) + query + age + payload.encode())

    claims = {"scope": "com.atproto.access", "sub": PDS_DID, "aud": "did:web:pds.fuzz",
              "iat": 1700000000, "exp": 4102444800, "jti": "j1", "sid": "s1"}
    header = {"alg": "HS256", "typ": "at+jwt"}
    write("pds_jwt", "signed", b"\x01" + json.dumps(header).encode() + b"\x00" + json.dumps(claims).encode())
    refresh = dict(claims, scope="com.atproto.refresh")
    del refresh["sid"]
    write("pds_jwt", "signed-refresh", b"\x01" + json.dumps(dict(header, typ="refresh+jwt")).encode() + b"\x00" + json.dumps(refresh).encode())
    write("pds_jwt", "signed-none", b"\x01" + b'{"alg":"none"}' + b"\x00" + json.dumps(claims).encode())
    b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
    write("pds_jwt", "raw", b"\x00" + f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(bytes(32))}".encode())
    write("pds_jwt", "issue", b"\x02\x01" + PDS_DID.encode() + b"\x00jti-1\x00session-1")

    id_claims = {"iss": "https://issuer.fuzz", "aud": "fuzz-client", "sub": "1234567890",
                 "exp": 4102444800, "iat": 1700000000, "email": "user@fuzz.example",
                 "email_verified": True, "name": "Fuzz User", "picture": "https://p/x.png"}
    id_header = {"alg": "RS256", "kid": "fuzz-1", "typ": "JWT"}
    write("oidc_jwt", "signed", b"\x01" + json.dumps(id_header).encode() + b"\x00" + json.dumps(id_claims).encode())
    write("oidc_jwt", "signed-audiences", b"\x01" + json.dumps(id_header).encode() + b"\x00" + json.dumps(dict(id_claims, aud=["other", "fuzz-client"], email_verified="true")).encode())
    write("oidc_jwt", "signed-hs256", b"\x01" + json.dumps(dict(id_header, alg="HS256")).encode() + b"\x00" + json.dumps(id_claims).encode())
    write("oidc_jwt", "raw", b"\x00" + f"{b64(json.dumps(id_header).encode())}.{b64(json.dumps(id_claims).encode())}.{b64(bytes(256))}".encode())
    modulus = subprocess.run(
        ["openssl", "rsa", "-inform", "DER", "-in", os.path.join(ROOT, "tests", "fixtures", "oidc-test-key-1.der"), "-noout", "-modulus"],
        check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    jwk = {"kty": "RSA", "kid": "fuzz-1", "use": "sig", "alg": "RS256",
           "n": b64(bytes.fromhex(modulus)), "e": "AQAB"}
    write("oidc_jwt", "jwks", b"\x02" + json.dumps({"keys": [jwk, dict(jwk, kid="other", use="enc")]}).encode())


# ---- Manifests, versions, archives, uploads -------------------------------------------------


def manifest_seeds():
    artifact = hashlib.sha256(b"artifact").hexdigest()
    griot = {"name": "weather-sensor", "node_class": "sensor", "version": "1.2.3",
             "description": "reads the sky", "dependencies": [hashlib.sha256(b"dep").hexdigest()],
             "artifact_sha256": artifact, "extra": {"b": 2, "a": [1.5, None, True]}}
    for how in range(3):
        write("griot_manifest", f"signed-{how}", bytes([1 + 2 * how]) + json.dumps(griot).encode())
    signed = dict(griot, author="did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")
    write("griot_manifest", "raw", b"\x00" + json.dumps(signed).encode() + b"\xff" + base64.urlsafe_b64encode(bytes(64)).rstrip(b"="))

    for n, text in enumerate(["1.0.0", "1.2.3-beta.1+build.5", "0.0.0", "10.20.30-rc.1", "1.0.0+20130313144700"]):
        write("registry_semver", f"version-{n}", b"\x00" + text.encode())
    for n, (r, v) in enumerate([(">=1.0.0 <2.0.0", "1.5.0"), ("^1.50.0 || ^2", "2.1.0-beta.1"), ("~1.2", "1.2.9"),
                                 ("1.x || >=2.5.0 || 5.0.0 - 7.2.3", "6.0.0"), ("*", "0.1.0")]):
        write("registry_semver", f"range-{n}", b"\x01" + f"{r}\n{v}".encode())
    package = {"name": "minimap", "version": "4.1.0", "description": "A preview of the full source code.",
               "keywords": ["minimap", "overview"], "repository": {"type": "git", "url": "https://github.com/x/minimap"},
               "license": "MIT", "engines": {"atom": ">=1.0.0 <2.0.0"}, "theme": None, "main": "./lib/main"}
    write("registry_semver", "manifest", b"\x02" + json.dumps(package).encode())
    write("registry_semver", "manifest-theme", b"\x02" + json.dumps(dict(package, name="one-dark-ui", theme="ui", repository="https://x")).encode())

    def archive(build):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
            build(tar)
        return buffer.getvalue()

    def entry(tar, name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
        info = tarfile.TarInfo(name)
        info.type, info.size, info.linkname, info.mode, info.mtime = kind, len(data), link, mode, 1700000000
        tar.addfile(info, io.BytesIO(data) if data else None)

    package_tar = archive(lambda t: (
        entry(t, "package/", tarfile.DIRTYPE, mode=0o755),
        entry(t, "package/package.json", data=json.dumps(package).encode()),
        entry(t, "package/bin/", tarfile.DIRTYPE, mode=0o755),
        entry(t, "package/bin/run", data=b"#!/bin/sh\necho hi\n", mode=0o4755),
        entry(t, "package/run", tarfile.SYMTYPE, link="bin/run"),
        entry(t, "package/copy.json", tarfile.LNKTYPE, link="package/package.json"),
    ))
    write("griot_unpack", "package.tar", b"\x00" + package_tar)
    write("griot_unpack", "package.tar.gz", b"\x01" + gzip.compress(package_tar, mtime=0))
    write("griot_unpack", "long-name.tar", b"\x00" + archive(lambda t: entry(t, "package/" + "d" * 120 + "/" + "f" * 120, data=b"x")))
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("package/ünïcode-" + "n" * 100)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    write("griot_unpack", "pax.tar", b"\x00" + pax.getvalue())
    write("griot_unpack", "escape.tar", b"\x00" + archive(lambda t: (
        entry(t, "l", tarfile.SYMTYPE, link="../outside"),
        entry(t, "d/", tarfile.DIRTYPE, mode=0o755),
        entry(t, "d/up", tarfile.SYMTYPE, link=".."),
        entry(t, "fifo", tarfile.FIFOTYPE),
    )))

    def field(number, wire, payload):
        key = varint(number << 3 | wire)
        if wire == 0:
            return key + varint(payload)
        return key + varint(len(payload)) + payload

    def string(number, text):
        return field(number, 2, text.encode())

    def value(v):
        if v is None:
            return field(1, 0, 0)
        if isinstance(v, bool):
            return field(4, 0, int(v))
        if isinstance(v, (int, float)):
            return varint(2 << 3 | 1) + struct.pack("<d", float(v))
        if isinstance(v, str):
            return string(3, v)
        if isinstance(v, dict):
            return field(5, 2, struct_(v))
        if isinstance(v, list):
            return field(6, 2, b"".join(field(1, 2, value(x)) for x in v))
        raise TypeError(v)

    def struct_(d):
        return b"".join(field(1, 2, string(1, k) + field(2, 2, value(v))) for k, v in d.items())

    def delimited(message):
        return varint(len(message)) + message

    manifest = field(1, 2, string(1, "0191d6a2-7f44-7a5c-9d7e-1c2b3a4d5e6f") + string(2, "lakery.unpacker@v1")
                     + field(3, 2, struct_({"team": "ml", "n": 3, "ratio": 0.5, "ok": True, "list": [1, "a"], "nested": {"x": None}})))
    content = field(2, 2, string(1, "weights.bin") + string(2, "application/octet-stream") + string(3, "gzip")
                    + string(4, "numpy") + field(5, 0, 2) + string(6, "lakery.file@v1")
                    + field(7, 2, struct_({"dtype": "f32"})) + string(8, hashlib.sha256(b"w").hexdigest()))
    chunk = field(3, 2, b"\x00\x01\x02")
    write("store_manifest", "upload", delimited(manifest) + delimited(content) + delimited(chunk))
    write("store_manifest", "manifest-only", delimited(manifest))


def main():
    pds_seeds()
    token_seeds()
    manifest_seeds()
    for target in sorted(os.listdir(OUT)):
        print(f"{target}: {len(os.listdir(os.path.join(OUT, target)))} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
