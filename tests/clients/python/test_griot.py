"""Griot: an author signs a package in Python (Ed25519 over the RFC 8785 canonical manifest, the
key as a did:key), registers it, installs it onto a node and follows the job's log live, then
resumes the log from a line and reads what the node has."""

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from harness import (
    ADMIN,
    DATA_DIR,
    ClientTest,
    channel,
    chunks,
    griot_pb2 as pb,
    griot_pb2_grpc,
    unique,
)

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58btc(data):
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = BASE58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def did_key(private_key):
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    # multicodec ed25519-pub (0xed, as the varint 0xed 0x01), multibase base58btc ('z').
    return "did:key:z" + base58btc(b"\xed\x01" + public)


def canonical_json(value):
    """RFC 8785 for what these manifests hold (strings, arrays, objects): sorted keys, no space."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(private_key, manifest):
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    signature = private_key.sign(canonical_json(unsigned))
    return dict(manifest, signature=base64.urlsafe_b64encode(signature).rstrip(b"=").decode())


def artifact(files):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, (mode, data) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def register_stream(manifest, data):
    yield pb.RegisterPackageRequest(header=pb.PackageHeader(manifest_json=json.dumps(manifest)))
    for piece in chunks(data, 16 * 1024):
        yield pb.RegisterPackageRequest(chunk=piece)


class GriotFlowTest(ClientTest):
    def test_sign_register_install_follow(self):
        griot = griot_pb2_grpc.GriotServiceStub(channel())
        key = Ed25519PrivateKey.generate()
        author = did_key(key)
        node_class = unique("py-sensor")
        script = b"#!/bin/sh\necho hello from thermo\n"
        data = artifact(
            {
                "run.sh": (0o755, script),
                "config/defaults.json": (0o644, b'{"interval_seconds": 30}'),
            }
        )
        package_id = hashlib.sha256(data).hexdigest()
        manifest = sign(
            key,
            {
                "name": "thermo",
                "node_class": node_class,
                "version": "1.0.0",
                "description": "reads the temperature",
                "author": author,
                "artifact_sha256": package_id,
            },
        )

        # A manifest changed after signing is refused, naming the signature.
        tampered = dict(manifest, description="reads the temperature, and your mail")
        failure = self.fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            griot.RegisterPackage,
            register_stream(tampered, data),
            metadata=ADMIN,
        )
        self.assertEqual(failure.reason, "SIGNATURE_FAILED")
        # Registering needs the admin token.
        self.fails(grpc.StatusCode.UNAUTHENTICATED, griot.RegisterPackage, register_stream(manifest, data))

        registered = griot.RegisterPackage(register_stream(manifest, data), metadata=ADMIN)
        self.assertTrue(registered.created)
        self.assertEqual(registered.package.package_id, package_id)
        self.assertEqual(registered.package.author_did, author)
        self.assertEqual(registered.package.artifact_url, f"blob:sha256:{package_id}")
        self.assertEqual(registered.package.artifact_size, len(data))
        again = griot.RegisterPackage(register_stream(manifest, data), metadata=ADMIN)
        self.assertFalse(again.created)

        # Public queries.
        package = griot.GetPackage(pb.GetPackageRequest(package_id=package_id)).package
        self.assertEqual((package.name, package.node_class, package.version), ("thermo", node_class, "1.0.0"))
        listed = griot.ListPackages(
            pb.ListPackagesRequest(manifest_contains_json=json.dumps({"node_class": node_class}))
        )
        self.assertEqual([p.package_id for p in listed.packages], [package_id])

        # Install, with an idempotency key: a retry gets the same job.
        node = unique("py-node")
        request = pb.CreateInstallationRequest(
            package_id=package_id, target_node_id=node, idempotency_key=unique("install")
        )
        job = griot.CreateInstallation(request, metadata=ADMIN)
        self.assertTrue(job.created)
        retry = griot.CreateInstallation(request, metadata=ADMIN)
        self.assertFalse(retry.created)
        self.assertEqual(retry.installation.job_id, job.installation.job_id)
        job_id = job.installation.job_id

        # Follow the log live until the job ends: lines 1, 2, 3... then the final state.
        lines, finished = [], None
        for event in griot.StreamInstallationLogs(
            pb.StreamInstallationLogsRequest(job_id=job_id, follow=True), metadata=ADMIN, timeout=60
        ):
            if event.WhichOneof("event") == "line":
                lines.append(event.line)
            else:
                finished = event.finished
        self.assertIsNotNone(finished, "the followed stream ended without the job's final state")
        self.assertEqual(finished.status, pb.INSTALLATION_STATUS_COMPLETED, finished.status_message)
        self.assertEqual([line.seq for line in lines], list(range(1, len(lines) + 1)))
        self.assertGreaterEqual(len(lines), 3)
        self.assertEqual(finished.log_line_count, len(lines))

        # The node has the package's files.
        installed = os.path.join(DATA_DIR, "nodes", node, package_id)
        with open(os.path.join(installed, "run.sh"), "rb") as f:
            self.assertEqual(f.read(), script)
        self.assertTrue(os.access(os.path.join(installed, "run.sh"), os.X_OK))

        # Resume from line 3 as after a broken stream: the same lines from there, nothing else.
        resumed = [
            event.line
            for event in griot.StreamInstallationLogs(
                pb.StreamInstallationLogsRequest(job_id=job_id, from_seq=3, follow=True),
                metadata=ADMIN,
                timeout=30,
            )
            if event.WhichOneof("event") == "line"
        ]
        self.assertEqual([(l.seq, l.message) for l in resumed], [(l.seq, l.message) for l in lines[2:]])

        with_logs = griot.GetInstallation(
            pb.GetInstallationRequest(job_id=job_id, include_logs=True), metadata=ADMIN
        ).installation
        self.assertEqual(list(with_logs.logs), [line.message for line in lines])
        on_node = griot.ListNodePackages(pb.ListNodePackagesRequest(target_node_id=node), metadata=ADMIN)
        self.assertEqual(
            [(p.package_id, p.name, p.version, p.job_id) for p in on_node.packages],
            [(package_id, "thermo", "1.0.0", job_id)],
        )

        # Revoking the author refuses their packages from then on (and is undone afterwards, as
        # the policy is the server's, shared by every suite).
        griot.SetAuthorTrust(
            pb.SetAuthorTrustRequest(author_did=author, trust=pb.TRUST_REVOKED, note="key leaked"),
            metadata=ADMIN,
        )
        try:
            failure = self.fails(
                grpc.StatusCode.FAILED_PRECONDITION,
                griot.CreateInstallation,
                pb.CreateInstallationRequest(package_id=package_id, target_node_id=unique("py-node")),
                metadata=ADMIN,
            )
            self.assertEqual(failure.reason, "AUTHOR_NOT_TRUSTED")
        finally:
            griot.SetAuthorTrust(
                pb.SetAuthorTrustRequest(author_did=author, trust=pb.TRUST_UNSPECIFIED),
                metadata=ADMIN,
            )
