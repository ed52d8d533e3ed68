//! A copy of a body as it streams past, up to a limit, delivered whole when
//! the body ends (`shadow` compares the copies). The stream itself is never
//! held back: a copy that grows past its limit is abandoned, not waited on.

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

/// The copying end; the [`oneshot::Receiver`] gets the bytes at the end, or
/// an error if the body failed, was dropped early or exceeded the limit.
#[derive(Debug)]
pub struct Tee {
    buf: BytesMut,
    limit: usize,
    tx: Option<oneshot::Sender<Bytes>>,
}

impl Tee {
    pub fn new(limit: usize) -> (Tee, oneshot::Receiver<Bytes>) {
        let (tx, rx) = oneshot::channel();
        let tee = Tee {
            buf: BytesMut::new(),
            limit,
            tx: Some(tx),
        };
        (tee, rx)
    }

    /// Copies one data frame.
    pub fn data(&mut self, data: &[u8]) {
        if self.tx.is_none() {
            return;
        }
        if self.buf.len() + data.len() > self.limit {
            self.abandon();
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// The body ended: the copy is delivered (once).
    pub fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(std::mem::take(&mut self.buf).freeze());
        }
    }

    /// The body failed or grew too large: no copy.
    pub fn abandon(&mut self) {
        self.tx = None;
        self.buf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_up_to_the_limit_and_abandons_past_it() {
        let (mut t, mut rx) = Tee::new(4);
        t.data(b"ab");
        t.data(b"cd");
        t.end();
        t.end();
        assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"abcd"));
        let (mut t, mut rx) = Tee::new(4);
        t.data(b"abc");
        t.data(b"de");
        t.end();
        assert!(rx.try_recv().is_err());
        let (t, mut rx) = Tee::new(4);
        drop(t);
        assert!(rx.try_recv().is_err());
    }
}
