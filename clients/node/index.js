'use strict';
// A Node.js client for the Sluice store. It loads the same .proto files as every other
// client (protos/sluice/v1, beside this package in the repository; SLUICE_PROTOS may
// point elsewhere) with @grpc/proto-loader, and turns the store's structured errors
// (google.rpc.Status with an ErrorInfo detail) into typed exceptions.

const path = require('node:path');
const crypto = require('node:crypto');
const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtos = require('google-proto-files');

const PROTOS = process.env.SLUICE_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const GOOGLE = path.resolve(googleProtos.getProtoPath(), '..');
const DEFAULT_ADDR = '127.0.0.1:50051';

const definition = protoLoader.loadSync('sluice/v1/streams.proto', {
  includeDirs: [PROTOS, GOOGLE],
  keepCase: true, // field names as in the .proto: first_position, caught_up, ...
  longs: Number, // positions and revisions stay below 2^53 in any real store
  enums: String,
  defaults: true,
  oneofs: true,
});
const sluice = grpc.loadPackageDefinition(definition).sluice.v1;

// google.rpc.Status and its details, to read the store's error details.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => path.join(GOOGLE, target);
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
rpcRoot.resolveAll();
const Status = rpcRoot.lookupType('google.rpc.Status');
const DETAILS = {
  'google.rpc.ErrorInfo': rpcRoot.lookupType('google.rpc.ErrorInfo'),
  'google.rpc.BadRequest': rpcRoot.lookupType('google.rpc.BadRequest'),
  'google.rpc.QuotaFailure': rpcRoot.lookupType('google.rpc.QuotaFailure'),
};

/** A refused or failed call: gRPC `code`, and `reason` and `metadata` from ErrorInfo. */
class SluiceError extends Error {
  constructor(message, code, reason = '', metadata = {}, details = []) {
    super(message);
    this.name = this.constructor.name;
    this.code = code;
    this.reason = reason;
    this.metadata = metadata;
    this.details = details; // every decoded detail: ErrorInfo, BadRequest, QuotaFailure
  }
}
/** The stream was not at the expected revision: `metadata` has stream, expected, actual. */
class WrongExpectedRevision extends SluiceError {}
/** The stream was deleted (a tombstoned stream refuses appends for good). */
class StreamDeleted extends SluiceError {}
/** The stream does not exist. */
class StreamNotFound extends SluiceError {}
/** An event id is stored at another place already: `metadata` says where. */
class DuplicateEventId extends SluiceError {}
/** The request broke a rule; `metadata.field` names the field. */
class InvalidArgument extends SluiceError {}
class InvalidStreamName extends InvalidArgument {}
class InvalidEvent extends InvalidArgument {}
/** Names starting with "$" belong to the store. */
class SystemStreamReserved extends InvalidArgument {}
/** A configured limit was exceeded; `metadata.limit` names it. */
class LimitExceeded extends SluiceError {}
/** The store's storage is full: no appends until space is freed; reads work. */
class StorageFull extends LimitExceeded {}
/** The store cannot serve now: retry (appends with the same event ids are safe to repeat). */
class Unavailable extends SluiceError {}
/** The consumer group does not exist. */
class GroupNotFound extends SluiceError {}
/** A group of that name exists already. */
class GroupExists extends SluiceError {}
/** A member acted on what it no longer holds: stop without committing, heartbeat again. */
class Fenced extends SluiceError {}
class StaleMemberEpoch extends Fenced {}
class NotPartitionOwner extends Fenced {}
class UnknownMember extends Fenced {}
/** A gateway subscriber that asked to be dropped when it fell behind was; watch again
 * from `metadata.position`. */
class SubscriberTooSlow extends SluiceError {}

/** No credential, or one the server does not accept. */
class Unauthenticated extends SluiceError {}
/** The caller may not do this: `metadata` names principal, action and resource. */
class PermissionDenied extends SluiceError {}

