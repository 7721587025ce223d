// Node.js `ws` echo / fan-out server for the fastws load benchmarks.
// Installed by bench/run.py into its cache dir (found through NODE_PATH).
// Usage: node ws_server.js [--host H] [--port P] [--certfile PEM --keyfile PEM];
// prints INFO and PORT lines. With a certificate it serves wss:// (Node's https).
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

const MAX_SIZE = 32 * 1024 * 1024;
let host = '127.0.0.1';
let port = 0;
let certfile = null;
let keyfile = null;
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--host') host = process.argv[++i];
  else if (process.argv[i] === '--port') port = Number(process.argv[++i]);
  else if (process.argv[i] === '--certfile') certfile = process.argv[++i];
  else if (process.argv[i] === '--keyfile') keyfile = process.argv[++i];
}

const server = certfile
  ? https.createServer({ cert: fs.readFileSync(certfile), key: fs.readFileSync(keyfile || certfile) })
  : http.createServer();
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: MAX_SIZE });
const fanoutMembers = new Set();

wss.on('connection', (ws, req) => {
  if (req.url === '/fanout') {
    fanoutMembers.add(ws);
    ws.on('close', () => fanoutMembers.delete(ws));
    ws.on('message', (data, isBinary) => {
      for (const client of fanoutMembers) client.send(data, { binary: isBinary });
    });
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
  ws.on('error', () => {});
});

server.listen(port, host, 4096, () => {
  let wsVersion = 'unknown';
  try { wsVersion = require('ws/package.json').version; } catch (e) { /* ignore */ }
  const info = { library: 'ws', version: wsVersion, loop: 'node ' + process.version, pid: process.pid,
    tls: Boolean(certfile), openssl: process.versions.openssl };
  process.stdout.write('INFO ' + JSON.stringify(info) + '\n');
  process.stdout.write('PORT ' + server.address().port + '\n');
});
