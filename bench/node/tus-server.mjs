// Comparison server for bench.py: @tus/server with @tus/file-store on node's http server.
//
// Usage: node tus-server.mjs --port 1080 --dir /some/dir [--host 127.0.0.1]
// (or the environment variables TUS_PORT, TUS_DIR, TUS_HOST).
// Serves tus 1.0.0 at /files/ and prints one "listening on ..." line once it accepts requests.
import http from 'node:http';
import process from 'node:process';
import { parseArgs } from 'node:util';

import { FileStore } from '@tus/file-store';
import { Server } from '@tus/server';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: process.env.TUS_HOST ?? '127.0.0.1' },
    port: { type: 'string', default: process.env.TUS_PORT },
    dir: { type: 'string', default: process.env.TUS_DIR },
  },
});

if (!values.port || !values.dir) {
  console.error('usage: node tus-server.mjs --port PORT --dir DIRECTORY [--host HOST]');
  process.exit(2);
}

const tus = new Server({
  path: '/files',
  relativeLocation: true,
  datastore: new FileStore({ directory: values.dir }),
});

const server = http.createServer((req, res) => {
  tus.handle(req, res).catch((err) => {
    console.error('request failed:', err);
    if (!res.headersSent) {
      res.statusCode = 500;
    }
    res.end();
  });
});
// A 2 GiB upload in one request may take longer than node's default 300 s request timeout on a
// slow machine; the benchmark bounds its own run time.
server.requestTimeout = 0;

server.listen(Number(values.port), values.host, () => {
  console.log(`listening on http://${values.host}:${values.port}/files/`);
});

let stopping = false;
function stop() {
  if (stopping) {
    return;
  }
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