/** One class for each sluice.v1.ErrorReason (the test walks the enum). */
const ERRORS = {
  WRONG_EXPECTED_REVISION: WrongExpectedRevision,
  STREAM_DELETED: StreamDeleted,
  STREAM_NOT_FOUND: StreamNotFound,
  DUPLICATE_EVENT_ID: DuplicateEventId,
  INVALID_STREAM_NAME: InvalidStreamName,
  INVALID_EVENT: InvalidEvent,
  INVALID_ARGUMENT: InvalidArgument,
  SYSTEM_STREAM_RESERVED: SystemStreamReserved,
  LIMIT_EXCEEDED: LimitExceeded,
  STORE_UNAVAILABLE: Unavailable,
  GROUP_NOT_FOUND: GroupNotFound,
  GROUP_EXISTS: GroupExists,
  STALE_MEMBER_EPOCH: StaleMemberEpoch,
  NOT_PARTITION_OWNER: NotPartitionOwner,
  UNKNOWN_MEMBER: UnknownMember,
  SUBSCRIBER_TOO_SLOW: SubscriberTooSlow,
  STORAGE_FULL: StorageFull,
  UNAUTHENTICATED: Unauthenticated,
  PERMISSION_DENIED: PermissionDenied,
};
/** The reasons the contract defines (from the loaded .proto). */
const ERROR_REASONS = definition['sluice.v1.ErrorReason'].type.value
  .map((v) => v.name)
  .filter((name) => name !== 'ERROR_REASON_UNSPECIFIED');

/** The typed exception for a status code, message and google.rpc.Status details (Any). */
function typedError(code, message, anys) {
  let reason = '';
  let metadata = {};
  const details = [];
  for (const any of anys) {
    const name = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const type = DETAILS[name];
    if (!type) continue;
    const detail = type.toObject(type.decode(any.value), { defaults: true });
    details.push({ type: name, ...detail });
    if (name === 'google.rpc.ErrorInfo') {
      reason = detail.reason;
      metadata = detail.metadata || {};
    }
  }
  const Kind = ERRORS[reason] || (code === grpc.status.UNAVAILABLE ? Unavailable : SluiceError);
  return new Kind(message, code, reason, metadata, details);
}

function fromGrpcError(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  return typedError(err.code, err.details || err.message, raw ? Status.decode(raw).details : []);
}

/** The typed exception for a google.rpc.Status in a message (an AppendResult's error). */
function fromStatus(status) {
  return typedError(status.code, status.message, status.details || []);
}

/** A time-ordered UUID (version 7): it keeps the store's id index local. */
function uuid7() {
  const bytes = crypto.randomBytes(16);
  const ms = BigInt(Date.now());
  for (let i = 0; i < 6; i++) bytes[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn);
  bytes[6] = (bytes[6] & 0x0f) | 0x70;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** An event to append. Objects become JSON; strings and Buffers are sent as they are. */
function newEvent(type, data = {}, { id = uuid7(), metadata = {}, contentType } = {}) {
  const json = !Buffer.isBuffer(data) && typeof data !== 'string';
  return {
    id,
    type,
    data: json ? Buffer.from(JSON.stringify(data)) : Buffer.from(data),
    metadata,
    content_type: contentType || (json ? 'application/json' : ''),
  };
}

const ANY = { any: {} };
const NO_STREAM = { no_stream: {} };
const STREAM_EXISTS = { stream_exists: {} };
const START = { start: {} };
const END = { end: {} };

function expectedRevision(expected) {
  return typeof expected === 'number' ? { revision: expected } : expected || ANY;
}

function filter(prefixes, types) {
  // Only reads and subscriptions of all streams take a filter.
  return prefixes.length || types.length ? { stream_prefixes: prefixes, event_types: types } : undefined;
}

function startPoint(at) {
  if (at === undefined || at === null) return undefined;
  if (typeof at === 'object' && ('start' in at || 'end' in at || 'revision' in at || 'position' in at))
    return at;
  if (at instanceof Date) {
    const ms = at.getTime();
    return { time: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } };
  }
  throw new TypeError(`unknown start point ${JSON.stringify(at)}`);
}

const ROUND_ROBIN = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });

/** Appends larger than this (estimated) go as their own call; also the most one session message packs. */
const SESSION_MAX_BYTES = 1 << 20;
/** The most appends one session message packs. */
const SESSION_MAX_APPENDS = 1000;
/** How long a client's shared session takes new appends before a fresh one replaces it. */
const SESSION_MAX_AGE_MS = 60_000;

function appendSize(request) {
  let n = request.stream.length + 16;
  for (const e of request.events) {
    n += 64 + (e.data ? e.data.length : 0) + (e.type || '').length + (e.id || '').length;
    for (const [k, v] of Object.entries(e.metadata || {})) n += k.length + String(v).length + 4;
  }
  return n;
}

/**
 * One AppendSession a client keeps open for its appends: each append is a message on the
 * call, not a call of its own, and appends made in the same turn of the event loop go out
 * together in one message (split over several where the store asks for fewer per message:
 * AppendSessionResponse.appends_per_message). Results come back in order; a refused append
 * fails alone.
 */
