//! The VI address a manager exchanges before slam connecting: a compact, fixed-size,
//! versioned encoding with checked decoding (hostile bytes give an error, never a panic).
//!
//! Layout of version 1 ([`ViAddress::ENCODED_LEN`] = 48 bytes, integers little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0 | version (1) |
//! | 1 | interconnect id |
//! | 2 | path MTU of the port (`IBV_MTU_*`, 1..=5) |
//! | 3 | flags: bits 0-1 reliability level (1 = reliable delivery), bit 2 RDMA write enabled, bit 3 RDMA read enabled; other bits 0 |
//! | 4..8 | VI number = QPN (1..2^24) |
//! | 8..12 | first PSN this VI sends (< 2^24) |
//! | 12..14 | initial receive credits (receives posted when the address was taken) |
//! | 14..16 | reserved, 0 |
//! | 16..32 | GID (wire order) |
//! | 32..40 | credit mailbox address (see [`crate::credit`]) |
//! | 40..44 | credit mailbox rkey |
//! | 44..48 | reserved, 0 |
//!
//! A batch ([`encode_batch`] / [`decode_batch`]) is a u16 count followed by that many addresses.

use crate::error::{Error, Result};
use crate::Reliability;
use ccm_verbs::{Endpoint, Gid, Mtu, RemoteAddr};

/// Largest 24-bit value (QPN, PSN).
pub const MAX_24BIT: u32 = 0x00ff_ffff;

/// Everything a peer needs to slam connect to a VI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViAddress {
    /// Interconnect the VI's NIC is on.
    pub interconnect: u8,
    /// VI number (the QPN).
    pub vi_number: u32,
    /// RoCE v2 GID of the VI's port.
    pub gid: Gid,
    /// First PSN the VI sends.
    pub psn: u32,
    /// Active MTU of the VI's port.
    pub mtu: Mtu,
    /// Reliability level of the VI.
    pub reliability: Reliability,
    /// The VI accepts and issues RDMA writes.
    pub rdma_write: bool,
    /// The VI accepts and issues RDMA reads.
    pub rdma_read: bool,
    /// Receive credits granted up front (receives posted when the address was taken).
    pub credits: u16,
    /// Where the peer writes credit updates for this VI.
    pub mailbox: RemoteAddr,
}

const FLAG_WRITE: u8 = 1 << 2;
const FLAG_READ: u8 = 1 << 3;
const FLAG_REL_MASK: u8 = 0b11;

impl ViAddress {
    /// Version of the encoding.
    pub const VERSION: u8 = 1;
    /// Encoded length.
    pub const ENCODED_LEN: usize = 48;

