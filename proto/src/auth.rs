//! The password proof, in one place.
//!
//! Both sides derive an [`AuthKey`] from the shared password once (PBKDF2-HMAC-SHA256). During
//! the handshake each side proves it holds the key with an HMAC-SHA256 over its own role label
//! and the [`Transcript`] (version, both nonces, session id, groups). The endpoint proves first;
//! the relay proves back in `Welcome`. The role labels differ, so a proof cannot be reflected to
//! the side that made it; each side's nonce is fresh, so a recorded proof cannot be replayed.
//! Proofs are compared in constant time. The password itself never crosses the wire.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// PBKDF2 salt: fixed, because the two sides share nothing but the password before the
/// handshake. It still separates tlsro keys from any other use of the same password.
const KEY_SALT: &[u8] = b"tlsro/1 password key";

/// PBKDF2 rounds. Derived once per process (relay) or per boot (microcontroller: well under a
/// second on a Cortex-M4), it makes each offline guess against a recorded plain-mode handshake
/// cost thousands of HMACs.
pub const KEY_ROUNDS: u32 = 4096;

/// Which side makes a proof. The label is part of what is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Role {
    /// The endpoint's proof, sent in `Proof`.
    Endpoint,
    /// The relay's proof, sent in `Welcome`.
    Relay,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Endpoint => b"tlsro endpoint",
            Role::Relay => b"tlsro relay",
        }
    }
}

/// Refuses a password that proves nothing: an empty one (a relay and an endpoint that both
/// forgot to set it would otherwise "authenticate" each other).
pub fn check_password(password: &[u8]) -> Result<(), &'static str> {
    if password.is_empty() {
        return Err("the password is empty: an empty password proves nothing");
    }
    Ok(())
}

/// The key both sides derive from the shared password.
#[derive(Clone)]
pub struct AuthKey([u8; 32]);

impl core::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

impl AuthKey {
    /// Derives the key from a password (PBKDF2-HMAC-SHA256, [`KEY_ROUNDS`] rounds).
    pub fn derive(password: &[u8]) -> Self {
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, KEY_SALT, KEY_ROUNDS, &mut key);
        AuthKey(key)
    }

    /// A key from raw bytes (for drivers that stored an already derived key).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        AuthKey(bytes)
    }

    fn mac(&self, role: Role, t: &Transcript<'_>) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(role.label());
        mac.update(&[0]);
        mac.update(&t.version.to_be_bytes());
        mac.update(t.endpoint_nonce);
        mac.update(t.relay_nonce);
        mac.update(t.session);
        // Groups are length-prefixed so that ["ab"] and ["a", "b"] differ.
        mac.update(&[t.groups.len() as u8]);
        for group in t.groups {
            mac.update(&[group.len() as u8]);
            mac.update(group.as_bytes());
        }
        mac
    }

    /// The proof `role` sends for this transcript.
    pub fn proof(&self, role: Role, t: &Transcript<'_>) -> [u8; 32] {
        self.mac(role, t).finalize().into_bytes().into()
    }

    /// Whether `proof` is the proof `role` must send for this transcript; constant time.
    pub fn verify(&self, role: Role, t: &Transcript<'_>, proof: &[u8; 32]) -> bool {
        self.mac(role, t).verify_slice(proof).is_ok()
    }
}

/// What both proofs cover.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The protocol version from `Hello`.
    pub version: u16,
    /// The endpoint's nonce from `Hello`.
    pub endpoint_nonce: &'a [u8; 32],
    /// The relay's nonce from `Challenge`.
    pub relay_nonce: &'a [u8; 32],
    /// The session id from `Hello`.
    pub session: &'a [u8; 16],
    /// The groups from `Hello`, in order.
    pub groups: &'a [&'a str],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript<'a>(groups: &'a [&'a str]) -> Transcript<'a> {
        Transcript {
            version: 1,
            endpoint_nonce: &[1; 32],
            relay_nonce: &[2; 32],
            session: &[3; 16],
            groups,
        }
    }

    #[test]
    fn proofs_verify_only_for_their_role_key_and_transcript() {
        let key = AuthKey::derive(b"secret");
        let t = transcript(&["a", "b"]);
        let p = key.proof(Role::Endpoint, &t);
        assert!(key.verify(Role::Endpoint, &t, &p));
        // Reflection: the endpoint's proof is not a relay proof.
        assert!(!key.verify(Role::Relay, &t, &p));
        // Wrong password.
        assert!(!AuthKey::derive(b"secret2").verify(Role::Endpoint, &t, &p));
        // Replay against a fresh relay nonce.
        let fresh = Transcript {
            relay_nonce: &[9; 32],
            ..t
        };
        assert!(!key.verify(Role::Endpoint, &fresh, &p));
        // Group boundaries are authenticated.
        assert!(!key.verify(Role::Endpoint, &transcript(&["ab"]), &p));
    }
}
