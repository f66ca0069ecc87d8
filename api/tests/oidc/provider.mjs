// A real OpenID Connect provider (npm `oidc-provider`) on loopback, for the
// OAuth sign-in tests (api/tests/api/oauth.rs). It signs in without a
// person: the account is the `login_hint` of the authorization request.
//
// Settings, from the environment:
//   PORT           port to listen on; 0 (the default) picks a free one
//   CLIENT_ID      the one client's id
//   CLIENT_SECRET  and its secret (client_secret_basic)
//   REDIRECT_URI   its one redirect URI
//   CLAIMS_IN_ID_TOKEN  `1`: email claims in the ID token too, not only
//                  from userinfo (the provider's default is userinfo only)
//
// Prints `ready <port>` on stdout once it listens; the issuer is
// `http://127.0.0.1:<port>`.
//
// Accounts: any email as `login_hint`; its `email_verified` is false when
// the local part starts with `unverified`, true otherwise. The subject is
// the address in base64url, so the same address is the same subject.

import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const env = (name, fallback) => process.env[name] ?? fallback;
const clientId = env('CLIENT_ID', 'keel');
const clientSecret = env('CLIENT_SECRET');
const redirectUri = env('REDIRECT_URI');
if (!clientSecret || !redirectUri) {
  console.error('CLIENT_SECRET and REDIRECT_URI are required');
  process.exit(2);
}

const server = createServer();
await new Promise((resolve) => server.listen(Number(env('PORT', '0')), '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

// A fresh signing key per run: the tests trust only what discovery serves.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'test-key' };

const emailOf = (accountId) => Buffer.from(accountId, 'base64url').toString();

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: ['keel-oidc-test-cookie-key'] },
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
  },
  conformIdTokenClaims: env('CLAIMS_IN_ID_TOKEN') !== '1',
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(_ctx, accountId) {
    const email = emailOf(accountId);
    const local = email.split('@')[0];
    return {
      accountId,
      async claims() {
        return {
          sub: accountId,
          email,
          email_verified: !local.startsWith('unverified'),
          preferred_username: local,
          name: `Test ${local}`,
        };
      },
    };
  },
});

// The sign-in and consent pages, answered at once: the account is the
// request's `login_hint`, and every scope and claim asked for is granted.
async function interact(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  let result;
  if (prompt.name === 'login') {
    const email = params.login_hint || 'verified@example.com';
    result = { login: { accountId: Buffer.from(email).toString('base64url') } };
  } else if (prompt.name === 'consent') {
    const grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    throw new Error(`unexpected prompt ${prompt.name}`);
  }
  const to = await provider.interactionResult(req, res, result, { mergeWithLastSubmission: true });
  res.writeHead(303, { Location: to });
  res.end();
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interact(req, res).catch((e) => {
      console.error(`interaction failed: ${e}`);
      res.writeHead(500, { 'Content-Type': 'text/plain' });
      res.end(String(e));
    });
    return;
  }
  callback(req, res);
});

// What the provider refuses (a replayed code, a wrong verifier), for the test's output.
provider.on('grant.error', (_ctx, error) => console.error(`grant error: ${error.message}: ${error.error_detail ?? error.error_description ?? ''}`));
provider.on('server_error', (_ctx, error) => console.error(`server error: ${error.stack}`));

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
console.log(`ready ${port}`);