    /// Fixed-size encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0] = Self::VERSION;
        b[1] = self.interconnect;
        b[2] = self.mtu.raw() as u8;
        let mut flags = self.reliability.code();
        if self.rdma_write {
            flags |= FLAG_WRITE;
        }
        if self.rdma_read {
            flags |= FLAG_READ;
        }
        b[3] = flags;
        b[4..8].copy_from_slice(&self.vi_number.to_le_bytes());
        b[8..12].copy_from_slice(&self.psn.to_le_bytes());
        b[12..14].copy_from_slice(&self.credits.to_le_bytes());
        b[16..32].copy_from_slice(&self.gid.0);
        b[32..40].copy_from_slice(&self.mailbox.addr.to_le_bytes());
        b[40..44].copy_from_slice(&self.mailbox.rkey.to_le_bytes());
        b
    }

    /// Checked decoding of exactly [`ENCODED_LEN`](Self::ENCODED_LEN) bytes.
    pub fn decode(b: &[u8]) -> Result<ViAddress> {
        let b: &[u8; Self::ENCODED_LEN] =
            b.try_into().map_err(|_| Error::Decode("wrong length"))?;
        if b[0] != Self::VERSION {
            return Err(Error::Decode("unknown version"));
        }
        let mtu = Mtu::from_raw(b[2] as u32).ok_or(Error::Decode("bad MTU"))?;
        let flags = b[3];
        if flags & !(FLAG_REL_MASK | FLAG_WRITE | FLAG_READ) != 0 {
            return Err(Error::Decode("unknown flags"));
        }
        let reliability = Reliability::from_code(flags & FLAG_REL_MASK)
            .ok_or(Error::Decode("bad reliability"))?;
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let vi_number = word(4);
        let psn = word(8);
        if vi_number == 0 || vi_number > MAX_24BIT {
            return Err(Error::Decode("VI number out of range"));
        }
        if psn > MAX_24BIT {
            return Err(Error::Decode("PSN out of range"));
        }
        if b[14] != 0 || b[15] != 0 || b[44..48] != [0; 4] {
            return Err(Error::Decode("reserved bytes set"));
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[16..32]);
        if gid == [0; 16] {
            return Err(Error::Decode("zero GID"));
        }
        Ok(ViAddress {
            interconnect: b[1],
            vi_number,
            gid: Gid(gid),
            psn,
            mtu,
            reliability,
            rdma_write: flags & FLAG_WRITE != 0,
            rdma_read: flags & FLAG_READ != 0,
            credits: u16::from_le_bytes([b[12], b[13]]),
            mailbox: RemoteAddr {
                addr: u64::from_le_bytes([b[32], b[33], b[34], b[35], b[36], b[37], b[38], b[39]]),
                rkey: word(40),
            },
        })
    }

    /// The verbs endpoint (QPN, PSN, GID, MTU) of this address.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            gid: self.gid,
            qpn: self.vi_number,
            psn: self.psn,
            mtu: self.mtu,
        }
    }
}

/// Most addresses in one batch.
pub const MAX_BATCH: usize = u16::MAX as usize;

/// Appends a batch (u16 LE count, then the addresses) to `out`.
pub fn encode_batch(addrs: &[ViAddress], out: &mut Vec<u8>) -> Result<()> {
    if addrs.len() > MAX_BATCH {
        return Err(Error::InvalidArgument(
            "more than 65535 addresses in a batch",
        ));
    }
    out.reserve(2 + addrs.len() * ViAddress::ENCODED_LEN);
    out.extend_from_slice(&(addrs.len() as u16).to_le_bytes());
    for a in addrs {
        out.extend_from_slice(&a.encode());
    }
    Ok(())
}

