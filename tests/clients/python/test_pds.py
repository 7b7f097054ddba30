"""PDS: create an account, open a session, write a record and read it back, describe the repo,
export it as a CAR file (checked block by block against its CIDs), and see the commit on the
firehose."""

import base64
import hashlib

import grpc
from google.protobuf import struct_pb2

from harness import ClientTest, bearer, channel, pds_pb2 as pb, pds_pb2_grpc, unique


def varint(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def cid_bytes(text):
    """A CIDv1 string (multibase 'b': base32, lowercase, unpadded) to its binary form."""
    assert text.startswith("b"), text
    body = text[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


def read_cid(data, at):
    start = at
    version, at = varint(data, at)
    assert version == 1, f"CID version {version}"
    _codec, at = varint(data, at)
    hash_code, at = varint(data, at)
    length, at = varint(data, at)
    return data[start : at + length], hash_code, data[at : at + length], at + length


def car_blocks(car):
    """Splits a CAR v1 file into its header and {cid bytes: block}, checking every block's hash."""
    header_length, at = varint(car, 0)
    header = car[at : at + header_length]
    at += header_length
    blocks = {}
    while at < len(car):
        length, at = varint(car, at)
        end = at + length
        cid, hash_code, digest, at = read_cid(car, at)
        assert hash_code == 0x12, "sha2-256"
        assert hashlib.sha256(car[at:end]).digest() == digest, "a block does not match its CID"
        blocks[cid] = car[at:end]
        at = end
    return header, blocks


def record(text):
    value = struct_pb2.Struct()
    value.update({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-24T12:00:00Z"})
    return value


class PdsFlowTest(ClientTest):
    def test_account_session_records_export_firehose(self):
        pds = pds_pb2_grpc.PdsServiceStub(channel())
        handle = unique("py-alice").replace("-", "") + ".test"
        password = "correct horse battery"

        created = pds.CreateAccount(
            pb.CreateAccountRequest(handle=handle, email=f"{handle}@example.com", password=password)
        )
        did = created.session.did
        self.assertRegex(did, r"^did:plc:[a-z2-7]{24}$")
        self.assertEqual(created.session.handle, handle)
        self.assertEqual(created.session.status, pb.ACCOUNT_STATUS_ACTIVE)
        self.fails(
            grpc.StatusCode.ALREADY_EXISTS,
            pds.CreateAccount,
            pb.CreateAccountRequest(handle=handle, email=f"other-{handle}@example.com", password=password),
        )
        failure = self.fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            pds.CreateAccount,
            pb.CreateAccountRequest(handle="x" + handle, email=f"x{handle}@example.com", password="short"),
        )
        self.assertIn("password", failure.field_violations)

        # Sign in with the handle; a wrong password is refused.
        self.fails(
            grpc.StatusCode.UNAUTHENTICATED,
            pds.CreateSession,
            pb.CreateSessionRequest(identifier=handle, password="not the password"),
        )
        session = pds.CreateSession(pb.CreateSessionRequest(identifier=handle, password=password)).session
        self.assertEqual(session.did, did)
        auth = bearer(session.access_jwt)
        self.assertEqual(pds.GetSession(pb.GetSessionRequest(), metadata=auth).session.handle, handle)

        # Write a record (not without the token), read it back.
        post = pb.CreateRecordRequest(repo=did, collection="app.bsky.feed.post", record=record("Hello from Python"))
        self.fails(grpc.StatusCode.UNAUTHENTICATED, pds.CreateRecord, post)
        written = pds.CreateRecord(post, metadata=auth)
        rkey = written.uri.rsplit("/", 1)[1]
        self.assertEqual(written.uri, f"at://{did}/app.bsky.feed.post/{rkey}")
        got = pds.GetRecord(pb.GetRecordRequest(repo=handle, collection="app.bsky.feed.post", rkey=rkey))
        self.assertEqual(got.cid, written.cid)
        self.assertEqual(got.value["text"], "Hello from Python")
        listed = pds.ListRecords(pb.ListRecordsRequest(repo=handle, collection="app.bsky.feed.post"))
        self.assertEqual([(r.uri, r.value["text"]) for r in listed.records], [(written.uri, "Hello from Python")])

        described = pds.DescribeRepo(pb.DescribeRepoRequest(repo=handle))
        self.assertEqual(described.did, did)
        self.assertEqual(list(described.collections), ["app.bsky.feed.post"])
        self.assertEqual(described.did_doc["id"], did)
        self.assertTrue(described.handle_is_correct)
        head = pds.GetLatestCommit(pb.GetLatestCommitRequest(did=did))
        self.assertEqual((head.cid, head.rev), (written.commit.cid, written.commit.rev))

        # Export: a CAR file whose root is the head commit and which holds the record's block.
        car = b"".join(m.chunk for m in pds.GetRepo(pb.GetRepoRequest(did=did)))
        header, blocks = car_blocks(car)
        self.assertIn(b"\x00" + cid_bytes(head.cid), header)  # roots: [head] (CBOR tag 42)
        self.assertIn(cid_bytes(head.cid), blocks)
        self.assertIn(cid_bytes(written.cid), blocks)
        self.assertIn(b"Hello from Python", blocks[cid_bytes(written.cid)])

        # The firehose, replayed from the start, carries the commit.
        events = pds.SubscribeRepos(pb.SubscribeReposRequest(cursor=0), timeout=15)
        commit = None
        for event in events:
            if event.WhichOneof("event") == "commit" and event.commit.repo == did:
                commit = event.commit
                if commit.commit == written.commit.cid:
                    events.cancel()
                    break
        self.assertIsNotNone(commit, "no commit of the repository on the firehose")
        self.assertEqual(commit.commit, written.commit.cid)
        self.assertEqual([(op.action, op.path, op.cid) for op in commit.ops], [("create", f"app.bsky.feed.post/{rkey}", written.cid)])
