//! Authentication of the partner during step 415: challenge-response over the shared cluster secret.
//!
//! Both managers send a [`Hello`](crate::wire::Hello) carrying a fresh per-session `nonce`, then an
//! [`AuthChallenge`](crate::wire::AuthChallenge) with a fresh 32-byte challenge. Each answers the
//! other's challenge with
//!
//! ```text
//! mac = HMAC-SHA256(cluster_secret,
//!         "ccm-auth-v1" || responder node id || challenger node id || cluster id
//!         || negotiated version || challenge || responder hello nonce || challenger hello nonce)
//! ```
//!
//! The secret never travels. Binding both node ids stops a reflected response (our own MAC played back
//! to us names us as responder); binding both hello nonces ties the proof to this session, so a response
//! recorded on one session is useless on another; the fresh challenge makes each proof single-use.
//! Verification is constant-time ([`Mac::verify_slice`]).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{ClusterId, NodeId, ProtocolVersion};

type HmacSha256 = Hmac<Sha256>;

/// Everything the MAC is computed over, apart from the secret.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The node proving knowledge of the secret.
    pub responder: NodeId,
    /// The node that sent the challenge.
    pub challenger: NodeId,
    /// The cluster both claim.
    pub cluster: ClusterId,
    /// The negotiated protocol version.
    pub version: ProtocolVersion,
    /// The challenger's challenge.
    pub challenge: &'a [u8; 32],
    /// The responder's hello nonce.
    pub responder_nonce: &'a [u8; 32],
    /// The challenger's hello nonce.
    pub challenger_nonce: &'a [u8; 32],
}

fn mac_for(secret: &[u8], t: &Transcript<'_>) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(b"ccm-auth-v1");
    m.update(&t.responder.0.to_le_bytes());
    m.update(&t.challenger.0.to_le_bytes());
    m.update(&t.cluster.0.to_le_bytes());
    m.update(&t.version.to_le_bytes());
    m.update(t.challenge);
    m.update(t.responder_nonce);
    m.update(t.challenger_nonce);
    m
}

/// The responder's proof for `t`.
pub fn respond(secret: &[u8], t: &Transcript<'_>) -> [u8; 32] {
    mac_for(secret, t).finalize().into_bytes().into()
}

/// Whether `mac` proves knowledge of `secret` for `t` (constant-time comparison).
pub fn verify(secret: &[u8], t: &Transcript<'_>, mac: &[u8; 32]) -> bool {
    mac_for(secret, t).verify_slice(mac).is_ok()
}

/// A 64-bit tag naming one session of an interconnect, the same on both sides: derived from both hello
/// nonces, order-independent. Used by [`Stop`](crate::wire::Stop) so that a stop for an old session
/// cannot kill a new one.
pub fn session_tag(a: &[u8; 32], b: &[u8; 32]) -> u64 {
    let mut x = [0u8; 8];
    for i in 0..8 {
        x[i] = a[i] ^ b[i];
    }
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(c: &'a [u8; 32], rn: &'a [u8; 32], cn: &'a [u8; 32]) -> Transcript<'a> {
        Transcript {
            responder: NodeId(2),
            challenger: NodeId(1),
            cluster: ClusterId(77),
            version: 1,
            challenge: c,
            responder_nonce: rn,
            challenger_nonce: cn,
        }
    }

    #[test]
    fn the_right_secret_verifies_and_a_wrong_one_does_not() {
        let (c, rn, cn) = ([1; 32], [2; 32], [3; 32]);
        let mac = respond(b"cluster secret", &t(&c, &rn, &cn));
        assert!(verify(b"cluster secret", &t(&c, &rn, &cn), &mac));
        assert!(!verify(b"another secret", &t(&c, &rn, &cn), &mac));
    }

    #[test]
    fn a_proof_is_bound_to_challenge_session_and_direction() {
        let (c, rn, cn) = ([1; 32], [2; 32], [3; 32]);
        let mac = respond(b"s", &t(&c, &rn, &cn));
        assert!(
            !verify(b"s", &t(&[9; 32], &rn, &cn), &mac),
            "other challenge"
        );
        assert!(!verify(b"s", &t(&c, &[9; 32], &cn), &mac), "other session");
        let mut reflected = t(&c, &rn, &cn);
        std::mem::swap(&mut reflected.responder, &mut reflected.challenger);
        assert!(!verify(b"s", &reflected, &mac), "reflection");
    }

    #[test]
    fn session_tag_is_symmetric() {
        let (a, b) = ([5; 32], [9; 32]);
        assert_eq!(session_tag(&a, &b), session_tag(&b, &a));
        assert_ne!(session_tag(&a, &b), session_tag(&a, &a));
    }
}
