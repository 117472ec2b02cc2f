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

test('concurrent appends share one session call, each with its own result', async () => {
  const names = [0, 1, 2, 3, 4].map((i) => `${stream}-shared-${i}`);
  const results = await Promise.all(
    Array.from({ length: 200 }, (_, i) => client.append(names[i % 5], [newEvent('E', { i })])),
  );
  assert.equal(new Set(results.map((r) => `${r.stream}:${r.first_revision}`)).size, 200);
  for (const [s, name] of names.entries()) {
    const events = await client.readList(name);
    assert.deepEqual(events.map((e) => e.revision), [...Array(40).keys()]);
    // Each stream holds its appends in the order they were made.
    assert.deepEqual(
      events.map((e) => JSON.parse(e.data).i),
      Array.from({ length: 40 }, (_, k) => s + 5 * k),
    );
  }
  assert.ok(client._session && client._session.usable, 'appends went over the shared session');
});

test('appends made together go as messages of at most what the store asks for', async () => {
  // The store (SQLite, durability normal) asks for fewer appends per message once no live
  // subscriber waits on it; the subscription of an earlier test may take a moment to end.
  const deadline = Date.now() + 10_000;
  await client.append(`${stream}-ask`, [newEvent('E')]);
  while (!client._session.storePerMessage) {
    assert.ok(Date.now() < deadline, 'the store asked for no smaller messages');
    await client.append(`${stream}-ask`, [newEvent('E')]);
  }
  const session = client._session;
  const asked = session.storePerMessage;
  const sizes = [];
  const write = session.call.write.bind(session.call);
  session.call.write = (message) => {
    sizes.push(message.appends.length);
    return write(message);
  };
  const n = 2 * asked + 44;
  const results = await Promise.all(
    Array.from({ length: n }, (_, i) => client.append(`${stream}-split-${i % 4}`, [newEvent('E', { i })])),
  );
  session.call.write = write;
  assert.deepEqual(sizes, [asked, asked, 44]);
  assert.equal(new Set(results.map((r) => r.first_position)).size, n);
  const events = await client.readList(`${stream}-split-1`);
  assert.deepEqual(
    events.map((e) => JSON.parse(e.data).i),
    Array.from({ length: n / 4 }, (_, k) => 1 + 4 * k),
  );
});

test('a refused append on the shared session fails alone, with its details', async () => {
  const name = `${stream}-alone`;
  await client.append(name, [newEvent('Opened')]);
  const session = client._session;
  const [conflict, ok, reserved] = await Promise.allSettled([
    client.append(name, [newEvent('E')], { expected: 7 }),
    client.append(name, [newEvent('E')], { expected: 0 }),
    client.append('$nope', [newEvent('E')]),
  ]);
  assert.equal(conflict.status, 'rejected');
  assert.ok(conflict.reason instanceof WrongExpectedRevision);
  assert.equal(conflict.reason.metadata.expected, '7');
  assert.equal(ok.status, 'fulfilled');
  assert.equal(ok.value.first_revision, 1);
  assert.ok(reserved.reason instanceof sluice.SystemStreamReserved);
  assert.equal(client._session, session, 'the session outlived the refusals');
  assert.equal((await client.append(name, [newEvent('E')], { expected: 1 })).first_revision, 2);
});

test('an append over 1 MiB goes as its own call; sharedSession: false makes a call each', async () => {
  const big = Buffer.alloc(600 << 10, 'x'); // two of them: over 1 MiB in one append
  const r = await client.append(`${stream}-big`, [newEvent('Big', big), newEvent('Big', big)]);
  assert.deepEqual([r.first_revision, r.last_revision], [0, 1]);
  assert.equal((await client.readList(`${stream}-big`))[1].data.length, big.length);
  const own = new Client(undefined, { sharedSession: false });
  try {
    const results = await Promise.all([1, 2, 3].map((i) => own.append(`${stream}-own`, [newEvent('E', { i })])));
    assert.deepEqual(results.map((x) => x.first_revision).sort(), [0, 1, 2]);
    assert.equal(own._session, null);
  } finally {
    own.close();
  }
});
