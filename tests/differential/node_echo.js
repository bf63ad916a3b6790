// Node echo app of the differential suite (tests/tests/e2e/differential.rs): Node's own `http`
// (and `http2` for h2c, prior knowledge or after an `Upgrade: h2c` it answers with 101, as an app
// using the 'upgrade' event does). Every request is answered with, and logged to stdout as, one
// `DIFF {json}` line: method, req.url, req.headers['x-pqmesh-peer-identity'], authorization and
// req.rawHeaders. Usage: node node_echo.js PORT...
'use strict';
const http = require('node:http');
const http2 = require('node:http2');
const net = require('node:net');

function echo(proto) {
  return (req, res) => {
    req.resume();
    const raw = req.rawHeaders;
    const headers = [];
    for (let i = 0; i + 1 < raw.length; i += 2) headers.push([raw[i], raw[i + 1]]);
    const line = JSON.stringify({
      server: 'node',
      port: req.socket.localPort,
      method: req.method,
      path: req.url,
      raw_path: req.url,
      identity: req.headers['x-pqmesh-peer-identity'] ?? null,
      authorization: req.headers['authorization'] ?? null,
      headers,
      proto,
    });
    process.stdout.write(`DIFF ${line}\n`);
    if (res) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${line}\n`);
    }
  };
}

const h2 = http2.createServer();
h2.on('request', echo('h2'));
h2.on('sessionError', () => {});
const h1 = http.createServer(echo('http/1.1'));
h1.on('upgrade', (req, socket, head) => {
  echo('http/1.1 upgrade')(req, null);
  const token = String(req.headers.upgrade || '').toLowerCase();
  socket.on('error', () => {});
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${token}\r\n\r\n`);
  if (token === 'h2c') {
    if (head.length) socket.unshift(head);
    h2.emit('connection', socket);
  } else {
    socket.resume(); // a WebSocket app would speak frames now; this one only listens
  }
});

for (const port of process.argv.slice(2)) {
  // One port speaks HTTP/1.1 and HTTP/2 with prior knowledge, as the sidecar expects of an app.
  net.createServer((socket) => {
    socket.on('error', () => {});
    socket.once('readable', function peek() {
      const chunk = socket.read();
      if (chunk === null) return socket.once('readable', peek);
      socket.unshift(chunk);
      (chunk.toString('latin1').startsWith('PRI ') ? h2 : h1).emit('connection', socket);
    });
  }).listen(Number(port), '127.0.0.1');
}
setTimeout(() => process.stdout.write('READY\n'), 100);