class SharedSession {
  constructor(client) {
    this.call = client.streams.AppendSession(client._metadata());
    this.opened = Date.now();
    this.queued = [];
    this.sent = [];
    this.error = null;
    this.closing = false;
    this.scheduled = false;
    this.storePerMessage = 0; // the most appends per message the store last asked for (0: none)
    this.call.on('data', (msg) => this._answer(msg));
    this.call.on('error', (err) => this._fail(fromGrpcError(err)));
    this.call.on('end', () =>
      this._fail(new Unavailable('append session ended', grpc.status.UNAVAILABLE, 'STORE_UNAVAILABLE')),
    );
  }

  get usable() {
    return !this.error && !this.closing && Date.now() - this.opened < SESSION_MAX_AGE_MS;
  }

  submit(request, size) {
    return new Promise((resolve, reject) => {
      if (this.error) return reject(this.error);
      this.queued.push({ request, size, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this._flush());
      }
    });
  }

  _flush() {
    this.scheduled = false;
    const most = Math.min(this.storePerMessage || SESSION_MAX_APPENDS, SESSION_MAX_APPENDS);
    while (this.queued.length && !this.error) {
      const batch = [];
      let size = 0;
      while (this.queued.length && batch.length < most) {
        if (batch.length && size + this.queued[0].size > SESSION_MAX_BYTES) break;
        const next = this.queued.shift();
        batch.push(next);
        size += next.size;
      }
      this.sent.push(batch);
      this.call.write({ appends: batch.map((p) => p.request) });
    }
  }

  _answer(msg) {
    this.storePerMessage = msg.appends_per_message || 0;
    const batch = this.sent.shift() || [];
    msg.results.forEach((result, i) => {
      if (!batch[i]) return;
      if (result.result === 'success') batch[i].resolve(result.success);
      else batch[i].reject(fromStatus(result.error));
    });
  }

  _fail(err) {
    if (!this.error) this.error = err;
    for (const p of [...this.sent.flat(), ...this.queued]) p.reject(err); // no-op once settled
    this.sent = [];
    this.queued = [];
  }

  /** No new appends; the store answers those in flight, then ends the call (cancelled
   * after `graceMs` if it has not). */
  close(graceMs = 5_000) {
    if (this.closing) return;
    this.closing = true;
    this._flush();
    this.call.end();
    setTimeout(() => this.call.cancel(), graceMs).unref();
  }
}

/** A connection to a Sluice store. */
/** A file's bytes for a path, or the Buffer given. */
function pem(value) {
  if (!value) return null;
  return Buffer.isBuffer(value) ? value : fs.readFileSync(value);
}

/**
 * A bearer token: the one given, or a file's content read again when it changes (as a
 * rotated Kubernetes service-account token is), from options or SLUICE_TOKEN(_FILE).
 */
function tokenSource(token, tokenFile) {
  if (token) return () => token;
  if (!tokenFile) return null;
  let value = '';
  let stamp = '';
  return () => {
    const st = fs.statSync(tokenFile);
    const now = `${st.mtimeMs}:${st.size}`;
    if (now !== stamp) {
      value = fs.readFileSync(tokenFile, 'utf8').trim();
      stamp = now;
    }
    return value;
  };
}

class Client {
  /**
   * `options.tls`: `{ ca, cert, key }` (paths or Buffers; `{}` for the system's roots);
   * `options.token` or `options.tokenFile`: a bearer token. Without them the variables
   * SLUICE_TLS_CA, SLUICE_TLS_CERT, SLUICE_TLS_KEY, SLUICE_TOKEN and SLUICE_TOKEN_FILE apply.
   */
  constructor(target = process.env.SLUICE_STORE_ADDR || DEFAULT_ADDR, options = {}) {
    const env = process.env;
    let tls = options.tls;
    if (!tls && (env.SLUICE_TLS_CA || env.SLUICE_TLS_CERT)) {
      tls = { ca: env.SLUICE_TLS_CA, cert: env.SLUICE_TLS_CERT, key: env.SLUICE_TLS_KEY };
    }
    this._token = tokenSource(options.token || env.SLUICE_TOKEN, options.tokenFile || env.SLUICE_TOKEN_FILE);
    const credentials =
      options.credentials ||
      (tls ? grpc.credentials.createSsl(pem(tls.ca), pem(tls.key), pem(tls.cert)) : grpc.credentials.createInsecure());
    // Calls spread over every address the target resolves to (store replicas behind a
    // headless Service: dns:///sluice-store-headless.<namespace>.svc:50051).
    const channelOptions = { 'grpc.service_config': ROUND_ROBIN, ...(options.channelOptions || {}) };
    this.streams = new sluice.Streams(target, credentials, channelOptions);
    this.deadlineMs = options.deadlineMs ?? 30_000;
    // append() over one long-lived AppendSession (see append); `sharedSession: false` for a call each.
    this.sharedSession = options.sharedSession ?? true;
    this._session = null;
  }

