// A real OAuth 2.0 authorization server for pqmesh's phantom-token end-to-end tests:
// oidc-provider (see package.json for the pinned version), run with Node 24.
//
//   node server.mjs [--port N] [--keys FILE] [--store FILE] [--access-token-ttl SECONDS] [--tenant NAME]
//
// --port N                 listen on 127.0.0.1:N (0 = any free port; the issuer printed says which).
// --keys FILE              JWKS with PRIVATE keys used for signing. Missing file: an RSA key (RS256)
//                          with a random kid is generated and written there, so restarting with a
//                          different (new) key file is a key rotation.
// --store FILE             persist issued tokens in FILE (JSON), so they survive a restart. Without
//                          it, tokens live in memory and die with the process.
// --access-token-ttl S     lifetime of access tokens (client_credentials), default 300.
// --tenant NAME            value of the custom `tenant` claim of shop-client's tokens, default acme.
// Every flag can also be given as an environment variable: OAUTH_PORT, OAUTH_KEYS, OAUTH_STORE,
// OAUTH_ACCESS_TOKEN_TTL, OAUTH_TENANT.
//
// Prints `READY <issuer>` on stdout once listening; logs one line per request on stderr.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OAUTH_PORT ?? '0' },
    keys: { type: 'string', default: process.env.OAUTH_KEYS },
    store: { type: 'string', default: process.env.OAUTH_STORE },
    'access-token-ttl': { type: 'string', default: process.env.OAUTH_ACCESS_TOKEN_TTL ?? '300' },
    tenant: { type: 'string', default: process.env.OAUTH_TENANT ?? 'acme' },
  },
});

const port = Number.parseInt(args.port, 10);
const accessTokenTtl = Number.parseInt(args['access-token-ttl'], 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad --port ${args.port}`);
if (!Number.isInteger(accessTokenTtl) || accessTokenTtl <= 0) {
  throw new Error(`bad --access-token-ttl ${args['access-token-ttl']}`);
}
if (!args.keys) throw new Error('--keys FILE (or OAUTH_KEYS) is required');

// --- signing keys ---------------------------------------------------------------------------
function loadOrCreateKeys(file) {
  if (fs.existsSync(file)) {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  }
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = {
    ...privateKey.export({ format: 'jwk' }),
    kid: crypto.randomBytes(12).toString('base64url'),
    alg: 'RS256',
    use: 'sig',
  };
  const jwks = { keys: [jwk] };
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = `${file}.${process.pid}.new`;
  fs.writeFileSync(tmp, JSON.stringify(jwks, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, file);
  return jwks;
}
const jwks = loadOrCreateKeys(args.keys);

// --- token storage --------------------------------------------------------------------------
// A small adapter that keeps everything in one JSON file, written on every change, so that a
// stop/restart of this server (an outage in the tests) does not forget issued tokens.
function fileAdapterFactory(file) {
  let db = {};
  if (fs.existsSync(file)) db = JSON.parse(fs.readFileSync(file, 'utf8'));
  const now = () => Date.now();
  const save = () => {
    for (const [k, v] of Object.entries(db)) if (v.expiresAt && v.expiresAt <= now()) delete db[k];
    const tmp = `${file}.${process.pid}.new`;
    fs.writeFileSync(tmp, JSON.stringify(db), { mode: 0o600 });
    fs.renameSync(tmp, file);
  };
  const live = (key) => {
    const entry = db[key];
    if (!entry) return undefined;
    if (entry.expiresAt && entry.expiresAt <= now()) return undefined;
    return entry.payload;
  };
  return class FileAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      db[this.key(id)] = {
        payload,
        expiresAt: typeof expiresIn === 'number' ? now() + expiresIn * 1000 : null,
      };
      save();
    }

    async find(id) {
      return live(this.key(id));
    }

    async findByUid(uid) {
      for (const [k, v] of Object.entries(db)) {
        if (k.startsWith(`${this.model}:`) && v.payload.uid === uid) return live(k);
      }
      return undefined;
    }

    async findByUserCode(userCode) {
      for (const [k, v] of Object.entries(db)) {
        if (k.startsWith(`${this.model}:`) && v.payload.userCode === userCode) return live(k);
      }
      return undefined;
    }

    async consume(id) {
      const entry = db[this.key(id)];
      if (entry) {
        entry.payload.consumed = Math.floor(now() / 1000);
        save();
      }
    }

    async destroy(id) {
      delete db[this.key(id)];
      save();
    }

    async revokeByGrantId(grantId) {
      for (const [k, v] of Object.entries(db)) if (v.payload.grantId === grantId) delete db[k];
      save();
    }
  };
}

// --- clients --------------------------------------------------------------------------------
const GATEWAY = 'shop-gateway';
const clients = [
  {
    // The outside caller: obtains opaque access tokens with client_credentials.
    client_id: 'shop-client',
    client_secret: 'shop-client-secret-0123456789',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'orders:read orders:write admin',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    // A second caller of another tenant, for negative claim conditions.
    client_id: 'partner-client',
    client_secret: 'partner-client-secret-0123456789',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'orders:read',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    // What pqmesh's sidecar authenticates as to introspect (RFC 7662 + RFC 9701).
    client_id: GATEWAY,
    client_secret: 'shop-gateway-secret-0123456789',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    introspection_signed_response_alg: 'RS256',
  },
];
const tenants = { 'shop-client': args.tenant, 'partner-client': 'globex' };

// --- the provider ---------------------------------------------------------------------------
// Listen first (port 0 works), then build the provider with the issuer that names the real port.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients,
  jwks,
  ...(args.store ? { adapter: fileAdapterFactory(args.store) } : {}),
  scopes: ['openid', 'offline_access', 'orders:read', 'orders:write', 'admin'],
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  clientBasedCORS: () => false,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // oidc-provider asks the deployment to decide who may learn about whose tokens: the
      // gateway may introspect every token, other clients only their own.
      allowedPolicy: async (ctx, client, token) => client.clientId === GATEWAY || client.clientId === token.clientId,
    },
    jwtIntrospection: { enabled: true },
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => client.clientId === token.clientId,
    },
  },
  // Opaque tokens (the default format when no resource indicator is used); a custom claim that
  // introspection responses carry at the top level of the (token_)introspection object.
  extraTokenClaims: async (ctx, token) => {
    const tenant = tenants[token.clientId];
    return tenant ? { tenant } : undefined;
  },
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
  },
});
provider.proxy = false;

// One line per request on stderr.
provider.use(async (ctx, next) => {
  const start = Date.now();
  try {
    await next();
  } finally {
    const err = ctx.oidc?.entities?.Client ? ` client=${ctx.oidc.entities.Client.clientId}` : '';
    process.stderr.write(`${new Date().toISOString()} ${ctx.method} ${ctx.path} ${ctx.status}${err} ${Date.now() - start}ms\n`);
  }
});
provider.on('server_error', (ctx, error) => process.stderr.write(`server_error: ${error.stack}\n`));

server.on('request', provider.callback());
process.stdout.write(`READY ${issuer}\n`);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
