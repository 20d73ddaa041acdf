//! AMQP frames, per direction: a 7-byte header (type, channel, size), the
//! payload, and the frame-end octet. Payloads are kept up to `KEEP` bytes;
//! gaps in the capture are skipped by count inside a payload only.
use super::super::SegTime;

pub(super) const FRAME_METHOD: u8 = 1;
pub(super) const FRAME_HEADER: u8 = 2;
pub(super) const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
/// Method and header payloads kept for decoding; bodies keep a prefix.
pub(super) const KEEP: usize = 64 * 1024;
const MAX_FRAME: u32 = 1 << 28;

#[derive(Debug)]
pub(super) struct Frame {
    pub(super) kind: u8,
    pub(super) channel: u16,
    pub(super) payload: Vec<u8>,
    pub(super) size: u32,
    pub(super) first: SegTime,
    pub(super) last: SegTime,
}

#[derive(Default)]
pub(super) struct Framer {
    skip_header: usize,
    hdr: Vec<u8>,
    /// Payload bytes + the frame-end byte still to come.
    remaining: u64,
    cur: Option<Frame>,
    pub(super) lost: bool,
}

impl Framer {
    /// A framer that first skips a protocol header of `len` bytes.
    pub(super) fn after_header(len: usize) -> Framer {
        Framer {
            skip_header: len,
            ..Default::default()
        }
    }

    /// A framer that lost its place: it reads nothing more.
    pub(super) fn lost() -> Framer {
        Framer {
            lost: true,
            ..Default::default()
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.hdr.capacity() + self.cur.as_ref().map_or(0, |f| f.payload.capacity())
    }

    pub(super) fn feed(
        &mut self,
        mut data: &[u8],
        t: SegTime,
        out: &mut Vec<Frame>,
    ) -> Result<(), ()> {
        while !data.is_empty() {
            if self.skip_header > 0 {
                let n = self.skip_header.min(data.len());
                self.skip_header -= n;
                data = &data[n..];
                continue;
            }
            if let Some(f) = self.cur.as_mut() {
                let n = self.remaining.min(data.len() as u64) as usize;
                // The last of `remaining` is the frame-end octet.
                let payload_left = self.remaining.saturating_sub(1) as usize;
                let take = n.min(payload_left);
                let room = KEEP.saturating_sub(f.payload.len());
                f.payload.extend_from_slice(&data[..take.min(room)]);
                f.last = t;
                if n > payload_left && data[payload_left] != FRAME_END {
                    return Err(());
                }
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    out.extend(self.cur.take());
                }
                continue;
            }
            let n = (7 - self.hdr.len()).min(data.len());
            self.hdr.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.hdr.len() < 7 {
                return Ok(());
            }
            let kind = self.hdr[0];
            let channel = u16::from_be_bytes([self.hdr[1], self.hdr[2]]);
            let size = u32::from_be_bytes(self.hdr[3..7].try_into().expect("4"));
            self.hdr.clear();
            if !matches!(kind, 1 | 2 | 3 | 8) || size > MAX_FRAME {
                return Err(());
            }
            self.remaining = size as u64 + 1;
            self.cur = Some(Frame {
                kind,
                channel,
                payload: vec![],
                size,
                first: t,
                last: t,
            });
        }
        Ok(())
    }

    pub(super) fn skip(&mut self, gap: u64, out: &mut Vec<Frame>) -> bool {
        if gap == 0 {
            return true;
        }
        // Only payload bytes can be skipped; the frame-end must be seen... or
        // be the last byte of the gap, which we then trust.
        if self.cur.is_some() && self.remaining >= gap {
            self.remaining -= gap;
            if self.remaining == 0 {
                out.extend(self.cur.take());
            }
            return true;
        }
        false
    }
}
