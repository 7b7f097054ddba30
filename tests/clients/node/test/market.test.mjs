// Market: sell a dataset, buy it through the stand-in Sui wallet and ledger, download and
// decrypt it with the buyer's X25519 key in JavaScript, review it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
} from 'node:crypto';
import { once } from 'node:events';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';

import {
  BIN_DIR,
  ESCROW_ADDRESS,
  LEDGER_LISTEN,
  Status,
  bearer,
  chunks,
  closeClients,
  collect,
  fails,
  fromStruct,
  idToken,
  market,
  tool,
  unary,
  unique,
  upload,
  waitUntil,
} from '../lib/harness.mjs';

const PRICE = 1_250_000_000; // 1.25 SUI in MIST
const DATA = Buffer.from(
  [
    '{"station":"north","ppm":412.5}',
    '{"station":"south","ppm":409.1}',
    '{"station":"east","ppm":415.0}',
  ].join('\n') + '\n',
);

/** The stand-in Sui ledger (`quintet-bench sui-ledger`) with the given payments. */
async function standInLedger(payments) {
  const args = ['sui-ledger', '--listen', LEDGER_LISTEN];
  for (const [sender, mist] of payments) args.push('--pay', `${sender}:${ESCROW_ADDRESS}:${mist}`);
  const child = spawn(path.join(BIN_DIR, 'quintet-bench'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const digests = [];
  const out = createInterface({ input: child.stdout });
  for await (const line of out) {
    digests.push(line.trim());
    if (digests.length === payments.length) break;
  }
  const err = createInterface({ input: child.stderr });
  for await (const line of err) {
    if (line.includes('stand-in Sui ledger on')) break;
  }
  return {
    digests,
    async stop() {
      child.kill('SIGINT');
      if (child.exitCode === null) await once(child, 'exit');
    },
  };
}

/** The buyer's side of DownloadDataset, from the DownloadHeader's documentation. */
function decrypt(messages, privateKey, publicRaw) {
  const { header } = messages[0];
  const ciphertext = Buffer.concat(messages.slice(1).map((m) => m.chunk));
  const purchaseId = Buffer.from(header.purchase.id);
  const wrapped = header.wrappedKey;
  const ephemeral = wrapped.subarray(0, 32);
  const sealed = wrapped.subarray(44);
  const shared = diffieHellman({
    privateKey,
    publicKey: createPublicKey({
      key: { kty: 'OKP', crv: 'X25519', x: ephemeral.toString('base64url') },
      format: 'jwk',
    }),
  });
  const wrappingKey = Buffer.from(
    hkdfSync(
      'sha256',
      shared,
      Buffer.concat([ephemeral, publicRaw]),
      Buffer.concat([Buffer.from('quintet.market.buyer-key.v1'), purchaseId]),
      32,
    ),
  );
  const open = (key, nonce, data, aad) => {
    const decipher = createDecipheriv('aes-256-gcm', key, nonce);
    decipher.setAAD(aad);
    decipher.setAuthTag(data.subarray(data.length - 16));
    return Buffer.concat([decipher.update(data.subarray(0, data.length - 16)), decipher.final()]);
  };
  const datasetKey = open(wrappingKey, wrapped.subarray(32, 44), sealed, purchaseId);
  const segments = [...chunks(ciphertext, header.segmentSize + 16)];
  return segments.map((segment, index) => {
    const nonce = Buffer.from(header.baseNonce);
    const counter = nonce.readBigUInt64BE(4) ^ BigInt(index);
    nonce.writeBigUInt64BE(counter, 4);
    const aad = Buffer.alloc(25 + 9);
    aad.write('quintet.market.dataset.v1');
    aad.writeBigUInt64BE(BigInt(index), 25);
    aad[33] = index === segments.length - 1 ? 1 : 0;
    return open(datasetKey, nonce, segment, aad);
  });
}

async function signIn(client, who) {
  const response = await unary(client, 'SignIn', {
    idToken: await idToken(`sub-${who}`, `${who}@example.com`, who),
  });
  assert.equal(response.user.email, `${who}@example.com`);
  return () => bearer(response.sessionToken);
}

describe('market', () => {
  after(closeClients);

  it('sells, buys, downloads, decrypts and reviews a dataset', async () => {
    const client = market();
    const seller = await signIn(client, unique('js-seller'));
    const buyerName = unique('js-buyer');
    const buyer = await signIn(client, buyerName);
    await fails(Status.UNAUTHENTICATED, unary(client, 'SignIn', { idToken: 'not.a.token' }));
    await fails(Status.UNAUTHENTICATED, unary(client, 'GetCurrentUser', {}, bearer('qmkt_forged')));

    const { dataset } = await upload(
      client,
      'UploadDataset',
      [{ header: { fileType: 'application/x-ndjson' } }, ...[...chunks(DATA, 17)].map((chunk) => ({ chunk }))],
      seller(),
    );
    assert.equal(dataset.fileSize, DATA.length);
    assert.equal(dataset.dataHash, createHash('sha256').update(DATA).digest('hex'));
    const schema = fromStruct(dataset.schema);
    assert.deepEqual(schema.columns.map((c) => c.name).sort(), ['ppm', 'station']);
    assert.equal(schema.row_count, 3);

    const word = unique('jsaurora').replaceAll('-', '');
    const { datapod } = await unary(
      client,
      'CreateDatapod',
      { datasetId: dataset.id, title: `CO2 readings ${word}`, description: 'Hourly', category: 'air', priceMist: PRICE },
      seller(),
    );
    // Unpublished, it does not exist for anyone but the seller; published, only the seller may
    // change it.
    await fails(Status.NOT_FOUND, unary(client, 'PublishDatapod', { id: datapod.id }, buyer()));
    await unary(client, 'PublishDatapod', { id: datapod.id }, seller());
    await fails(
      Status.PERMISSION_DENIED,
      unary(client, 'UpdateDatapod', { id: datapod.id, priceMist: 1, updateMask: { paths: ['price_mist'] } }, buyer()),
    );
    const found = await unary(client, 'SearchDatapods', { query: word, category: 'air' });
    assert.deepEqual(found.datapods.map((d) => [d.id, d.priceMist]), [[datapod.id, PRICE]]);

    // The stand-in wallet proves the buyer's address (and another user's, who will try to use
    // the buyer's payment).
    const proveAddress = async (session) => {
      const { message } = await unary(client, 'GetSuiAddressChallenge', {}, session());
      const seed = randomBytes(32).toString('hex');
      const wallet = JSON.parse(await tool('quintet-bench', 'sui-sign', '--seed', seed, message));
      const { user } = await unary(client, 'ProveSuiAddress', { signature: wallet.signature }, session());
      assert.equal(user.suiAddress, wallet.address);
      return wallet;
    };
    const wallet = await proveAddress(buyer);
    const other = await signIn(client, unique('js-other'));
    await proveAddress(other);

    const { privateKey, publicKey } = generateKeyPairSync('x25519');
    const publicRaw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
    const ledger = await standInLedger([[wallet.address, PRICE]]);
    let purchase;
    try {
      // Someone else cannot claim the buyer's payment.
      await fails(
        Status.PERMISSION_DENIED,
        unary(client, 'CreatePurchase', { datapodId: datapod.id, paymentTxDigest: ledger.digests[0], buyerPublicKey: publicRaw }, other()),
      );
      ({ purchase } = await unary(
        client,
        'CreatePurchase',
        { datapodId: datapod.id, paymentTxDigest: ledger.digests[0], buyerPublicKey: publicRaw },
        buyer(),
      ));
      assert.equal(purchase.paymentTxDigest, ledger.digests[0]);
    } finally {
      await ledger.stop();
    }
    const completed = await waitUntil(
      async () => {
        const { purchase: now } = await unary(client, 'GetPurchase', { id: purchase.id }, buyer());
        return now.status === 'PURCHASE_STATUS_COMPLETED' && now;
      },
      20,
      'the purchase to complete',
    );
    assert.equal(completed.amountMist, PRICE);

    const download = await collect(client, 'DownloadDataset', { purchaseId: purchase.id }, buyer());
    assert.equal(download[0].part, 'header');
    assert.ok(Buffer.concat(decrypt(download, privateKey, publicRaw)).equals(DATA));

    const { review } = await unary(client, 'CreateReview', { purchaseId: purchase.id, rating: 4, comment: 'Clean data' }, buyer());
    const bad = await fails(
      Status.INVALID_ARGUMENT,
      unary(client, 'UpdateReview', { id: review.id, rating: 9, updateMask: { paths: ['rating'] } }, buyer()),
    );
    assert.ok(bad.fields.includes('rating'), JSON.stringify(bad));
    const { reviews } = await unary(client, 'ListReviews', { datapodId: datapod.id });
    assert.deepEqual(reviews.map((r) => [r.rating, r.comment, r.buyer.name]), [[4, 'Clean data', buyerName]]);
    const sales = await unary(client, 'ListPurchaseHistory', { role: 'ROLE_SELLER' }, seller());
    assert.deepEqual(sales.purchases.map((p) => [p.id, p.status]), [[purchase.id, 'PURCHASE_STATUS_COMPLETED']]);
  });
});
