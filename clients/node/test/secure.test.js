'use strict';
// Against a store that asks for TLS and a token (the Python suite starts one and sets
// SLUICE_TLS_CA and SLUICE_TOKEN, then runs this file with SLUICE_SECURE_TEST=1).

const test = require('node:test');
const assert = require('node:assert/strict');
const sluice = require('..');

const secure = process.env.SLUICE_SECURE_TEST === '1';

test('TLS and a bearer token from the environment: appends and reads', { skip: !secure }, async () => {
  const client = new sluice.Client();
  try {
    const stream = `secure-${process.pid}`;
    const ok = await client.append(stream, [sluice.newEvent('Opened', { n: 1 })]);
    assert.equal(Number(ok.first_revision), 0);
    const events = await client.readList(stream);
    assert.equal(events.length, 1);
  } finally {
    client.close();
  }
});

test('a token the store does not know is Unauthenticated', { skip: !secure }, async () => {
  const client = new sluice.Client(undefined, {
    tls: { ca: process.env.SLUICE_TLS_CA },
    token: 'not-a-token',
  });
  try {
    await assert.rejects(client.append('secure-x', [sluice.newEvent('E')]), (err) => {
      assert.ok(err instanceof sluice.Unauthenticated, err.name);
      return true;
    });
  } finally {
    client.close();
  }
});

test('a stream outside the grants is PermissionDenied, naming the principal', { skip: !secure }, async () => {
  const client = new sluice.Client(undefined, { tls: { ca: process.env.SLUICE_TLS_CA }, token: process.env.SLUICE_LIMITED_TOKEN });
  try {
    await assert.rejects(client.append('users-1', [sluice.newEvent('E')]), (err) => {
      assert.ok(err instanceof sluice.PermissionDenied, err.name);
      assert.equal(err.metadata.principal, 'orders-app');
      return true;
    });
  } finally {
    client.close();
  }
});
