//! The gRPC health protocol's two messages (`grpc/health/v1/health.proto`),
//! encoded and decoded by hand: a few bytes, not worth a protobuf crate.
//!
//! ```text
//! message HealthCheckRequest { string service = 1; }
//! message HealthCheckResponse { ServingStatus status = 1; }  // SERVING = 1
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// `HealthCheckResponse.status` values.
pub const SERVING: u64 = 1;
pub const NAMES: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/// The request as one gRPC message: the 5-byte prefix (uncompressed,
/// length), then `HealthCheckRequest { service }`.
pub fn request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

/// The `status` of the one `HealthCheckResponse` in a response body (its
/// absence is 0, UNKNOWN, as proto3 has it).
pub fn status(body: &[u8]) -> Result<u64, &'static str> {
    let [flag, a, b, c, d, msg @ ..] = body else {
        return Err("no message");
    };
    if *flag != 0 {
        return Err("compressed message");
    }
    if u32::from_be_bytes([*a, *b, *c, *d]) as usize != msg.len() {
        return Err("message length does not match the body");
    }
    let mut rest = msg;
    let mut status = 0;
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut rest)?,
            (_, 0) => {
                varint(&mut rest)?;
            }
            (_, 1) => rest = rest.get(8..).ok_or("truncated")?,
            (_, 2) => {
                let n = usize::try_from(varint(&mut rest)?).map_err(|_| "truncated")?;
                rest = rest.get(n..).ok_or("truncated")?;
            }
            (_, 5) => rest = rest.get(4..).ok_or("truncated")?,
            _ => return Err("bad wire type"),
        }
    }
    Ok(status)
}

fn put_varint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8(n as u8 | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn varint(buf: &mut &[u8]) -> Result<u64, &'static str> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated")?;
        *buf = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("varint too long")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encodes_the_service() {
        assert_eq!(&request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let long = "x".repeat(200);
        let r = request(&long);
        assert_eq!(&r[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn response_status_decodes() {
        assert_eq!(status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(SERVING));
        assert_eq!(status(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        assert_eq!(status(&[0, 0, 0, 0, 0]), Ok(0));
        // Unknown fields are skipped.
        assert_eq!(
            status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Ok(SERVING)
        );
        assert!(status(&[0, 0, 0, 0, 2, 0x08]).is_err());
        assert!(status(&[0, 0, 0, 0, 1, 0x08, 1]).is_err());
        assert!(status(&[1, 0, 0, 0, 2, 0x08, 1]).is_err());
        assert!(status(&[]).is_err());
        assert!(status(&[0, 0, 0, 0, 2, 0x0b, 1]).is_err());
    }
}
