// Store: put an object, find it by tags, read it back whole and in part, delete it.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { after, describe, it } from 'node:test';

import {
  ADMIN,
  Status,
  chunks,
  closeClients,
  collect,
  fails,
  fromStruct,
  store,
  toStruct,
  unary,
  unique,
  upload,
} from '../lib/harness.mjs';

const sha256 = (data) => createHash('sha256').update(data).digest('hex');

describe('store', () => {
  after(closeClients);

  it('puts, finds, gets and deletes an object', async () => {
    const client = store();
    const project = unique('js-project');
    const notes = Buffer.from('first line\nsecond line\n');
    const frames = randomBytes(200_000);
    const classId = randomUUID();

    function* object() {
      yield { manifest: { classId, unpackerName: 'video@v2', tags: toStruct({ project, frames: 3 }) } };
      yield {
        content: {
          contentName: 'notes',
          contentType: 'text/plain',
          serializerName: 'text@v1',
          serializerType: 'SERIALIZER_TYPE_VALUE',
          storageName: 'lakery.json_storage_data@v1',
          tags: toStruct({ lang: 'en' }),
        },
      };
      yield { chunk: notes };
      yield {
        content: {
          contentName: 'frames',
          contentType: 'application/octet-stream',
          serializerName: 'raw@v1',
          serializerType: 'SERIALIZER_TYPE_STREAM',
        },
      };
      for (const chunk of chunks(frames, 50_000)) yield { chunk };
    }

    await fails(Status.UNAUTHENTICATED, upload(client, 'PutObject', object()));
    // A content announced without its manifest first is refused.
    await fails(
      Status.INVALID_ARGUMENT,
      upload(client, 'PutObject', [{ content: { contentName: 'x', serializerType: 'SERIALIZER_TYPE_VALUE' } }], ADMIN()),
    );

    const put = await upload(client, 'PutObject', object(), ADMIN());
    const id = put.manifest.id;
    assert.deepEqual(fromStruct(put.manifest.tags), { project, frames: 3 });
    const byName = Object.fromEntries(put.contents.map((c) => [c.contentName, c]));
    assert.equal(byName.notes.contentHash, sha256(notes));
    assert.equal(byName.notes.contentHashAlgorithm, 'sha256');
    assert.equal(byName.frames.contentHash, sha256(frames));
    assert.equal(byName.frames.contentSize, frames.length);
    assert.deepEqual(fromStruct(byName.notes.tags), { lang: 'en' });

    const listed = await unary(client, 'ListManifests', { filter: { tags: toStruct({ project }) } }, ADMIN());
    assert.deepEqual(listed.manifests.map((m) => m.id), [id]);
    const contents = await unary(client, 'ListContents', { manifestId: id }, ADMIN());
    assert.deepEqual(contents.contents.map((c) => c.contentName).sort(), ['frames', 'notes']);

    const notesBack = await collect(client, 'GetContent', { manifestId: id, contentName: 'notes' }, ADMIN());
    assert.equal(notesBack[0].part, 'content');
    assert.ok(Buffer.concat(notesBack.slice(1).map((m) => m.chunk)).equals(notes));
    const range = await collect(
      client,
      'GetContent',
      { manifestId: id, contentName: 'frames', offset: 150_000, length: 0 },
      ADMIN(),
    );
    assert.ok(Buffer.concat(range.slice(1).map((m) => m.chunk)).equals(frames.subarray(150_000)));

    const whole = await collect(client, 'GetObject', { manifestId: id }, ADMIN());
    assert.equal(whole[0].manifest.id, id);
    const received = {};
    let current;
    for (const message of whole.slice(1)) {
      if (message.part === 'content') received[(current = message.content.contentName)] = [];
      else received[current].push(message.chunk);
    }
    assert.ok(Buffer.concat(received.notes).equals(notes));
    assert.ok(Buffer.concat(received.frames).equals(frames));

    await unary(client, 'DeleteObject', { manifestId: id }, ADMIN());
    await fails(Status.NOT_FOUND, unary(client, 'GetManifest', { manifestId: id }, ADMIN()));
    const gone = await unary(client, 'ListManifests', { filter: { tags: toStruct({ project }) } }, ADMIN());
    assert.deepEqual(gone.manifests, []);
  });
});
