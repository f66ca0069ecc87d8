//! The client side of signing in through an OAuth 2.0 / OpenID Connect
//! provider: the providers configured, and the calls made to them
//! (discovery, keys, the code exchange, the identity). `routes::oauth` runs
//! the flow in the browser and finds, links or creates the account.

pub(crate) mod http;
pub(crate) mod provider;
