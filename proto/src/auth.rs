//! The per-VM access token: 256 random bits, written as 64 lowercase hex characters on the
//! guest's kernel command line and sent as `authorization: Bearer <token>` on every call.
//! Servers reject a missing, malformed or wrong token with UNAUTHENTICATED before any
//! handler runs, comparing in constant time. The token is never printed: `Debug` redacts it.

use std::fmt;
#[cfg(feature = "grpc")]
use std::sync::Arc;

#[cfg(feature = "grpc")]
use grpcio::{
    CallOption, CheckResult, MetadataBuilder, RpcContext, RpcStatus, RpcStatusCode, ServerChecker,
};

use crate::sys;

pub const TOKEN_BYTES: usize = 32;
pub const TOKEN_HEX_LEN: usize = TOKEN_BYTES * 2;
pub const AUTH_HEADER: &str = "authorization";
const BEARER: &str = "Bearer ";

#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; TOKEN_BYTES]);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Lengths are safe to report; the characters are not.
    WrongLength(usize),
    NotLowercaseHex {
        position: usize,
    },
    Random(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength(len) => write!(
                f,
                "access token has {len} characters; it must be {TOKEN_HEX_LEN} lowercase hex characters"
            ),
            Self::NotLowercaseHex { position } => write!(
                f,
                "access token character {position} is not lowercase hex (0-9, a-f)"
            ),
            Self::Random(err) => write!(f, "cannot read random bytes for a token: {err}"),
        }
    }
}

impl std::error::Error for TokenError {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Token {
    /// A fresh token from the kernel's CSPRNG (getrandom(2)).
    pub fn generate() -> Result<Token, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        sys::fill_random(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Token(bytes))
    }

    pub fn from_bytes(bytes: [u8; TOKEN_BYTES]) -> Token {
        Token(bytes)
    }

    pub fn parse(text: &str) -> Result<Token, TokenError> {
        Self::parse_bytes(text.as_bytes())
    }

    fn parse_bytes(text: &[u8]) -> Result<Token, TokenError> {
        if text.len() != TOKEN_HEX_LEN {
            return Err(TokenError::WrongLength(text.len()));
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(TokenError::NotLowercaseHex { position: 2 * i })?;
            let lo = hex_value(pair[1]).ok_or(TokenError::NotLowercaseHex {
                position: 2 * i + 1,
            })?;
            bytes[i] = hi << 4 | lo;
        }
        Ok(Token(bytes))
    }

    /// The secret itself: only for the kernel command line and the auth header.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Does an `authorization` header value carry this token? Constant time in the token.
    pub fn matches_header(&self, value: &[u8]) -> bool {
        let Some(hex) = value.strip_prefix(BEARER.as_bytes()) else {
            return false;
        };
        match Token::parse_bytes(hex) {
            Ok(other) => constant_time_eq(&self.0, &other.0),
            Err(_) => false,
        }
    }

    #[cfg(feature = "grpc")]
    /// Call options carrying this token, for every client call.
    pub fn call_option(&self) -> CallOption {
        let mut meta = MetadataBuilder::with_capacity(1);
        // Cannot fail: the key is a valid lowercase ASCII header name and the value is
        // printable ASCII.
        let _ = meta.add_str(AUTH_HEADER, &format!("{BEARER}{}", self.to_hex()));
        CallOption::default().headers(meta.build())
    }
}

fn constant_time_eq(a: &[u8; TOKEN_BYTES], b: &[u8; TOKEN_BYTES]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(feature = "grpc")]
/// A server checker that lets a call through only with exactly one `authorization` header
/// carrying the token.
#[derive(Clone)]
pub struct TokenChecker {
    token: Arc<Token>,
}

#[cfg(feature = "grpc")]
impl TokenChecker {
    pub fn new(token: Token) -> TokenChecker {
        TokenChecker {
            token: Arc::new(token),
        }
    }

    pub fn is_authorized(&self, headers: &grpcio::Metadata) -> bool {
        let mut values = headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(AUTH_HEADER))
            .map(|(_, value)| value);
        match (values.next(), values.next()) {
            (Some(value), None) => self.token.matches_header(value),
            _ => false,
        }
    }
}

#[cfg(feature = "grpc")]
impl ServerChecker for TokenChecker {
    fn check(&mut self, ctx: &RpcContext) -> CheckResult {
        if self.is_authorized(ctx.request_headers()) {
            CheckResult::Continue
        } else {
            CheckResult::Abort(RpcStatus::with_message(
                RpcStatusCode::UNAUTHENTICATED,
                "missing or invalid access token".to_string(),
            ))
        }
    }

    fn box_clone(&self) -> Box<dyn ServerChecker> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn parse_valid_token_round_trips() {
        assert_eq!(Token::parse(HEX).unwrap().to_hex(), HEX);
    }

    #[test]
    fn parse_bad_token_errors_without_echoing_it() {
        assert_eq!(Token::parse("abc"), Err(TokenError::WrongLength(3)));
        let upper = HEX.to_uppercase();
        assert_eq!(
            Token::parse(&upper),
            Err(TokenError::NotLowercaseHex { position: 20 })
        );
        let err = Token::parse(&upper).unwrap_err().to_string();
        assert!(!err.contains(&upper[20..]), "{err}");
        let multibyte = "é".repeat(32);
        assert!(Token::parse(&multibyte).is_err());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let token = Token::parse(HEX).unwrap();
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn generate_gives_distinct_full_entropy_tokens() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_hex().len(), TOKEN_HEX_LEN);
        assert!(Token::parse(&a.to_hex()).is_ok());
        // 1000 tokens = 256,000 bits: the share of one bits must be near one half.
        let ones: u32 = (0..1000)
            .map(|_| {
                Token::generate()
                    .unwrap()
                    .0
                    .iter()
                    .map(|b| b.count_ones())
                    .sum::<u32>()
            })
            .sum();
        let share = f64::from(ones) / 256_000.0;
        assert!((0.49..0.51).contains(&share), "share of one bits {share}");
    }

    #[test]
    fn matches_header_needs_bearer_and_the_exact_token() {
        let token = Token::parse(HEX).unwrap();
        assert!(token.matches_header(format!("Bearer {HEX}").as_bytes()));
        assert!(!token.matches_header(HEX.as_bytes()));
        assert!(!token.matches_header(format!("Bearer {HEX} ").as_bytes()));
        assert!(!token.matches_header(format!("bearer {HEX}").as_bytes()));
        let mut wrong = HEX.to_string();
        wrong.replace_range(63.., "0");
        assert!(!token.matches_header(format!("Bearer {wrong}").as_bytes()));
        assert!(!token.matches_header(b"Bearer "));
        assert!(!token.matches_header(b""));
    }
}
