"""Store: put an object (a manifest and two contents, one inline, one in files), find it by its
tags, read it back whole and in part, watch it arrive, delete it."""

import hashlib
import os
import uuid

import grpc
from google.protobuf import struct_pb2

from harness import ADMIN, ClientTest, channel, chunks, store_pb2 as pb, store_pb2_grpc, unique


def tags(**values):
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


class StoreFlowTest(ClientTest):
    def test_put_find_get_watch_delete(self):
        store = store_pb2_grpc.StoreServiceStub(channel())
        run = unique("py-run")
        config = b'{"learning_rate": 0.01, "layers": [64, 32]}'
        weights = os.urandom(300_000)
        class_id = str(uuid.uuid4())

        def put_stream(expected_weights_sha256):
            yield pb.PutObjectRequest(
                manifest=pb.ManifestHeader(
                    class_id=class_id, unpacker_name="model@v1", tags=tags(run=run, kind="model")
                )
            )
            yield pb.PutObjectRequest(
                content=pb.ContentHeader(
                    content_name="config",
                    content_type="application/json",
                    serializer_name="json@v1",
                    serializer_type=pb.SERIALIZER_TYPE_VALUE,
                    storage_name="lakery.json_storage_data@v1",
                )
            )
            yield pb.PutObjectRequest(chunk=config)
            yield pb.PutObjectRequest(
                content=pb.ContentHeader(
                    content_name="weights",
                    content_type="application/octet-stream",
                    serializer_name="raw@v1",
                    serializer_type=pb.SERIALIZER_TYPE_STREAM,
                    expected_sha256=expected_weights_sha256,
                )
            )
            for piece in chunks(weights, 64 * 1024):
                yield pb.PutObjectRequest(chunk=piece)

        # Without the admin token: refused. With a wrong announced hash: nothing is stored.
        self.fails(grpc.StatusCode.UNAUTHENTICATED, store.PutObject, put_stream(""))
        self.fails(
            grpc.StatusCode.INVALID_ARGUMENT, store.PutObject, put_stream("0" * 64), metadata=ADMIN
        )
        listed = store.ListManifests(
            pb.ListManifestsRequest(filter=pb.ManifestFilter(tags=tags(run=run))), metadata=ADMIN
        )
        self.assertEqual(len(listed.manifests), 0)

        put = store.PutObject(put_stream(hashlib.sha256(weights).hexdigest()), metadata=ADMIN)
        manifest_id = put.manifest.id
        self.assertEqual(put.manifest.class_id, class_id)
        self.assertEqual(dict(put.manifest.tags), {"run": run, "kind": "model"})
        contents = {c.content_name: c for c in put.contents}
        self.assertEqual(set(contents), {"config", "weights"})
        self.assertEqual(contents["config"].content_hash, hashlib.sha256(config).hexdigest())
        self.assertEqual(contents["config"].content_size, len(config))
        self.assertEqual(contents["config"].storage_name, "lakery.json_storage_data@v1")
        self.assertEqual(contents["weights"].content_hash, hashlib.sha256(weights).hexdigest())
        self.assertEqual(contents["weights"].content_size, len(weights))
        self.assertEqual(contents["weights"].storage_name, "lakery.file@v1")

        # Find it by a tag; read the manifest.
        listed = store.ListManifests(
            pb.ListManifestsRequest(filter=pb.ManifestFilter(tags=tags(run=run))), metadata=ADMIN
        )
        self.assertEqual([m.id for m in listed.manifests], [manifest_id])
        got = store.GetManifest(pb.GetManifestRequest(manifest_id=manifest_id), metadata=ADMIN)
        self.assertEqual(sorted(c.content_name for c in got.contents), ["config", "weights"])

        # One content, whole and as a byte range.
        def content(name, offset=0, length=0):
            messages = list(
                store.GetContent(
                    pb.GetContentRequest(
                        manifest_id=manifest_id, content_name=name, offset=offset, length=length
                    ),
                    metadata=ADMIN,
                )
            )
            self.assertEqual(messages[0].content.content_name, name)
            return b"".join(m.chunk for m in messages[1:])

        self.assertEqual(content("config"), config)
        self.assertEqual(content("weights", offset=1000, length=5000), weights[1000:6000])

        # The whole object: manifest, then each content's record followed by its bytes.
        received = {}
        current = None
        for message in store.GetObject(pb.GetObjectRequest(manifest_id=manifest_id), metadata=ADMIN):
            part = message.WhichOneof("part")
            if part == "manifest":
                self.assertEqual(message.manifest.id, manifest_id)
            elif part == "content":
                current = message.content.content_name
                received[current] = b""
            else:
                received[current] += message.chunk
        self.assertEqual(received, {"config": config, "weights": weights})

        # Watching from just before it shows it.
        watch = store.WatchManifests(
            pb.WatchManifestsRequest(
                filter=pb.ManifestFilter(tags=tags(run=run)), after_seq=put.manifest.seq - 1
            ),
            metadata=ADMIN,
            timeout=10,
        )
        first = next(watch)
        watch.cancel()
        self.assertEqual(first.manifest.id, manifest_id)

        # Delete: gone for every read.
        store.DeleteObject(pb.DeleteObjectRequest(manifest_id=manifest_id), metadata=ADMIN)
        self.fails(
            grpc.StatusCode.NOT_FOUND,
            store.GetManifest,
            pb.GetManifestRequest(manifest_id=manifest_id),
            metadata=ADMIN,
        )
        self.fails(
            grpc.StatusCode.NOT_FOUND,
            store.GetContent,
            pb.GetContentRequest(manifest_id=manifest_id, content_name="config"),
            metadata=ADMIN,
        )
