//! The `ring_record` target: the decoder of raw ring-buffer records, which
//! trusts nothing about the bytes the kernel (or a torn read) hands it.
use sonde::event::{decode, KernelEvent};
use sonde_common as common;

/// Decodes `bytes`; a decoded data record's payload must be the bytes that
/// follow its header, exactly as many as it claims.
pub fn check(bytes: &[u8]) {
    if let Ok(KernelEvent::Data(d)) = decode(bytes) {
        let rest = &bytes[common::DATA_EVENT_SIZE..];
        assert!(d.payload.len() <= rest.len(), "payload longer than the record");
        assert_eq!(d.payload[..], rest[..d.payload.len()], "payload is not the record's tail");
    }
}

/// The raw bytes of a kernel struct, as the ring buffer carries them.
pub fn pod_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the sonde-common records are repr(C) plain old data with
    // explicit padding fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }.to_vec()
}

/// A data record carrying `payload`, as the kernel would write it.
pub fn data_record(syscall: u8, direction: u8, role: u8, payload: &[u8], moved: i64) -> Vec<u8> {
    let ev = common::DataEvent {
        hdr: common::EventHeader { kind: common::kind::DATA, tgid: 4242, tid: 4243, fd: 7, ts_ns: 2_000, comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0", ..Default::default() },
        enter_ns: 1_000,
        bytes: moved,
        syscall,
        direction,
        role,
        flags: if moved > payload.len() as i64 { common::data_flags::TRUNCATED } else { 0 },
        captured: payload.len() as u32,
        tick: 9,
        task: 0,
        lineage: Default::default(),
        py_task: 0,
        _pad: 0,
    };
    let mut b = pod_bytes(&ev);
    b.extend_from_slice(payload);
    b
}

/// A connection record of `kind` with a v4 or v6 tuple.
pub fn conn_record(kind: u8, v6: bool, flags: u16) -> Vec<u8> {
    let mut tuple = common::Tuple { family: if v6 { 10 } else { 2 }, lport: 8080, rport: 40000, ..Default::default() };
    if v6 {
        tuple.laddr[15] = 1;
        tuple.raddr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 9]);
    } else {
        tuple.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.raddr[..4].copy_from_slice(&[10, 0, 0, 9]);
    }
    let ev = common::ConnEvent {
        hdr: common::EventHeader { kind, tgid: 4242, tid: 4242, fd: 5, ts_ns: 3_000, ..Default::default() },
        enter_ns: 2_500,
        ret: 6,
        tuple,
        flags,
        role: common::role::SERVER,
        aux: 3,
        ..Default::default()
    };
    pod_bytes(&ev)
}