/// Decodes a whole batch; the length must match the count exactly.
pub fn decode_batch(b: &[u8]) -> Result<Vec<ViAddress>> {
    if b.len() < 2 {
        return Err(Error::Decode("batch shorter than its count"));
    }
    let n = u16::from_le_bytes([b[0], b[1]]) as usize;
    let body = &b[2..];
    if body.len() != n * ViAddress::ENCODED_LEN {
        return Err(Error::Decode("batch length does not match its count"));
    }
    body.chunks_exact(ViAddress::ENCODED_LEN)
        .map(ViAddress::decode)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn addr(i: u32) -> ViAddress {
        ViAddress {
            interconnect: 1,
            vi_number: 0x11 + i,
            gid: Gid::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2))),
            psn: 0xabcdef ^ i,
            mtu: Mtu::Mtu1024,
            reliability: Reliability::ReliableDelivery,
            rdma_write: i % 2 == 0,
            rdma_read: i % 3 == 0,
            credits: 64,
            mailbox: RemoteAddr {
                addr: 0x7f00_1234_5000 + i as u64,
                rkey: 0xabcd_0000 | i,
            },
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let a = addr(0);
        let b = a.encode();
        assert_eq!(b.len(), 48);
        assert_eq!(&b[32..40], &0x7f00_1234_5000u64.to_le_bytes());
        assert_eq!(&b[40..44], &0xabcd_0000u32.to_le_bytes());
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 1);
        assert_eq!(b[2], 3);
        assert_eq!(b[3], 0b1101);
        assert_eq!(&b[4..8], &[0x11, 0, 0, 0]);
        assert_eq!(&b[12..14], &[64, 0]);
        assert_eq!(&b[16..32], &a.gid.0);
        assert_eq!(ViAddress::decode(&b), Ok(a));
        assert_eq!(a.endpoint().qpn, 0x11);
        assert_eq!(a.endpoint().psn, 0xabcdef);
    }

    #[test]
    fn rejects_each_bad_field() {
        let good = addr(0).encode();
        let bad = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            ViAddress::decode(&b)
        };
        assert_eq!(bad(0, 2), Err(Error::Decode("unknown version")));
        assert_eq!(bad(2, 0), Err(Error::Decode("bad MTU")));
        assert_eq!(bad(2, 6), Err(Error::Decode("bad MTU")));
        assert_eq!(bad(3, 0x10), Err(Error::Decode("unknown flags")));
        assert_eq!(bad(3, 3), Err(Error::Decode("bad reliability")));
        assert_eq!(bad(3, 0).unwrap().reliability, Reliability::Unreliable);
        assert_eq!(bad(7, 1), Err(Error::Decode("VI number out of range")));
        assert_eq!(bad(11, 1), Err(Error::Decode("PSN out of range")));
        assert_eq!(bad(14, 1), Err(Error::Decode("reserved bytes set")));
        assert_eq!(bad(47, 1), Err(Error::Decode("reserved bytes set")));
        let mut b = good;
        b[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(
            ViAddress::decode(&b),
            Err(Error::Decode("VI number out of range"))
        );
        let mut b = good;
        b[16..32].copy_from_slice(&[0; 16]);
        assert_eq!(ViAddress::decode(&b), Err(Error::Decode("zero GID")));
        assert_eq!(
            ViAddress::decode(&good[..47]),
            Err(Error::Decode("wrong length"))
        );
        assert_eq!(ViAddress::decode(&[]), Err(Error::Decode("wrong length")));
    }

    #[test]
    fn batch_round_trip_and_checks() {
        let addrs: Vec<ViAddress> = (0..300).map(addr).collect();
        let mut out = Vec::new();
        encode_batch(&addrs, &mut out).unwrap();
        assert_eq!(out.len(), 2 + 300 * 48);
        assert_eq!(decode_batch(&out).unwrap(), addrs);
        assert!(decode_batch(&out[..out.len() - 1]).is_err());
        assert!(decode_batch(&[]).is_err());
        assert!(decode_batch(&[1]).is_err());
        let mut longer = out.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err());
        let mut empty = Vec::new();
        encode_batch(&[], &mut empty).unwrap();
        assert_eq!(decode_batch(&empty).unwrap(), vec![]);
        // One corrupted entry fails the batch.
        let mut bad = out.clone();
        bad[2 + 5 * 48] = 9;
        assert!(decode_batch(&bad).is_err());
    }

    #[test]
    fn hostile_bytes_never_panic_and_valid_ones_round_trip() {
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut decoded = 0;
        for round in 0..50_000u32 {
            let len = (round % 56) as usize;
            let mut buf = [0u8; 56];
            for byte in buf.iter_mut().take(len) {
                *byte = next() as u8;
            }
            if len == 48 && round % 2 == 0 {
                // Make the structured fields plausible half the time so decoding gets deep.
                buf[0] = 1;
                buf[2] = 1 + (buf[2] % 5);
                buf[3] &= 0b1101;
                buf[3] |= 1;
                buf[7] = 0;
                buf[11] = 0;
                buf[14] = 0;
                buf[15] = 0;
                buf[44..48].copy_from_slice(&[0; 4]);
            }
            if let Ok(a) = ViAddress::decode(&buf[..len]) {
                assert_eq!(a.encode()[..], buf[..len]);
                decoded += 1;
            }
            let _ = decode_batch(&buf[..len]);
        }
        assert!(decoded > 400, "only {decoded} plausible inputs decoded");
    }
}
