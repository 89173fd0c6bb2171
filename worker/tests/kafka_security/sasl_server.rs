//! The broker side of SASL (PLAIN, SCRAM-SHA-256/512) for the test proxy: answers
//! `SaslHandshake` and `SaslAuthenticate` itself and lets a client through to the broker only
//! once authenticated (tansu, the test broker, has no PLAIN, and its SCRAM users do not
//! survive the restart that turns authentication on). librdkafka authenticating against it
//! checks this side independently of the worker's own SCRAM client.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, decode_request_header_from_buffer};
use ring::{digest, hmac, pbkdf2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The one user the gate knows, and the mechanisms it offers.
#[derive(Clone)]
pub struct Users {
    pub username: &'static str,
    pub password: &'static str,
    pub mechanisms: &'static [&'static str],
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let len = s.read_i32().await?;
    let mut buf = vec![0u8; len.max(0) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> std::io::Result<()> {
    s.write_all(&(body.len() as i32).to_be_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await
}

fn response<M: Encodable>(key: ApiKey, version: i16, correlation: i32, m: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut out, key.response_header_version(version))
        .unwrap();
    m.encode(&mut out, version).unwrap();
    out.to_vec()
}

/// SCRAM exchange state: the messages so far.
struct Scram {
    sha512: bool,
    client_first_bare: String,
    server_first: String,
    salted: Vec<u8>,
}

impl Scram {
    fn algorithms(&self) -> (hmac::Algorithm, &'static digest::Algorithm) {
        if self.sha512 {
            (hmac::HMAC_SHA512, &digest::SHA512)
        } else {
            (hmac::HMAC_SHA256, &digest::SHA256)
        }
    }
}

/// Relays requests before authentication (only ApiVersions goes to the broker) and handles
/// SASL; returns `Ok(true)` once the client is authenticated, `Ok(false)` if it must be
/// disconnected.
pub async fn gate<C, U>(client: &mut C, upstream: &mut U, users: &Users) -> std::io::Result<bool>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut mechanism = String::new();
    let mut scram: Option<Scram> = None;
    loop {
        let frame = read_frame(client).await?;
        let mut buf = Bytes::from(frame.clone());
        let Ok(header) = decode_request_header_from_buffer(&mut buf) else {
            return Ok(false);
        };
        let (v, c) = (header.request_api_version, header.correlation_id);
        match ApiKey::try_from(header.request_api_key) {
            Ok(ApiKey::ApiVersions) => {
                write_frame(upstream, &frame).await?;
                let answer = read_frame(upstream).await?;
                write_frame(client, &answer).await?;
            }
            Ok(ApiKey::SaslHandshake) => {
                let r = SaslHandshakeRequest::decode(&mut buf, v).unwrap();
                mechanism = r.mechanism.as_str().to_string();
                let ok = users.mechanisms.contains(&mechanism.as_str());
                let offered = users
                    .mechanisms
                    .iter()
                    .map(|m| StrBytes::from_static_str(m))
                    .collect();
                let resp = SaslHandshakeResponse::default()
                    .with_error_code(if ok { 0 } else { 33 })
                    .with_mechanisms(offered);
                write_frame(client, &response(ApiKey::SaslHandshake, v, c, &resp)).await?;
                if !ok {
                    return Ok(false);
                }
            }
            Ok(ApiKey::SaslAuthenticate) => {
                let r = SaslAuthenticateRequest::decode(&mut buf, v).unwrap();
                let step = authenticate(&mechanism, &r.auth_bytes, &mut scram, users);
                let (resp, done) = match step {
                    Ok((bytes, done)) => (
                        SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes)),
                        done,
                    ),
                    Err(()) => (
                        SaslAuthenticateResponse::default()
                            .with_error_code(58)
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "Authentication failed during authentication due to invalid \
                                 credentials with SASL mechanism {mechanism}"
                            )))),
                        false,
                    ),
                };
                let failed = resp.error_code != 0;
                write_frame(client, &response(ApiKey::SaslAuthenticate, v, c, &resp)).await?;
                if failed {
                    return Ok(false);
                }
                if done {
                    return Ok(true);
                }
            }
            // Anything else before authentication: a real broker disconnects.
            _ => return Ok(false),
        }
    }
}

/// One SASL step: the bytes to answer and whether the client is now authenticated.
fn authenticate(
    mechanism: &str,
    bytes: &[u8],
    scram: &mut Option<Scram>,
    users: &Users,
) -> Result<(Vec<u8>, bool), ()> {
    if mechanism == "PLAIN" {
        let expected = format!("\0{}\0{}", users.username, users.password);
        return if bytes == expected.as_bytes() {
            Ok((Vec::new(), true))
        } else {
            Err(())
        };
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ())?;
    match scram.take() {
        None => {
            let bare = text.strip_prefix("n,,").ok_or(())?;
            let user = bare
                .strip_prefix("n=")
                .and_then(|r| r.split(',').next())
                .ok_or(())?;
            let nonce = bare
                .split(',')
                .find_map(|kv| kv.strip_prefix("r="))
                .ok_or(())?;
            if user != users.username {
                return Err(());
            }
            let salt = b"streamjob-test-salt";
            let sha512 = mechanism == "SCRAM-SHA-512";
            let (kdf, len) = if sha512 {
                (pbkdf2::PBKDF2_HMAC_SHA512, 64)
            } else {
                (pbkdf2::PBKDF2_HMAC_SHA256, 32)
            };
            let mut salted = vec![0u8; len];
            pbkdf2::derive(
                kdf,
                4096.try_into().unwrap(),
                salt,
                users.password.as_bytes(),
                &mut salted,
            );
            let server_first = format!("r={nonce}server-nonce,s={},i=4096", B64.encode(salt));
            *scram = Some(Scram {
                sha512,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                salted,
            });
            Ok((server_first.into_bytes(), false))
        }
        Some(s) => {
            let (without_proof, proof) = text.rsplit_once(",p=").ok_or(())?;
            let proof = B64.decode(proof).map_err(|_| ())?;
            let (mac, hash) = s.algorithms();
            let salted = hmac::Key::new(mac, &s.salted);
            let client_key = hmac::sign(&salted, b"Client Key");
            let stored_key = digest::digest(hash, client_key.as_ref());
            let auth = format!("{},{},{without_proof}", s.client_first_bare, s.server_first);
            let signature = hmac::sign(&hmac::Key::new(mac, stored_key.as_ref()), auth.as_bytes());
            let recovered: Vec<u8> = proof
                .iter()
                .zip(signature.as_ref())
                .map(|(a, b)| a ^ b)
                .collect();
            if digest::digest(hash, &recovered).as_ref() != stored_key.as_ref() {
                return Err(());
            }
            let server_key = hmac::sign(&salted, b"Server Key");
            let v = hmac::sign(&hmac::Key::new(mac, server_key.as_ref()), auth.as_bytes());
            Ok((format!("v={}", B64.encode(v.as_ref())).into_bytes(), true))
        }
    }
}
