//! Hand-made JWTs for the adversarial tests, signed by Node 24's crypto: with the real OAuth
//! server's signing key (so only the one property under test is wrong), with a key of our own, as
//! HS256 keyed with the issuer's public key (alg confusion), or unsigned (`alg: none`). The
//! header and payload are given as raw JSON text, so duplicate members survive.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::oauth::{node24, OAuthServer};

/// How the forged token is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// RS256 with the OAuth server's current private key.
    IssuerKey,
    /// RS256 with a fresh RSA key the issuer never published.
    OtherKey,
    /// HS256 keyed with the issuer public key's PEM (the classic alg-confusion attack).
    HmacWithPublicKey,
    /// No signature at all.
    Unsigned,
}

const SIGNER: &str = r#"
const crypto = require('node:crypto');
const fs = require('node:fs');
const [keysFile, how] = process.argv.slice(1);
const { header, payload } = JSON.parse(fs.readFileSync(0, 'utf8'));
const b64 = (s) => Buffer.from(s).toString('base64url');
const input = `${b64(header)}.${b64(payload)}`;
const jwk = JSON.parse(fs.readFileSync(keysFile, 'utf8')).keys[0];
const issuerKey = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
let sig;
if (how === 'IssuerKey') sig = crypto.sign('sha256', Buffer.from(input), issuerKey);
else if (how === 'OtherKey') {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  sig = crypto.sign('sha256', Buffer.from(input), privateKey);
} else if (how === 'HmacWithPublicKey') {
  const pem = crypto.createPublicKey(issuerKey).export({ type: 'spki', format: 'pem' });
  sig = crypto.createHmac('sha256', pem).update(input).digest();
} else sig = Buffer.alloc(0);
process.stdout.write(`${input}.${sig.toString('base64url')}`);
"#;

/// Signs `header_json.payload_json` (raw JSON text) as `how` says.
pub fn jwt(oauth: &OAuthServer, header_json: &str, payload_json: &str, how: Signing) -> String {
    let keys = oauth.dir().join("signing-keys.json");
    let mut child = Command::new(node24())
        .arg("-e")
        .arg(SIGNER)
        .arg(&keys)
        .arg(format!("{how:?}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run Node 24 to sign a test JWT");
    let input = serde_json::json!({"header": header_json, "payload": payload_json}).to_string();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to node");
    let out = child.wait_with_output().expect("node finished");
    assert!(
        out.status.success(),
        "signing a test JWT failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("JWT is ASCII")
}
