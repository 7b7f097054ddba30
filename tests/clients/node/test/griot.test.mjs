// Griot: sign a package in JavaScript (Ed25519 over the RFC 8785 canonical manifest, the key as
// a did:key), register it, install it onto a node, follow the log live and resume it.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import {
  ADMIN,
  DATA_DIR,
  Status,
  chunks,
  closeClients,
  collect,
  fails,
  griot,
  unary,
  unique,
  upload,
} from '../lib/harness.mjs';
import { targz } from '../lib/tar.mjs';

const BASE58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
function base58btc(bytes) {
  let number = BigInt(`0x${Buffer.from(bytes).toString('hex') || '0'}`);
  let out = '';
  while (number > 0n) {
    out = BASE58[Number(number % 58n)] + out;
    number /= 58n;
  }
  for (const byte of bytes) {
    if (byte !== 0) break;
    out = `1${out}`;
  }
  return out;
}

/** RFC 8785 for JSON built of objects, arrays, strings and safe integers. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function author() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
  const did = `did:key:z${base58btc(Buffer.concat([Buffer.from([0xed, 0x01]), raw]))}`;
  const signManifest = (manifest) => {
    const { signature: _, ...unsigned } = manifest;
    const signature = sign(null, Buffer.from(canonical(unsigned)), privateKey).toString('base64url');
    return { ...unsigned, signature };
  };
  return { did, signManifest };
}

function* registration(manifest, artifact) {
  yield { header: { manifestJson: JSON.stringify(manifest) } };
  for (const chunk of chunks(artifact, 4096)) yield { chunk };
}

describe('griot', () => {
  after(closeClients);

  it('registers a signed package, installs it and follows the log', async () => {
    const client = griot();
    const { did, signManifest } = author();
    const nodeClass = unique('js-camera');
    const script = '#!/bin/sh\necho snap\n';
    const artifact = targz([
      ['bin/capture.sh', script, 0o755],
      ['README', 'Takes a picture every minute.\n'],
    ]);
    const packageId = createHash('sha256').update(artifact).digest('hex');
    const manifest = signManifest({
      name: 'capture',
      node_class: nodeClass,
      version: '2.1.0',
      description: 'takes pictures',
      author: did,
      artifact_sha256: packageId,
    });

    // Bytes that are not the signed artifact: refused as an integrity failure.
    const other = targz([['bin/capture.sh', 'rm -rf /\n', 0o755]]);
    const mismatch = await fails(
      Status.INVALID_ARGUMENT,
      upload(client, 'RegisterPackage', registration(manifest, other), ADMIN()),
    );
    assert.equal(mismatch.reason, 'INTEGRITY_CHECK_FAILED');
    assert.deepEqual(mismatch.fields, ['header.manifest_json.artifact_sha256']);

    const registered = await upload(client, 'RegisterPackage', registration(manifest, artifact), ADMIN());
    assert.equal(registered.created, true);
    assert.equal(registered.package.packageId, packageId);
    assert.equal(registered.package.authorDid, did);
    assert.equal(registered.package.signature, manifest.signature);

    const listed = await unary(client, 'ListPackages', { authorDid: did });
    assert.deepEqual(
      listed.packages.map((p) => [p.packageId, p.name, p.nodeClass, p.version]),
      [[packageId, 'capture', nodeClass, '2.1.0']],
    );

    const node = unique('js-node');
    await fails(
      Status.UNAUTHENTICATED,
      unary(client, 'CreateInstallation', { packageId, targetNodeId: node }),
    );
    await fails(
      Status.NOT_FOUND,
      unary(client, 'CreateInstallation', { packageId: '0'.repeat(64), targetNodeId: node }, ADMIN()),
    );
    const { installation } = await unary(
      client,
      'CreateInstallation',
      { packageId, targetNodeId: node, options: { timeoutSeconds: 120 } },
      ADMIN(),
    );
    assert.equal(installation.targetNodeId, node);

    const followed = await collect(client, 'StreamInstallationLogs', { jobId: installation.jobId, follow: true }, ADMIN(), 60);
    const lines = followed.filter((m) => m.event === 'line').map((m) => m.line);
    const finished = followed.at(-1);
    assert.equal(finished.event, 'finished', 'the stream ends with the final state');
    assert.equal(finished.finished.status, 'INSTALLATION_STATUS_COMPLETED', finished.finished.statusMessage);
    assert.deepEqual(lines.map((l) => l.seq), lines.map((_, i) => i + 1));
    assert.equal(finished.finished.logLineCount, lines.length);

    const installed = path.join(DATA_DIR, 'nodes', node, packageId, 'bin', 'capture.sh');
    assert.equal(await readFile(installed, 'utf8'), script);

    const resumed = await collect(
      client,
      'StreamInstallationLogs',
      { jobId: installation.jobId, fromSeq: 2, follow: true },
      ADMIN(),
      30,
    );
    assert.deepEqual(
      resumed.filter((m) => m.event === 'line').map((m) => [m.line.seq, m.line.message]),
      lines.slice(1).map((l) => [l.seq, l.message]),
    );

    const onNode = await unary(client, 'ListNodePackages', { targetNodeId: node }, ADMIN());
    assert.deepEqual(onNode.packages.map((p) => [p.packageId, p.jobId]), [[packageId, installation.jobId]]);
    const completed = await unary(
      client,
      'ListInstallations',
      { targetNodeId: node, status: 'INSTALLATION_STATUS_COMPLETED' },
      ADMIN(),
    );
    assert.deepEqual(completed.installations.map((i) => i.jobId), [installation.jobId]);
  });
});
