// An independent TLS 1.3 peer (Node's OpenSSL 3.5) for pqmesh's inbound listener: hybrid
// X25519MLKEM768 only, client certificate, ALPN pqmesh/1. Verifies the server's chain against
// the mesh bundle and its SPIFFE ID, sends "ping", prints one JSON line with what it saw.
// usage: node tls_probe.mjs HOST PORT CERT KEY CA EXPECTED_SPIFFE_ID
import tls from 'node:tls';
import fs from 'node:fs';

const [host, port, certPath, keyPath, caPath, expectedId] = process.argv.slice(2);
const socket = tls.connect({
  host, port: Number(port),
  cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath), ca: fs.readFileSync(caPath),
  ecdhCurve: 'X25519MLKEM768', minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3',
  ALPNProtocols: ['pqmesh/1'],
  // Mesh leaves carry a SPIFFE URI SAN, not a host name: check that instead.
  checkServerIdentity: (_name, cert) =>
    (cert.subjectaltname || '').split(', ').includes(`URI:${expectedId}`)
      ? undefined : new Error(`server is ${cert.subjectaltname}, expected ${expectedId}`),
});
const timer = setTimeout(() => { console.log(JSON.stringify({ ok: false, error: 'timeout' })); process.exit(1); }, 10000);
let received = '';
socket.on('secureConnect', () => socket.write('ping'));
socket.on('data', (d) => {
  received += d.toString();
  if (received.length >= 4) {
    const peer = socket.getPeerCertificate();
    console.log(JSON.stringify({
      ok: received === 'ping', received, protocol: socket.getProtocol(), alpn: socket.alpnProtocol,
      cipher: socket.getCipher().name, ephemeral: socket.getEphemeralKeyInfo(), peer_san: peer.subjectaltname,
      openssl: process.versions.openssl,
    }));
    clearTimeout(timer);
    socket.end();
  }
});
socket.on('error', (e) => { console.log(JSON.stringify({ ok: false, error: e.message })); clearTimeout(timer); process.exit(1); });
