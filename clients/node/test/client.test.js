'use strict';
// Runs against a real store at SLUICE_STORE_ADDR (the Python test suite starts one and
// runs this file; by hand: `python -m sluice_store` and `npm test`).

const test = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const sluice = require('..');
const { Client, WrongExpectedRevision, SluiceError, newEvent, START, NO_STREAM, position } = sluice;

const stream = `node-${process.pid}-${Date.now()}`;
let client;

test.before(() => {
  assert.ok(process.env.SLUICE_STORE_ADDR, 'SLUICE_STORE_ADDR names the store under test');
  client = new Client();
});
test.after(() => client.close());

test('append then read back, in order, with data and metadata', async () => {
  const first = await client.append(stream, [newEvent('Opened', { owner: 'ada' })], { expected: NO_STREAM });
  assert.equal(first.first_revision, 0);
  const more = await client.append(
    stream,
    [newEvent('Deposited', { amount: 5 }), newEvent('Deposited', { amount: 7 }, { metadata: { by: 'node' } })],
    { expected: 0 },
  );
  assert.deepEqual([more.first_revision, more.last_revision], [1, 2]);
  assert.equal(more.last_position, more.first_position + 1);

  const events = await client.readList(stream);
  assert.deepEqual(events.map((e) => e.revision), [0, 1, 2]);
  assert.deepEqual(events.map((e) => e.type), ['Opened', 'Deposited', 'Deposited']);
  assert.deepEqual(JSON.parse(events[2].data), { amount: 7 });
  assert.equal(events[2].metadata.by, 'node');
  assert.equal(events[2].stream, stream);
});

test('the same event id again at the same place is a safe retry', async () => {
  const name = `${stream}-idem`;
  const event = newEvent('Once', { n: 1 });
  const a = await client.append(name, [event]);
  const b = await client.append(name, [event]);
  assert.equal(b.duplicate, true);
  assert.equal(b.first_position, a.first_position);
  assert.equal((await client.readList(name)).length, 1);
});

test('a conflict is a WrongExpectedRevision with structured details', async () => {
  await assert.rejects(
    client.append(stream, [newEvent('Late', {})], { expected: 0 }),
    (err) => {
      assert.ok(err instanceof WrongExpectedRevision);
      assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
      assert.equal(err.reason, 'WRONG_EXPECTED_REVISION');
      assert.equal(err.metadata.stream, stream);
      assert.equal(err.metadata.expected, '0');
      assert.equal(err.metadata.actual, '2');
      return true;
    },
  );
});

test('bad input is INVALID_ARGUMENT naming the field', async () => {
  await assert.rejects(client.append(stream, [newEvent('', {})]), (err) => {
    assert.ok(err instanceof SluiceError && !(err instanceof WrongExpectedRevision));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    const badRequest = err.details.find((d) => d.type === 'google.rpc.BadRequest');
    assert.ok(badRequest && badRequest.field_violations.length > 0);
    return true;
  });
});

test('subscribe: catch up, caught_up, then a live event', async () => {
  const name = `${stream}-live`;
  await client.append(name, [newEvent('Before', {})]);
  const seen = [];
  let live;
  for await (const item of client.subscribe(name, { start: START })) {
    if (item.event) {
      seen.push(item.event.type);
      if (item.event.type === 'After') break;
    } else if (item.caught_up) {
      assert.deepEqual(seen, ['Before']);
      live = await client.append(name, [newEvent('After', {})]);
    }
  }
  assert.deepEqual(seen, ['Before', 'After']);

  // Resume from a cursor: only what came after it.
  const resumed = [];
  for await (const item of client.subscribe(name, { start: position(live.first_position) })) {
    if (item.event) resumed.push(item.event.position);
    if (item.caught_up) break;
  }
  assert.deepEqual(resumed, [live.first_position]);
});

test('every ErrorReason has an exception class of its own', () => {
  const missing = sluice.ERROR_REASONS.filter((r) => !sluice.ERRORS[r]);
  assert.deepEqual(missing, [], `no exception class for ${missing}`);
  assert.deepEqual(Object.keys(sluice.ERRORS).sort(), [...sluice.ERROR_REASONS].sort());
  const classes = sluice.ERROR_REASONS.map((r) => sluice.ERRORS[r]);
  assert.equal(new Set(classes).size, classes.length, 'two reasons share a class');
  for (const c of classes) assert.ok(c.prototype instanceof SluiceError, c.name);
});

test('a reserved stream name arrives as SystemStreamReserved, an InvalidArgument', async () => {
  await assert.rejects(client.append('$mine', [newEvent('E')]), (err) => {
    assert.ok(err instanceof sluice.SystemStreamReserved && err instanceof sluice.InvalidArgument);
    assert.equal(err.reason, 'SYSTEM_STREAM_RESERVED');
    return true;
  });
});
