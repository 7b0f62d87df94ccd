//! The minidump container: the `MDMP` header, the stream directory, and an append-only
//! body in which every blob gets an RVA (offset) that streams refer to. Little endian, as
//! every minidump is.

/// 'MDMP' read as a little-endian u32.
pub const SIGNATURE: u32 = 0x504d_444d;
/// MINIDUMP_VERSION (breakpad writes the same).
pub const VERSION: u32 = 0xa793;
const HEADER_SIZE: usize = 32;
const DIRECTORY_ENTRY_SIZE: usize = 12;

/// Where a blob lives in the file: MINIDUMP_LOCATION_DESCRIPTOR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    pub size: u32,
    pub rva: u32,
}

impl Location {
    pub fn put(&self, out: &mut Vec<u8>) {
        put_u32(out, self.size);
        put_u32(out, self.rva);
    }
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Lengths larger than a minidump can address become this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "minidump would exceed 4 GiB")
    }
}

/// Builds a minidump with a fixed number of directory slots.
pub struct Builder {
    buf: Vec<u8>,
    directory: Vec<(u32, Location)>,
    slots: usize,
    time: u32,
}

impl Builder {
    /// Reserves the header and `slots` directory entries; `time` is the crash's Unix time.
    pub fn new(slots: usize, time: u32) -> Builder {
        Builder {
            buf: vec![0; HEADER_SIZE + slots * DIRECTORY_ENTRY_SIZE],
            directory: Vec::with_capacity(slots),
            slots,
            time,
        }
    }

    /// Appends `bytes` at the next 8-byte boundary.
    pub fn append(&mut self, bytes: &[u8]) -> Result<Location, TooLarge> {
        let pad = (8 - self.buf.len() % 8) % 8;
        self.buf.resize(self.buf.len() + pad, 0);
        let rva = u32::try_from(self.buf.len()).map_err(|_| TooLarge)?;
        let size = u32::try_from(bytes.len()).map_err(|_| TooLarge)?;
        u32::try_from(self.buf.len() + bytes.len()).map_err(|_| TooLarge)?;
        self.buf.extend_from_slice(bytes);
        Ok(Location { size, rva })
    }

    /// Appends a MINIDUMP_STRING (byte length, UTF-16LE, NUL) and returns its RVA.
    pub fn append_string(&mut self, text: &str) -> Result<u32, TooLarge> {
        let units: Vec<u16> = text.encode_utf16().collect();
        let mut blob = Vec::with_capacity(4 + units.len() * 2 + 2);
        put_u32(&mut blob, (units.len() * 2) as u32);
        for u in units {
            put_u16(&mut blob, u);
        }
        put_u16(&mut blob, 0);
        Ok(self.append(&blob)?.rva)
    }

    /// Appends a stream and records it in the directory (extra streams past the reserved
    /// slots are dropped; the caller sizes the directory).
    pub fn add_stream(&mut self, stream_type: u32, bytes: &[u8]) -> Result<Location, TooLarge> {
        let loc = self.append(bytes)?;
        if self.directory.len() < self.slots {
            self.directory.push((stream_type, loc));
        }
        Ok(loc)
    }

    /// Writes the header and directory and returns the file.
    pub fn finish(mut self) -> Vec<u8> {
        let mut head = Vec::with_capacity(HEADER_SIZE + self.slots * DIRECTORY_ENTRY_SIZE);
        put_u32(&mut head, SIGNATURE);
        put_u32(&mut head, VERSION);
        put_u32(&mut head, self.directory.len() as u32);
        put_u32(&mut head, HEADER_SIZE as u32);
        put_u32(&mut head, 0); // checksum
        put_u32(&mut head, self.time);
        put_u64(&mut head, 0); // flags
        for (stream_type, loc) in &self.directory {
            put_u32(&mut head, *stream_type);
            loc.put(&mut head);
        }
        // Unused slots stay zero: stream type 0 is UnusedStream.
        self.buf[..head.len()].copy_from_slice(&head);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_header_directory_and_alignment() {
        let mut b = Builder::new(3, 77);
        let s = b.append_string("ab").unwrap();
        let loc = b.add_stream(7, &[1, 2, 3]).unwrap();
        let loc2 = b.add_stream(9, &[4]).unwrap();
        let out = b.finish();
        assert_eq!(&out[..4], b"MDMP");
        assert_eq!(u32::from_le_bytes(out[8..12].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(out[20..24].try_into().unwrap()), 77);
        assert_eq!(s % 8, 0);
        assert_eq!(
            &out[s as usize..s as usize + 10],
            &[4, 0, 0, 0, b'a', 0, b'b', 0, 0, 0]
        );
        assert_eq!(loc.rva % 8, 0);
        assert_eq!((loc.size, loc2.size), (3, 1));
        // Directory entry 0: type 7 at the stream's RVA.
        assert_eq!(u32::from_le_bytes(out[32..36].try_into().unwrap()), 7);
        assert_eq!(u32::from_le_bytes(out[40..44].try_into().unwrap()), loc.rva);
        // The third slot is unused (type 0).
        assert_eq!(&out[56..68], &[0; 12]);
    }
}
