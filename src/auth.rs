//! Access tokens: HS256-signed JWTs carrying `Claims`. Verification is pure: the caller passes
//! the current time, so the session core stays free of clocks.

use crate::access::Claims;
use crate::protocol::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no access token was given")]
    Missing,
    #[error("the access token expired")]
    Expired,
    #[error("the access token is invalid: {0}")]
    Invalid(String),
}

impl TokenError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::Missing | TokenError::Invalid(_) => ErrorCode::InvalidToken,
        }
    }
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

/// The shortest secret accepted: 256 bits, the size of the HS256 hash.
pub const MIN_SECRET_LEN: usize = 32;

impl TokenKeys {
    pub fn new(secret: &[u8]) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the caller's clock in `verify`, not the library's.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn issue(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verify signature, shape and expiry at `now_unix` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.exp <= now_unix {
            return Err(TokenError::Expired);
        }
        if claims.sub.is_empty() || claims.org.is_empty() {
            return Err(TokenError::Invalid("empty user or organisation".into()));
        }
        Ok(claims)
    }
}

/// Seconds since the Unix epoch, for the shells that feed cores.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Grant;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            name: Some("Alice".into()),
            org: "acme".into(),
            grants: Grant::DEFAULT.to_vec(),
            iat: 100,
            exp,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let keys = TokenKeys::new(&[7; 32]);
        let token = keys.issue(&claims(1_000));
        assert_eq!(keys.verify(&token, 999), Ok(claims(1_000)));
        assert_eq!(keys.verify(&token, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn wrong_secret_and_garbage_are_invalid() {
        let token = TokenKeys::new(&[7; 32]).issue(&claims(1_000));
        let other = TokenKeys::new(&[8; 32]);
        assert!(matches!(
            other.verify(&token, 0),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            other.verify("not.a.jwt", 0),
            Err(TokenError::Invalid(_))
        ));
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 3, 'x');
        assert!(TokenKeys::new(&[7; 32]).verify(&tampered, 0).is_err());
    }

    #[test]
    fn unknown_grants_allow_nothing() {
        let keys = TokenKeys::new(&[1; 32]);
        let mut c = claims(10);
        c.grants = vec![];
        let mut json = serde_json::to_value(&c).unwrap();
        json["grants"] = serde_json::json!(["subscribe", "teleport"]);
        let token = jsonwebtoken::encode(
            &Header::default(),
            &json,
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        let got = keys.verify(&token, 0).unwrap();
        assert_eq!(got.grants, vec![Grant::Subscribe, Grant::Unknown]);
    }
}