  close() {
    if (this._session) this._session.close();
    this._session = null;
    this.streams.close();
  }

  /** Call metadata: the bearer token, when there is one. */
  _metadata() {
    const md = new grpc.Metadata();
    if (this._token) md.set('authorization', `Bearer ${this._token()}`);
    return md;
  }

  _unary(method, request) {
    const deadline = new Date(Date.now() + this.deadlineMs);
    return new Promise((resolve, reject) => {
      this.streams[method](request, this._metadata(), { deadline }, (err, response) =>
        err ? reject(fromGrpcError(err)) : resolve(response),
      );
    });
  }

  /**
   * Append events atomically; rejects with WrongExpectedRevision on a conflict. Appends go
   * as messages on one AppendSession the client keeps open (appends made together share a
   * message), unless the client was made with `sharedSession: false` or the append is
   * larger than 1 MiB (its own call, so a refusal of its size cannot end the session).
   * Results and errors are the same either way.
   */
  append(stream, events, { expected } = {}) {
    const request = { stream, expected: expectedRevision(expected), events };
    const size = appendSize(request);
    if (!this.sharedSession || size > SESSION_MAX_BYTES) return this._unary('Append', request);
    if (!this._session || !this._session.usable) {
      if (this._session) this._session.close();
      this._session = new SharedSession(this);
    }
    const session = this._session;
    let timer;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => {
        // The store did not answer in time: later appends get a fresh session.
        if (this._session === session) this._session = null;
        session.close(this.deadlineMs);
        reject(new SluiceError('Deadline Exceeded', grpc.status.DEADLINE_EXCEEDED));
      }, this.deadlineMs);
    });
    return Promise.race([session.submit(request, size), deadline]).finally(() => clearTimeout(timer));
  }

  /** Events of one stream (or of all streams, with stream ''), one by one. */
  async *read(stream = '', { start, backwards = false, maxCount = 0, prefixes = [], types = [] } = {}) {
    const call = this.streams.Read(
      {
        stream,
        from: startPoint(start),
        backwards,
        max_count: maxCount,
        filter: filter(prefixes, types),
      },
      this._metadata(),
    );
    try {
      for await (const msg of call) yield* msg.events; // the first message is a header
    } catch (err) {
      throw fromGrpcError(err);
    } finally {
      call.cancel();
    }
  }

  async readList(stream = '', options = {}) {
    const out = [];
    for await (const event of this.read(stream, options)) out.push(event);
    return out;
  }

  /**
   * Catch up from `start` (default: new events only), then follow live events. Yields
   * `{ event }` for each event and `{ caught_up }`, `{ checkpoint }`, `{ heartbeat }`,
   * `{ fell_behind }` for the control messages. Stop with `break`.
   */
  async *subscribe(stream = '', { start = END, prefixes = [], types = [], heartbeatMs = 0 } = {}) {
    const call = this.streams.Subscribe(
      {
        stream,
        from: startPoint(start),
        filter: filter(prefixes, types),
        heartbeat_interval_ms: heartbeatMs,
      },
      this._metadata(),
    );
    try {
      for await (const msg of call) {
        if (msg.content === 'events') {
          for (const event of msg.events.events) yield { event };
        } else if (msg.content) {
          yield { [msg.content]: msg[msg.content] };
        }
      }
    } catch (err) {
      // Cancelled here (grpc-js says "Cancelled on client"): done. A call the server
      // cancelled is not done: the caller must know to subscribe again.
      if (err.code !== grpc.status.CANCELLED || err.details !== 'Cancelled on client') throw fromGrpcError(err);
    } finally {
      call.cancel();
    }
  }
}

module.exports = {
  Client,
  SluiceError,
  ...Object.fromEntries([...new Set(Object.values(ERRORS)), Fenced].map((c) => [c.name, c])),
  ERRORS,
  ERROR_REASONS,
  newEvent,
  uuid7,
  ANY,
  NO_STREAM,
  STREAM_EXISTS,
  START,
  END,
  position: (value) => ({ position: value }),
  revision: (value) => ({ revision: value }),
};
