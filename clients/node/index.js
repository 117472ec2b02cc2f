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

function fromGrpcError(err) {
  let reason = '';
  let metadata = {};
  const details = [];
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (raw) {
    for (const any of Status.decode(raw).details) {
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
  }
  const Kind = ERRORS[reason] || (err.code === grpc.status.UNAVAILABLE ? Unavailable : SluiceError);
  return new Kind(err.details || err.message, err.code, reason, metadata, details);
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
  }

  close() {
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

  /** Append events atomically; rejects with WrongExpectedRevision on a conflict. */
  append(stream, events, { expected } = {}) {
    return this._unary('Append', { stream, expected: expectedRevision(expected), events });
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
      if (err.code !== grpc.status.CANCELLED) throw fromGrpcError(err);
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
