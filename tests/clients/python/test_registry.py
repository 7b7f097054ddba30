"""Registry: a publisher signs in with their GitHub token, makes a scoped API token, publishes a
package and a new version, finds it, stars it and downloads it, and follows the events."""

import gzip
import hashlib
import io
import json
import tarfile
import time

import grpc

from harness import (
    ClientTest,
    bearer,
    channel,
    chunks,
    github_token,
    registry_pb2 as pb,
    registry_pb2_grpc,
    unique,
)


def tarball(name, version):
    """A gzipped package tarball as `npm pack` would lay it out."""
    manifest = json.dumps({"name": name, "version": version}).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("package/package.json")
        info.size = len(manifest)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(manifest))
    return gzip.compress(raw.getvalue())


def publish_stream(header, data, chunk_size=1000):
    yield pb.PublishPackageRequest(header=header)
    for piece in chunks(data, chunk_size):
        yield pb.PublishPackageRequest(chunk=piece)


class RegistryFlowTest(ClientTest):
    def test_publish_find_star_download_follow(self):
        registry = registry_pb2_grpc.RegistryServiceStub(channel())
        login = unique("py-dev")
        oauth = bearer(github_token(login))

        # Sign in with the GitHub token; an unknown one is refused by the identity provider.
        user = registry.SignIn(pb.SignInRequest(), metadata=oauth).user
        self.assertEqual(user.username, login)
        self.assertEqual(user.avatar_url, f"https://avatars.standin.test/{login}")
        self.fails(
            grpc.StatusCode.UNAUTHENTICATED,
            registry.SignIn,
            pb.SignInRequest(),
            metadata=bearer("gho_not-a-token-anyone-issued"),
        )

        # A scoped API token for publishing, shown once.
        created = registry.CreateApiToken(
            pb.CreateApiTokenRequest(
                name="ci",
                scopes=[
                    pb.TOKEN_SCOPE_PUBLISH_NEW,
                    pb.TOKEN_SCOPE_PUBLISH_UPDATE,
                    pb.TOKEN_SCOPE_STAR,
                ],
            ),
            metadata=oauth,
        )
        self.assertTrue(created.token.startswith("qreg_"), created.token)
        self.assertEqual(created.api_token.username, login)
        api = bearer(created.token)

        # Publish: header, then the tarball in chunks.
        name = unique("py-weather-widget")
        keyword = unique("pyzephyr").replace("-", "")
        first = tarball(name, "1.0.0")
        manifest = {
            "name": name,
            "version": "1.0.0",
            "description": "Shows the weather in the status bar",
            "keywords": [keyword, "weather"],
            "license": "MIT",
            "engines": {"atom": ">=1.0.0 <2.0.0"},
        }
        published = registry.PublishPackage(
            publish_stream(
                pb.PublishHeader(manifest_json=json.dumps(manifest), readme=f"# {name}"), first
            ),
            metadata=api,
        )
        self.assertEqual(published.package.name, name)
        self.assertEqual(published.package.latest_version, "1.0.0")
        self.assertEqual(published.version.tarball_sha256, hashlib.sha256(first).hexdigest())
        self.assertEqual(published.version.tarball_size, len(first))
        self.assertEqual(published.version.license, "MIT")

        # The same name again is taken; a version that is not semver names its field.
        self.fails(
            grpc.StatusCode.ALREADY_EXISTS,
            registry.PublishPackage,
            publish_stream(pb.PublishHeader(manifest_json=json.dumps(manifest)), first),
            metadata=api,
        )
        bad = dict(manifest, name=unique("py-bad"), version="one point oh")
        failure = self.fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            registry.PublishPackage,
            publish_stream(pb.PublishHeader(manifest_json=json.dumps(bad)), first),
            metadata=api,
        )
        self.assertTrue(any("version" in f for f in failure.field_violations), failure)

        # A second version, with its tarball's digest announced up front.
        second = tarball(name, "1.1.0")
        manifest["version"] = "1.1.0"
        registry.PublishVersion(
            iter(
                [
                    pb.PublishVersionRequest(
                        header=pb.PublishVersionHeader(
                            package_name=name,
                            publish=pb.PublishHeader(
                                manifest_json=json.dumps(manifest),
                                readme=f"# {name}\n\nNow with wind.",
                                tarball_sha256=hashlib.sha256(second).hexdigest(),
                            ),
                        )
                    ),
                    pb.PublishVersionRequest(chunk=second),
                ]
            ),
            metadata=api,
        )

        # Find it: by keyword, and read it whole.
        found = registry.SearchPackages(pb.SearchPackagesRequest(query=keyword))
        self.assertEqual([p.name for p in found.packages], [name])
        package = registry.GetPackage(pb.GetPackageRequest(name=name)).package
        self.assertEqual(package.latest_version, "1.1.0")
        self.assertEqual([v.version for v in package.versions], ["1.1.0", "1.0.0"])
        self.assertEqual(list(package.owners), [login])
        self.assertIn("Now with wind.", package.readme)
        self.assertEqual(set(package.keywords), {keyword, "weather"})

        # Star it (twice: idempotent).
        for _ in range(2):
            stars = registry.StarPackage(pb.StarPackageRequest(package_name=name), metadata=api)
            self.assertEqual(stars.stargazers_count, 1)
        gazers = registry.ListStargazers(pb.ListStargazersRequest(package_name=name))
        self.assertEqual([u.username for u in gazers.users], [login])

        # Download the latest: the version first, then the exact bytes; the download counts.
        messages = list(registry.DownloadVersion(pb.DownloadVersionRequest(package_name=name)))
        self.assertEqual(messages[0].WhichOneof("part"), "version")
        self.assertEqual(messages[0].version.version, "1.1.0")
        self.assertEqual(b"".join(m.chunk for m in messages[1:]), second)
        old = list(
            registry.DownloadVersion(pb.DownloadVersionRequest(package_name=name, version="1.0.0"))
        )
        self.assertEqual(b"".join(m.chunk for m in old[1:]), first)
        package = registry.GetPackage(pb.GetPackageRequest(name=name)).package
        self.assertEqual(package.downloads, 2)
        self.assertEqual(package.stargazers_count, 1)
        self.fails(
            grpc.StatusCode.NOT_FOUND,
            registry.DownloadVersion,
            pb.DownloadVersionRequest(package_name=name, version="9.9.9"),
        )

        # Follow the events from the start until both publishes of this package have arrived.
        events = registry.WatchRegistryEvents(pb.WatchRegistryEventsRequest(after_seq=0), timeout=10)
        mine = []
        last_seq = 0
        for event in events:
            self.assertGreater(event.seq, last_seq)
            last_seq = event.seq
            if event.package_name == name:
                mine.append((event.kind, event.version))
                if len(mine) == 2:
                    events.cancel()
                    break
        self.assertEqual(
            mine, [(pb.EVENT_KIND_PUBLISHED, "1.0.0"), (pb.EVENT_KIND_PUBLISHED, "1.1.0")]
        )
