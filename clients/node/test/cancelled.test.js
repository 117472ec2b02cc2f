'use strict';
// A subscription the server cancels is an error the caller sees, not a quiet end. The
// server here is a real gRPC server on a socket that cancels the call on purpose.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const googleProtos = require('google-proto-files');
const { Client, SluiceError, START } = require('..');

const definition = protoLoader.loadSync('sluice/v1/streams.proto', {
  includeDirs: [path.resolve(__dirname, '..', '..', '..', 'protos'), path.resolve(googleProtos.getProtoPath(), '..')],
  keepCase: true,
  oneofs: true,
});
const { Streams } = grpc.loadPackageDefinition(definition).sluice.v1;

test('a subscription the server cancels raises instead of ending quietly', async () => {
  const server = new grpc.Server();
  server.addService(Streams.service, {
    Subscribe(call) {
      call.write({ caught_up: { position: 1 } });
      setImmediate(() => call.emit('error', { code: grpc.status.CANCELLED, details: 'the server cancelled this call' }));
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const client = new Client(`127.0.0.1:${port}`, { credentials: grpc.credentials.createInsecure() });
  try {
    const seen = [];
    await assert.rejects(
      (async () => {
        for await (const item of client.subscribe('', { start: START })) seen.push(Object.keys(item)[0]);
      })(),
      (err) => err instanceof SluiceError && err.code === grpc.status.CANCELLED,
    );
    assert.deepEqual(seen, ['caught_up']);
  } finally {
    client.close();
    server.forceShutdown();
  }
});
