//! Time-limited TURN credentials in the form coturn's "TURN REST API" mode accepts
//! (`use-auth-secret` with `static-auth-secret`): the username is `<expiry>:<user>` and the
//! password is the base64 HMAC-SHA1 of the username under the shared secret. Any TURN server
//! configured with the same secret accepts them until the expiry, with no call back to Chorus.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Credentials for one participant, valid until `expires_unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub credential: String,
    pub expires_unix: u64,
}

/// Mint credentials for `user`, valid for `ttl_secs` from `now_unix`.
pub fn turn_credentials(
    secret: &[u8],
    user: &str,
    now_unix: u64,
    ttl_secs: u64,
) -> TurnCredentials {
    let expires_unix = now_unix + ttl_secs;
    // A colon separates the expiry from the user, so it must not appear in the user part.
    let username = format!("{expires_unix}:{}", user.replace(':', "_"));
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredentials {
        username,
        credential,
        expires_unix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_coturn_rest_api_form() {
        // Reference value computed independently:
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"north",b"1700003600:alice",hashlib.sha1).digest()).decode())'
        let c = turn_credentials(b"north", "alice", 1_700_000_000, 3600);
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.expires_unix, 1_700_003_600);
        assert_eq!(c.credential, "wjwSXO2ch1B6VaLTLMy2Avn5O9o=");
    }

    #[test]
    fn user_colons_cannot_forge_an_expiry() {
        let c = turn_credentials(b"k", "9999999999:eve", 0, 60);
        assert_eq!(c.username, "60:9999999999_eve");
    }
}
