//! The client side of SCRAM-SHA-256/512 (RFC 5802, RFC 7677) for the transaction client's
//! SASL authentication, over ring's HMAC and PBKDF2. No channel binding (Kafka has none).

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};

use super::security::Mechanism;

/// More iterations than any broker uses (Kafka allows up to 16384): a server asking for more
/// is refused rather than let it burn the CPU.
const MAX_ITERATIONS: u32 = 1 << 20;

pub(crate) struct Scram {
    mechanism: Mechanism,
    password: String,
    client_nonce: String,
    first_bare: String,
    /// Set once the proof is sent: what the server must answer with.
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    pub fn new(mechanism: Mechanism, username: &str, password: &str) -> Result<Scram, String> {
        let mut raw = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| "no randomness for the SCRAM nonce".to_string())?;
        Ok(Scram::with_nonce(
            mechanism,
            username,
            password,
            &B64.encode(raw),
        ))
    }

    fn with_nonce(mechanism: Mechanism, username: &str, password: &str, nonce: &str) -> Scram {
        let name = username.replace('=', "=3D").replace(',', "=2C");
        Scram {
            mechanism,
            password: password.to_string(),
            client_nonce: nonce.to_string(),
            first_bare: format!("n={name},r={nonce}"),
            server_signature: None,
        }
    }

    fn algorithms(
        &self,
    ) -> (
        hmac::Algorithm,
        pbkdf2::Algorithm,
        &'static digest::Algorithm,
    ) {
        match self.mechanism {
            Mechanism::ScramSha512 => (
                hmac::HMAC_SHA512,
                pbkdf2::PBKDF2_HMAC_SHA512,
                &digest::SHA512,
            ),
            _ => (
                hmac::HMAC_SHA256,
                pbkdf2::PBKDF2_HMAC_SHA256,
                &digest::SHA256,
            ),
        }
    }

    /// `client-first-message` (no channel binding, no authzid).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// `client-final-message` answering the server's first message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "SCRAM: the server's first message is not UTF-8".to_string())?;
        let field = |name: char| {
            server_first
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("SCRAM: the server's first message has no '{name}='"))
        };
        if let Some(e) = server_first.strip_prefix("e=") {
            return Err(format!("SCRAM: the server refused: {e}"));
        }
        let nonce = field('r')?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("SCRAM: the server's nonce does not extend ours".into());
        }
        let salt = B64
            .decode(field('s')?)
            .map_err(|_| "SCRAM: the server's salt is not base64".to_string())?;
        let iterations: u32 = field('i')?
            .parse()
            .map_err(|_| "SCRAM: the server's iteration count is not a number".to_string())?;
        let iterations = NonZeroU32::new(iterations)
            .filter(|n| n.get() <= MAX_ITERATIONS)
            .ok_or_else(|| format!("SCRAM: iteration count {iterations} is out of range"))?;
        let (mac, kdf, hash) = self.algorithms();
        let mut salted = vec![0u8; hash.output_len()];
        pbkdf2::derive(
            kdf,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted = hmac::Key::new(mac, &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(hash, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(mac, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&salted, b"Server Key");
        self.server_signature = Some(
            hmac::sign(
                &hmac::Key::new(mac, server_key.as_ref()),
                auth_message.as_bytes(),
            )
            .as_ref()
            .to_vec(),
        );
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message: it proves the server knows the password too.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(server_final);
        if let Some(e) = text.strip_prefix("e=") {
            return Err(format!("SCRAM: the server refused: {e}"));
        }
        let expected = self
            .server_signature
            .as_ref()
            .ok_or("SCRAM: final message before the proof")?;
        let got = text
            .split(',')
            .find_map(|kv| kv.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok());
        if got.as_deref() != Some(expected.as_slice()) {
            return Err("SCRAM: the server's signature is wrong (not the broker we think)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 exchange of RFC 7677, section 3.
    #[test]
    fn rfc_7677_example() {
        let mut c = Scram::with_nonce(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            String::from_utf8(c.client_final(server_first).unwrap()).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        let e = c
            .verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap_err();
        assert!(e.contains("signature is wrong"), "{e}");
        assert_eq!(
            c.verify_server_final(b"e=invalid-proof").unwrap_err(),
            "SCRAM: the server refused: invalid-proof"
        );
    }

    #[test]
    fn hostile_server_messages_are_refused() {
        let mut c = Scram::with_nonce(Mechanism::ScramSha512, "a,b=c", "p", "abc");
        assert_eq!(c.client_first(), b"n,,n=a=2Cb=3Dc,r=abc");
        for (msg, why) in [
            (&b"r=xyz1,s=AAAA,i=4096"[..], "does not extend ours"),
            (b"r=abc,s=AAAA,i=4096", "does not extend ours"),
            (b"r=abcd,s=AAAA,i=99999999", "out of range"),
            (b"r=abcd,s=AAAA,i=0", "out of range"),
            (b"r=abcd,s=!!,i=4096", "not base64"),
            (b"r=abcd,i=4096", "no 's='"),
            (b"e=unknown-user", "refused: unknown-user"),
        ] {
            let e = c.client_final(msg).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
