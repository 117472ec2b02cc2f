// Appends and reads against a Sluice store over gRPC, through reflection, with thresholds.
// Point it at your own deployment:
//   k6 run -e SLUICE_ADDR=store.example:50051 -e DURATION=60s -e VUS=20 bench/k6/sluice.js
// (add -e SLUICE_TOKEN=... for a store that asks for a token; -e SLUICE_TLS=true for TLS)
import grpc from 'k6/net/grpc';
import encoding from 'k6/encoding';
import { check } from 'k6';
import { Trend, Rate } from 'k6/metrics';

const addr = __ENV.SLUICE_ADDR || '127.0.0.1:50051';
const tls = (__ENV.SLUICE_TLS || 'false') === 'true';
const token = __ENV.SLUICE_TOKEN || '';

export const options = {
  vus: Number(__ENV.VUS || 4),
  duration: __ENV.DURATION || '10s',
  thresholds: {
    checks: ['rate>0.99'],
    append_ms: ['p(95)<250'],
    read_ms: ['p(95)<250'],
  },
};

const appendMs = new Trend('append_ms', true);
const readMs = new Trend('read_ms', true);
const failed = new Rate('failed');
const client = new grpc.Client();

export default function () {
  if (__ITER === 0) {
    client.connect(addr, { plaintext: !tls, reflect: true });
  }
  const params = token ? { metadata: { authorization: `Bearer ${token}` } } : {};
  const stream = `k6-${__VU}-${__ITER % 16}`;
  const data = encoding.b64encode(JSON.stringify({ vu: __VU, iter: __ITER }));
  let started = Date.now();
  const appended = client.invoke(
    'sluice.v1.Streams/Append',
    { stream, events: [{ type: 'Tick', data, content_type: 'application/json' }] },
    params,
  );
  appendMs.add(Date.now() - started);
  const ok = check(appended, { 'append OK': (r) => r && r.status === grpc.StatusOK });
  failed.add(!ok);
  started = Date.now();
  const info = client.invoke('sluice.v1.Streams/GetStreamInfo', { stream }, params);
  readMs.add(Date.now() - started);
  check(info, {
    'stream info OK': (r) => r && r.status === grpc.StatusOK,
    'the append is there': (r) => r && r.message && Number(r.message.lastRevision) >= 0,
  });
}

export function teardown() {
  client.close();
}
