// What every Node client test shares: service clients built by @grpc/proto-loader straight from
// proto/ (no generated code), promise helpers for the four call shapes, google.protobuf.Struct
// conversion, and the decoding of the rich error details quintet attaches.
//
// The server and its stand-ins are described by the environment scripts/test-clients sets
// (QCT_ADDR, QCT_ADMIN_TOKEN, QCT_STANDINS, ...).

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { promisify } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through scripts/test-clients`);
  }
  return value;
}

export const ADDR = env('QCT_ADDR');
export const ADMIN_TOKEN = env('QCT_ADMIN_TOKEN');
export const STANDINS = env('QCT_STANDINS');
export const PROTO_DIR = env('QCT_PROTO_DIR');
export const BIN_DIR = env('QCT_BIN');
export const DATA_DIR = env('QCT_DATA_DIR');
export const ESCROW_ADDRESS = env('QCT_ESCROW_ADDRESS');
export const LEDGER_LISTEN = env('QCT_LEDGER_LISTEN');

const LOADER_OPTIONS = {
  keepCase: false, // camelCase fields, as in grpcurl's JSON
  longs: Number, // every int64 quintet sends fits in a double (< 2^53)
  enums: String,
  defaults: true,
  oneofs: true, // `message.part` names the oneof member that is set
};

const require = createRequire(import.meta.url);
const packageDir = (name) => path.dirname(require.resolve(`${name}/package.json`));

function load(file, includeDirs) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs }));
}

const quintet = load(
  ['admin', 'registry', 'store', 'griot', 'market', 'pds'].map(
    (service) => `quintet/${service}/v1/${service}.proto`,
  ),
  [PROTO_DIR],
).quintet;
const health = load('health/v1/health.proto', [path.join(packageDir('grpc-health-check'), 'proto')]);
const reflection = load('grpc/reflection/v1/reflection.proto', [
  path.join(packageDir('@grpc/reflection'), 'build', 'proto'),
]);

const credentials = grpc.credentials.createInsecure();
const clients = [];
function client(Service) {
  const made = new Service(ADDR, credentials);
  clients.push(made);
  return made;
}

export const pb = quintet;
export const admin = () => client(quintet.admin.v1.AdminService);
export const registry = () => client(quintet.registry.v1.RegistryService);
export const store = () => client(quintet.store.v1.StoreService);
export const griot = () => client(quintet.griot.v1.GriotService);
export const market = () => client(quintet.market.v1.MarketService);
export const pds = () => client(quintet.pds.v1.PdsService);
export const healthClient = () => client(health.grpc.health.v1.Health);
export const reflectionClient = () => client(reflection.grpc.reflection.v1.ServerReflection);

export function closeClients() {
  for (const made of clients.splice(0)) made.close();
}

export function bearer(token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}
export const ADMIN = () => bearer(ADMIN_TOKEN);
export const Status = grpc.status;

const deadline = (seconds) => ({ deadline: Date.now() + seconds * 1000 });

/** A unary call. */
export function unary(stub, method, request, metadata = new grpc.Metadata(), seconds = 30) {
  return new Promise((resolve, reject) => {
    stub[method](request, metadata, deadline(seconds), (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** A client-streaming call: writes every message, then waits for the response. */
export function upload(stub, method, messages, metadata = new grpc.Metadata(), seconds = 30) {
  return new Promise((resolve, reject) => {
    const call = stub[method](metadata, deadline(seconds), (error, response) =>
      error ? reject(error) : resolve(response),
    );
    for (const message of messages) call.write(message);
    call.end();
  });
}

/** A server-streaming call, read to its end. */
export async function collect(stub, method, request, metadata = new grpc.Metadata(), seconds = 30) {
  const messages = [];
  for await (const message of stub[method](request, metadata, deadline(seconds))) {
    messages.push(message);
  }
  return messages;
}

/** A server-streaming call left open: the caller reads and cancels. */
export function follow(stub, method, request, metadata = new grpc.Metadata(), seconds = 30) {
  return stub[method](request, metadata, deadline(seconds));
}

export function* chunks(buffer, size) {
  for (let at = 0; at < buffer.length; at += size) yield buffer.subarray(at, at + size);
}

// google.rpc.Status and the details quintet sends, declared by their published field numbers.
const rpc = protobuf.Root.fromJSON({
  nested: {
    Any: { fields: { typeUrl: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
    Status: {
      fields: {
        code: { type: 'int32', id: 1 },
        message: { type: 'string', id: 2 },
        details: { rule: 'repeated', type: 'Any', id: 3 },
      },
    },
    ErrorInfo: {
      fields: {
        reason: { type: 'string', id: 1 },
        domain: { type: 'string', id: 2 },
        metadata: { keyType: 'string', type: 'string', id: 3 },
      },
    },
    FieldViolation: {
      fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
    },
    BadRequest: { fields: { fieldViolations: { rule: 'repeated', type: 'FieldViolation', id: 1 } } },
  },
});

/** What a failed call tells its client: code, message, ErrorInfo reason, bad fields. */
export function failure(error) {
  const result = { code: error.code, message: error.details, reason: undefined, fields: [] };
  const [raw] = error.metadata?.get('grpc-status-details-bin') ?? [];
  if (raw) {
    const status = rpc.lookupType('Status').decode(raw);
    for (const detail of status.details) {
      if (detail.typeUrl.endsWith('/google.rpc.ErrorInfo')) {
        const info = rpc.lookupType('ErrorInfo').decode(detail.value);
        assert.equal(info.domain, 'quintet');
        result.reason = info.reason;
      } else if (detail.typeUrl.endsWith('/google.rpc.BadRequest')) {
        const bad = rpc.lookupType('BadRequest').decode(detail.value);
        result.fields.push(...bad.fieldViolations.map((v) => v.field));
      }
    }
  }
  return result;
}

/** Awaits `promise`, which must fail with `code`; returns what the failure says. */
export async function fails(code, promise) {
  try {
    await promise;
  } catch (error) {
    if (error.code === undefined) throw error;
    const seen = failure(error);
    assert.equal(
      seen.code,
      code,
      `expected ${grpcName(code)}, got ${grpcName(seen.code)}: ${seen.message}`,
    );
    return seen;
  }
  assert.fail(`expected ${grpcName(code)}, the call succeeded`);
}

const grpcName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code);

export function unique(prefix) {
  return `${prefix}-${process.pid}-${Number(process.hrtime.bigint() % 1000000000n)}`;
}

async function standin(route, query) {
  const response = await fetch(`${STANDINS}${route}?${new URLSearchParams(query)}`);
  assert.equal(response.status, 200, `${route}: ${response.status}`);
  return response.text();
}
export const githubToken = (login) => standin('/github/token', { login });
export const idToken = (sub, email, name, aud) =>
  standin('/oidc/id-token', aud ? { sub, email, name, aud } : { sub, email, name });

/** Runs one of quintet's command-line tools (target/debug/quintet-bench...). */
export async function tool(name, ...args) {
  const { stdout } = await promisify(execFile)(path.join(BIN_DIR, name), args);
  return stdout;
}

// google.protobuf.Struct <-> plain JSON values.
export function toValue(value) {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  switch (typeof value) {
    case 'string':
      return { stringValue: value };
    case 'number':
      return { numberValue: value };
    case 'boolean':
      return { boolValue: value };
    default:
      return { structValue: toStruct(value) };
  }
}
export function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}
export function fromValue(value) {
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'listValue':
      return value.listValue.values.map(fromValue);
    case 'structValue':
      return fromStruct(value.structValue);
    default:
      return value[value.kind];
  }
}
export function fromStruct(struct) {
  if (!struct) return undefined;
  return Object.fromEntries(Object.entries(struct.fields).map(([k, v]) => [k, fromValue(v)]));
}

export async function waitUntil(predicate, seconds, what) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > end) assert.fail(`timed out after ${seconds} s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
