//! Who may do what on `sluiced`: API tokens and mutual-TLS client
//! certificates map a connection to a [`Principal`], whose permissions say
//! which streams it may publish to and consume from, and whether it may use
//! admin operations.
//!
//! The `[auth]` section of the configuration ([`AuthConfig`]) lists the
//! principals. A token's owner holds the token; the config holds only its
//! SHA-256 hash, so a leaked config file does not leak a credential. A client
//! certificate is verified by the TLS layer (against `tls.client_ca`); here
//! it is only mapped to a principal by its subject common name.
//!
//! [`Authenticator::new`] checks the whole section once, at start, with
//! errors that name the key (`auth.tokens[2].hash: ...`); after that, lookups
//! cannot fail for a reason other than "unknown".

mod authenticator;
mod config;
mod names;
mod permissions;
mod token;

pub use authenticator::Authenticator;
pub use config::{AuthConfig, AuthConfigError, ClientEntry, TokenEntry};
pub use names::{check_common_name, check_principal_name, StreamPattern};
pub use permissions::{Action, Permissions, Principal, PrincipalKind};
pub use token::{hash_token, new_token};
