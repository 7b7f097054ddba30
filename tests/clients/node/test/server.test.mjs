// The server as any gRPC tool sees it: health, reflection, and the admin service.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, describe, it } from 'node:test';

import {
  ADMIN,
  Status,
  admin,
  bearer,
  closeClients,
  fails,
  healthClient,
  reflectionClient,
  unary,
} from '../lib/harness.mjs';

const descriptor = createRequire(import.meta.url)('protobufjs/ext/descriptor');

const SERVICES = [
  'quintet.admin.v1.AdminService',
  'quintet.griot.v1.GriotService',
  'quintet.market.v1.MarketService',
  'quintet.pds.v1.PdsService',
  'quintet.registry.v1.RegistryService',
  'quintet.store.v1.StoreService',
];

/** One request on the bidirectional reflection stream, one response. */
function reflect(request) {
  return new Promise((resolve, reject) => {
    const call = reflectionClient().ServerReflectionInfo();
    call.once('data', (response) => {
      call.end();
      resolve(response);
    });
    call.once('error', reject);
    call.write(request);
  });
}

describe('server', () => {
  after(closeClients);

  it('is serving, as a whole and service by service', async () => {
    const health = healthClient();
    assert.equal((await unary(health, 'Check', { service: '' })).status, 'SERVING');
    for (const service of SERVICES) {
      assert.equal((await unary(health, 'Check', { service })).status, 'SERVING', service);
    }
    await fails(Status.NOT_FOUND, unary(health, 'Check', { service: 'quintet.nope.v1.Nope' }));
  });

  it('lists its services and serves their descriptors through reflection (v1)', async () => {
    const listed = await reflect({ listServices: '' });
    const names = listed.listServicesResponse.service.map((s) => s.name);
    for (const service of [...SERVICES, 'grpc.health.v1.Health']) {
      assert.ok(names.includes(service), `${service} not in ${names}`);
    }
    const files = await reflect({ fileContainingSymbol: 'quintet.pds.v1.PdsService' });
    const protos = files.fileDescriptorResponse.fileDescriptorProto.map((bytes) =>
      descriptor.FileDescriptorProto.decode(bytes),
    );
    const pdsFile = protos.find((file) => file.package === 'quintet.pds.v1');
    assert.ok(pdsFile, 'no descriptor for quintet.pds.v1');
    const service = pdsFile.service.find((s) => s.name === 'PdsService');
    const subscribe = service.method.find((m) => m.name === 'SubscribeRepos');
    assert.equal(subscribe.serverStreaming, true);
    assert.equal(subscribe.inputType, '.quintet.pds.v1.SubscribeReposRequest');
  });

  it('tells the admin about itself, and no one else', async () => {
    const info = await unary(admin(), 'GetServerInfo', {}, ADMIN());
    assert.match(info.version, /^\d+\.\d+\.\d+/);
    assert.equal(info.database.mode, 'DATABASE_MODE_EMBEDDED');
    const serving = Object.fromEntries(info.services.map((s) => [s.name, s.serving]));
    for (const service of SERVICES) assert.equal(serving[service], true, service);

    const refused = await fails(
      Status.UNAUTHENTICATED,
      unary(admin(), 'GetServerInfo', {}, bearer('wrong')),
    );
    assert.equal(refused.reason, 'UNAUTHENTICATED');
  });
});
