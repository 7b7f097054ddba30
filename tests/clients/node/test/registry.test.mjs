// Registry: sign in with a GitHub token, make a scoped API token, publish, find, star,
// download, follow the events.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, describe, it } from 'node:test';

import {
  Status,
  bearer,
  chunks,
  closeClients,
  collect,
  fails,
  follow,
  githubToken,
  registry,
  unary,
  unique,
  upload,
} from '../lib/harness.mjs';
import { targz } from '../lib/tar.mjs';

const sha256 = (data) => createHash('sha256').update(data).digest('hex');

function* publishMessages(header, tarball) {
  yield { header };
  for (const chunk of chunks(tarball, 700)) yield { chunk };
}

describe('registry', () => {
  after(closeClients);

  it('signs in, publishes, finds, stars, downloads and follows', async () => {
    const client = registry();
    const login = unique('js-dev');
    const oauth = bearer(await githubToken(login));

    const { user } = await unary(client, 'SignIn', {}, oauth);
    assert.equal(user.username, login);
    await fails(Status.UNAUTHENTICATED, unary(client, 'SignIn', {}, bearer('gho_nobody-issued-this')));

    const issued = await unary(
      client,
      'CreateApiToken',
      { name: 'laptop', scopes: ['TOKEN_SCOPE_PUBLISH_NEW', 'TOKEN_SCOPE_STAR'] },
      oauth,
    );
    assert.match(issued.token, /^qreg_/);
    assert.deepEqual(issued.apiToken.scopes, ['TOKEN_SCOPE_PUBLISH_NEW', 'TOKEN_SCOPE_STAR']);
    const api = () => bearer(issued.token);

    const name = unique('js-lint-helper');
    const keyword = unique('jsnimbus').replaceAll('-', '');
    const manifest = {
      name,
      version: '0.3.0',
      description: 'Underlines what the linter dislikes',
      keywords: [keyword],
      engines: { atom: '>=1.50.0' },
    };
    const tarball = targz([['package/package.json', JSON.stringify(manifest)]]);
    const published = await upload(
      client,
      'PublishPackage',
      publishMessages({ manifestJson: JSON.stringify(manifest), readme: '# lint helper' }, tarball),
      api(),
    );
    assert.equal(published.package.name, name);
    assert.equal(published.package.latestVersion, '0.3.0');
    assert.equal(published.version.tarballSha256, sha256(tarball));
    assert.equal(published.version.tarballSize, tarball.length);

    // The token has no publish-update scope: a new version is refused. A bad name names its field.
    const next = { ...manifest, version: '0.4.0' };
    await fails(
      Status.PERMISSION_DENIED,
      upload(
        client,
        'PublishVersion',
        [{ header: { packageName: name, publish: { manifestJson: JSON.stringify(next) } } }, { chunk: tarball }],
        api(),
      ),
    );
    const badName = await fails(
      Status.INVALID_ARGUMENT,
      upload(
        client,
        'PublishPackage',
        publishMessages({ manifestJson: JSON.stringify({ ...manifest, name: 'Not A Name!' }) }, tarball),
        api(),
      ),
    );
    assert.ok(badName.fields.some((f) => f.includes('name')), JSON.stringify(badName));

    const found = await unary(client, 'SearchPackages', { query: keyword });
    assert.deepEqual(found.packages.map((p) => p.name), [name]);
    const compatible = await unary(client, 'ListPackages', {
      sortBy: 'SORT_BY_CREATED',
      filter: { owner: login, engineVersion: '1.60.0' },
    });
    assert.deepEqual(compatible.packages.map((p) => p.name), [name]);
    const tooOld = await unary(client, 'ListPackages', { filter: { owner: login, engineVersion: '1.40.0' } });
    assert.deepEqual(tooOld.packages, []);

    assert.equal((await unary(client, 'StarPackage', { packageName: name }, api())).stargazersCount, 1);
    const starred = await unary(client, 'ListUserStars', { username: login });
    assert.deepEqual(starred.packages.map((p) => p.name), [name]);

    const download = await collect(client, 'DownloadVersion', { packageName: name });
    assert.equal(download[0].part, 'version');
    assert.equal(download[0].version.version, '0.3.0');
    assert.ok(Buffer.concat(download.slice(1).map((m) => m.chunk)).equals(tarball));
    const { package: after } = await unary(client, 'GetPackage', { name });
    assert.equal(after.downloads, 1);
    assert.equal(after.stargazersCount, 1);
    assert.deepEqual(after.owners, [login]);
    assert.equal(after.readme, '# lint helper');

    // The event stream, from the start, reaches this package's publication.
    const events = follow(client, 'WatchRegistryEvents', { afterSeq: 0 }, undefined, 10);
    let seen;
    try {
      for await (const event of events) {
        if (event.packageName === name) {
          seen = event;
          break;
        }
      }
    } finally {
      events.cancel();
    }
    assert.equal(seen?.kind, 'EVENT_KIND_PUBLISHED');
    assert.equal(seen.version, '0.3.0');
    assert.equal(seen.packageId, after.id);
  });
});
