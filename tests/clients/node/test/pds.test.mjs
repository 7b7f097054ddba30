// PDS: create an account, open a session, write records, read them, export the repository as a
// CAR file (each block checked against its CID), and see the commit on the firehose.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, describe, it } from 'node:test';

import {
  Status,
  bearer,
  closeClients,
  collect,
  fails,
  follow,
  fromStruct,
  pds,
  toStruct,
  unary,
  unique,
} from '../lib/harness.mjs';

function varint(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (!(byte & 0x80)) return [value, at];
  }
}

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
/** A CIDv1 string ('b' + unpadded lowercase base32) to its bytes. */
function cidBytes(text) {
  assert.equal(text[0], 'b');
  let bits = 0;
  let value = 0;
  const out = [];
  for (const char of text.slice(1)) {
    value = (value << 5) | BASE32.indexOf(char);
    bits += 5;
    if (bits >= 8) {
      out.push((value >> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** The blocks of a CAR v1 file by CID (hex), each checked against its SHA-256. */
function carBlocks(car) {
  let [length, at] = varint(car, 0);
  const header = car.subarray(at, at + length);
  at += length;
  const blocks = new Map();
  while (at < car.length) {
    [length, at] = varint(car, at);
    const end = at + length;
    const start = at;
    let version, hashCode, digestLength;
    [version, at] = varint(car, at);
    assert.equal(version, 1);
    [, at] = varint(car, at); // codec
    [hashCode, at] = varint(car, at);
    assert.equal(hashCode, 0x12, 'sha2-256');
    [digestLength, at] = varint(car, at);
    const cid = car.subarray(start, at + digestLength);
    const digest = car.subarray(at, at + digestLength);
    at += digestLength;
    const data = car.subarray(at, end);
    assert.ok(createHash('sha256').update(data).digest().equals(digest), 'a block does not match its CID');
    blocks.set(cid.toString('hex'), data);
    at = end;
  }
  return { header, blocks };
}

describe('pds', () => {
  after(closeClients);

  it('creates an account and a session, writes and exports records, streams the commit', async () => {
    const client = pds();
    const handle = `${unique('js-bob').replaceAll('-', '')}.test`;
    const password = 'tr0ub4dor&3 stapler';
    await fails(
      Status.INVALID_ARGUMENT,
      unary(client, 'CreateAccount', { handle: 'not a handle', email: 'bob@example.com', password }),
    );
    const created = await unary(client, 'CreateAccount', { handle, email: `${handle}@example.com`, password });
    const { did } = created.session;
    assert.match(did, /^did:plc:[a-z2-7]{24}$/);
    assert.equal(fromStruct(created.plcOperation).type, 'plc_operation');

    // Sign in by email this time.
    const { session } = await unary(client, 'CreateSession', { identifier: `${handle}@example.com`, password });
    assert.equal(session.did, did);
    const auth = () => bearer(session.accessJwt);

    const post = (text) => ({
      repo: did,
      collection: 'app.bsky.feed.post',
      record: toStruct({ $type: 'app.bsky.feed.post', text, createdAt: '2026-11-24T12:00:00Z' }),
    });
    const first = await unary(client, 'CreateRecord', post('first from Node'), auth());
    const second = await unary(client, 'CreateRecord', { ...post('second from Node'), rkey: 'pinned' }, auth());
    assert.equal(second.uri, `at://${did}/app.bsky.feed.post/pinned`);
    // Another account's repository is not writable with this token.
    await fails(Status.PERMISSION_DENIED, unary(client, 'CreateRecord', { ...post('x'), repo: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa' }, auth()));

    const got = await unary(client, 'GetRecord', { repo: did, collection: 'app.bsky.feed.post', rkey: 'pinned' });
    assert.equal(fromStruct(got.value).text, 'second from Node');
    const listed = await unary(client, 'ListRecords', { repo: handle, collection: 'app.bsky.feed.post', reverse: true });
    assert.deepEqual(
      listed.records.map((r) => fromStruct(r.value).text).sort(),
      ['first from Node', 'second from Node'],
    );

    const head = await unary(client, 'GetLatestCommit', { did });
    assert.equal(head.cid, second.commit.cid);
    const car = Buffer.concat((await collect(client, 'GetRepo', { did })).map((m) => m.chunk));
    const { header, blocks } = carBlocks(car);
    assert.ok(header.includes(Buffer.concat([Buffer.from([0]), cidBytes(head.cid)])), 'the head is the root');
    for (const cid of [head.cid, first.cid, second.cid]) {
      assert.ok(blocks.has(cidBytes(cid).toString('hex')), `${cid} missing from the export`);
    }

    // The firehose from the start carries the repository's commits in order: its creation
    // (no operations), then the two records.
    const events = follow(client, 'SubscribeRepos', { cursor: 0 }, undefined, 15);
    const commits = [];
    try {
      for await (const event of events) {
        if (event.event === 'commit' && event.commit.repo === did) {
          if (event.commit.ops.length === 0) {
            assert.equal(commits.length, 0, 'only the first commit has no operations');
            continue;
          }
          commits.push(event.commit);
          if (commits.length === 2) break;
        }
      }
    } finally {
      events.cancel();
    }
    assert.deepEqual(
      commits.map((c) => c.ops.map((op) => [op.action, op.path, op.cid])),
      [
        [['create', first.uri.split('/').slice(-2).join('/'), first.cid]],
        [['create', 'app.bsky.feed.post/pinned', second.cid]],
      ],
    );
    assert.equal(commits[1].since, commits[0].rev);
  });
});
