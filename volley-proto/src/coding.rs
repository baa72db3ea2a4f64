//! Bounds-checked reading and writing of wire fields.
//!
//! Every read from untrusted bytes goes through [`Reader`], which never panics: a short buffer is a
//! [`DecodeError::Truncated`]. Writing goes into a caller-owned slice through [`Writer`]; running out
//! of room is [`EncodeError::BufferTooSmall`]. All integers are big-endian (network order) except
//! where `docs/PROTOCOL.md` says otherwise (the AEAD nonce).

use thiserror::Error;

/// Why a datagram could not be decoded. The caller drops the datagram and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The datagram ended before a field did.
    #[error("datagram truncated")]
    Truncated,
    /// The first byte is not a protocol version this implementation speaks.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The type byte names no known message.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The datagram is longer than [`crate::MAX_DATAGRAM_LEN`].
    #[error("datagram too long")]
    TooLong,
    /// A length field is out of its allowed range, or bytes trail a fixed-size message.
    #[error("length field out of range")]
    BadLength,
    /// A PROBE shorter than [`crate::PROBE_MIN_LEN`] (anti-amplification).
    #[error("probe below minimum size")]
    ProbeTooShort,
}

/// Why a message could not be encoded. This is a caller bug (buffer too small or field too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer cannot hold the message.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A variable-length field exceeds its wire limit.
    #[error("field exceeds its limit")]
    FieldTooLong,
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes exactly `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Takes one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Takes a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Takes a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Takes a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Takes a u8 length prefix and that many bytes; the length must be within `min..=max`.
    pub fn vec8(&mut self, min: usize, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u8()?);
        if len < min || len > max {
            return Err(DecodeError::BadLength);
        }
        self.bytes(len)
    }

    /// Takes a u16 length prefix and that many bytes; the length must be within `min..=max`.
    pub fn vec16(&mut self, min: usize, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len < min || len > max {
            return Err(DecodeError::BadLength);
        }
        self.bytes(len)
    }

    /// Takes everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::BadLength)
        }
    }
}

/// A cursor writing into a caller-owned slice.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`.
    pub fn bytes(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let end = self
            .len
            .checked_add(data.len())
            .ok_or(EncodeError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or(EncodeError::BufferTooSmall)?;
        dst.copy_from_slice(data);
        self.len = end;
        Ok(())
    }

    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) -> Result<(), EncodeError> {
        let end = self.len.checked_add(n).ok_or(EncodeError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or(EncodeError::BufferTooSmall)?;
        dst.fill(0);
        self.len = end;
        Ok(())
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends a u8 length prefix and `data` (at most `max` bytes).
    pub fn vec8(&mut self, data: &[u8], max: usize) -> Result<(), EncodeError> {
        if data.len() > max || data.len() > usize::from(u8::MAX) {
            return Err(EncodeError::FieldTooLong);
        }
        self.u8(data.len() as u8)?;
        self.bytes(data)
    }

    /// Appends a u16 length prefix and `data` (at most `max` bytes).
    pub fn vec16(&mut self, data: &[u8], max: usize) -> Result<(), EncodeError> {
        if data.len() > max || data.len() > usize::from(u16::MAX) {
            return Err(EncodeError::FieldTooLong);
        }
        self.u16(data.len() as u16)?;
        self.bytes(data)
    }

    /// The unwritten tail, for in-place writers (Noise, AEAD).
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Marks `n` bytes of [`Writer::spare`] as written.
    pub fn advance(&mut self, n: usize) -> Result<(), EncodeError> {
        let end = self.len.checked_add(n).ok_or(EncodeError::BufferTooSmall)?;
        if end > self.buf.len() {
            return Err(EncodeError::BufferTooSmall);
        }
        self.len = end;
        Ok(())
    }

    /// Everything written so far.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_reads_past_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u16(), Err(DecodeError::Truncated));
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.u8(), Err(DecodeError::Truncated));
    }

    #[test]
    fn vec8_enforces_limits() {
        assert_eq!(
            Reader::new(&[3, 1, 2, 3]).vec8(0, 2),
            Err(DecodeError::BadLength)
        );
        assert_eq!(
            Reader::new(&[3, 1, 2]).vec8(0, 8),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Reader::new(&[2, 1, 2]).vec8(1, 8), Ok(&[1u8, 2][..]));
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf);
        w.u16(7).unwrap();
        assert_eq!(w.u16(7), Err(EncodeError::BufferTooSmall));
        assert_eq!(w.vec8(&[1, 2, 3], 2), Err(EncodeError::FieldTooLong));
        w.u8(9).unwrap();
        assert_eq!(w.written(), &[0, 7, 9]);
    }
}
