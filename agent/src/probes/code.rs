//! Machine code, read to place uprobes where the kernel traps once.
//!
//! A uprobe replaces an instruction's first byte with a breakpoint. When
//! it is hit, the kernel emulates the instruction if it can (a `call`, a
//! jump, a `push` of a register, a `nop`); any other one it copies out of
//! line and single-steps, a second trap. In a VM each trap is costly (on
//! this project's VM, removing the single-step from the goroutine probes
//! let a Go service serve about 2.5 times the requests), so the probes go,
//! where the code allows it, on instructions the kernel emulates: the Go
//! runtime's calls (`goruntime.rs`), and OpenSSL's internal read and write
//! functions, which open with `push` where the public ones open with `sub`
//! (`tls.rs`).
//!
//! Each finder wants one exact shape and returns None for anything else:
//! a probe must sit on an instruction's first byte, and on the instruction
//! its program is written for. The caller then keeps the probe where it
//! always was.
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// The offset in `code` (a function at address `at`) of its only direct
/// call of `target`. None if there is none, or more than one, or the bytes
/// do not decode.
pub fn call_site(code: &[u8], at: u64, target: u64) -> Option<u64> {
    match call_sites(code, at, target)?.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// The offsets in `code` (a function at address `at`) of all its direct
/// calls of `target`, in order. None if the bytes do not decode.
pub fn call_sites(code: &[u8], at: u64, target: u64) -> Option<Vec<u64>> {
    instructions(code, at)
        .filter_map(|i| match i {
            Some(i) if direct_call(&i) == Some(target) => Some(Some(i.ip() - at)),
            Some(_) => None,
            None => Some(None),
        })
        .collect()
}

/// The function that `code` (a function at address `at`) wraps, if it is a
/// thin wrapper: its first call, direct, comes before any jump and after
/// nothing but a stack frame's setup, so the callee gets the wrapper's own
/// arguments (no argument register is touched), and no other call or jump
/// follows before its `ret`. OpenSSL 3's `SSL_read_ex` is one: it returns
/// what `ssl_read_internal(s, buf, num, readbytes)` does, clamped at 0.
pub fn wrapped(code: &[u8], at: u64) -> Option<u64> {
    let mut callee = None;
    for i in instructions(code, at) {
        let i = i?;
        match (callee, direct_call(&i)) {
            (None, Some(target)) => callee = Some(target),
            (None, None) if frame_setup(&i) => {}
            (None, None) => return None,
            (Some(_), _) if i.mnemonic() == Mnemonic::Ret => return callee,
            (Some(_), _) if branches(&i) => return None,
            (Some(_), _) => {}
        }
    }
    // No `ret`: cut short, or not this shape.
    None
}

/// The offset in `code` (a Go function, register ABI on amd64) of its
/// stack check's conditional jump, the first instruction the kernel
/// emulates: `cmp rsp, [r14+16]` (or, for a large frame, `lea r12,
/// [rsp-n]` and `cmp r12, [r14+16]`; or `mov r12, rsp` and `sub r12, n`),
/// then `jbe` (or `jb`) to `morestack`. Nothing before it touches an
/// argument register or R14 (the `g`), so a probe there reads what one at
/// the entry would. None for any other prologue (a function without a
/// stack check).
pub fn stack_check(code: &[u8]) -> Option<u64> {
    for (n, i) in instructions(code, 0).enumerate() {
        let i = i?;
        if n > 3 {
            return None;
        }
        match i.mnemonic() {
            Mnemonic::Jbe | Mnemonic::Jb if n > 0 => return Some(i.ip()),
            Mnemonic::Cmp
                if i.op0_kind() == OpKind::Register
                    && matches!(i.op0_register(), Register::RSP | Register::R12)
                    && i.op1_kind() == OpKind::Memory
                    && i.memory_base() == Register::R14 => {}
            Mnemonic::Lea
                if i.op0_register() == Register::R12 && i.memory_base() == Register::RSP => {}
            Mnemonic::Mov
                if i.op0_kind() == OpKind::Register
                    && i.op0_register() == Register::R12
                    && i.op1_kind() == OpKind::Register
                    && i.op1_register() == Register::RSP => {}
            Mnemonic::Sub
                if i.op0_kind() == OpKind::Register
                    && i.op0_register() == Register::R12
                    && matches!(
                        i.op1_kind(),
                        OpKind::Immediate8to64 | OpKind::Immediate32to64
                    ) => {}
            _ => return None,
        }
    }
    None
}

/// Whether the first instruction of `code` is one the kernel emulates at
/// a uprobe: a `push` of a 64-bit register (the kernels this project
/// measures on do; one that does not single-steps it, as it does the
/// instruction the probe would otherwise sit on, so nothing is lost).
pub fn opens_with_push(code: &[u8]) -> bool {
    let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return false;
    }
    let i = decoder.decode();
    !i.is_invalid() && i.code() == Code::Push_r64
}

/// The instructions of `code`, decoded from address `at`; an `Err` (and
/// the end) at the first bytes that do not decode.
fn instructions(code: &[u8], at: u64) -> impl Iterator<Item = Option<Instruction>> + '_ {
    let mut decoder = Decoder::with_ip(64, code, at, DecoderOptions::NONE);
    let mut bad = false;
    std::iter::from_fn(move || {
        if bad || !decoder.can_decode() {
            return None;
        }
        let i = decoder.decode();
        if i.is_invalid() {
            bad = true;
            return Some(None);
        }
        Some(Some(i))
    })
}

/// The target of a direct near call.
fn direct_call(i: &Instruction) -> Option<u64> {
    (i.mnemonic() == Mnemonic::Call && i.op0_kind() == OpKind::NearBranch64)
        .then(|| i.near_branch_target())
}

/// An instruction a function may open with that leaves its arguments as
/// they came: `endbr64`, a `nop`, a `push` of a callee-saved register,
/// `mov rbp, rsp` or `sub rsp, imm`.
fn frame_setup(i: &Instruction) -> bool {
    match i.mnemonic() {
        Mnemonic::Endbr64 | Mnemonic::Nop => true,
        Mnemonic::Push => {
            i.op0_kind() == OpKind::Register
                && matches!(
                    i.op0_register(),
                    Register::RBX
                        | Register::RBP
                        | Register::R12
                        | Register::R13
                        | Register::R14
                        | Register::R15
                )
        }
        // `mov rbp, rsp`, a frame pointer's.
        Mnemonic::Mov => {
            i.op0_kind() == OpKind::Register
                && i.op0_register() == Register::RBP
                && i.op1_kind() == OpKind::Register
                && i.op1_register() == Register::RSP
        }
        Mnemonic::Sub => {
            i.op0_kind() == OpKind::Register
                && i.op0_register() == Register::RSP
                && matches!(
                    i.op1_kind(),
                    OpKind::Immediate8to64 | OpKind::Immediate32to64
                )
        }
        _ => false,
    }
}

/// Whether control may leave the straight line: a call, a jump of any
/// kind, a return, a trap.
fn branches(i: &Instruction) -> bool {
    matches!(
        i.op0_kind(),
        OpKind::NearBranch16
            | OpKind::NearBranch32
            | OpKind::NearBranch64
            | OpKind::FarBranch16
            | OpKind::FarBranch32
    ) || matches!(
        i.mnemonic(),
        Mnemonic::Call
            | Mnemonic::Jmp
            | Mnemonic::Ret
            | Mnemonic::Retf
            | Mnemonic::Int
            | Mnemonic::Int1
            | Mnemonic::Int3
            | Mnemonic::Into
            | Mnemonic::Iret
            | Mnemonic::Iretd
            | Mnemonic::Iretq
            | Mnemonic::Syscall
            | Mnemonic::Sysenter
            | Mnemonic::Ud0
            | Mnemonic::Ud1
            | Mnemonic::Ud2
            | Mnemonic::Hlt
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runtime.newproc.func1` as go1.19 built it for amd64 (at 0x441760),
    /// calling `runtime.newproc1` (0x4417e0), `runtime.runqput` (0x4458e0),
    /// `runtime.wakep` (0x43d920) and `runtime.morestack` (0x463840).
    const NEWPROC_FUNC1: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, 0x76, 0x57, 0x48, 0x83, 0xec, 0x20, 0x48, 0x89, 0x6c, 0x24, 0x18,
        0x48, 0x8d, 0x6c, 0x24, 0x18, 0x48, 0x8b, 0x5a, 0x10, 0x48, 0x8b, 0x4a, 0x18, 0x48, 0x8b,
        0x42, 0x08, 0xe8, 0x5b, 0x00, 0x00, 0x00, 0x49, 0x8b, 0x56, 0x30, 0x48, 0x8b, 0x92, 0xd0,
        0x00, 0x00, 0x00, 0x48, 0x89, 0xc3, 0xb9, 0x01, 0x00, 0x00, 0x00, 0x48, 0x89, 0xd0, 0x0f,
        0x1f, 0x44, 0x00, 0x00, 0xe8, 0x3b, 0x41, 0x00, 0x00, 0x80, 0x3d, 0xf6, 0xc4, 0x4a, 0x00,
        0x00, 0x74, 0x05, 0xe8, 0x6d, 0xc1, 0xff, 0xff, 0x48, 0x8b, 0x6c, 0x24, 0x18, 0x48, 0x83,
        0xc4, 0x20, 0xc3, 0x0f, 0x1f, 0x00, 0xe8, 0x7b, 0x20, 0x02, 0x00, 0xeb, 0x99,
    ];

    #[test]
    fn finds_the_one_call_of_runqput() {
        let at = 0x441760;
        assert_eq!(call_site(NEWPROC_FUNC1, at, 0x4458e0), Some(0x40));
        assert_eq!(call_site(NEWPROC_FUNC1, at, 0x4417e0), Some(0x20));
        // A function it does not call, or calls twice: no site.
        assert_eq!(call_site(NEWPROC_FUNC1, at, 0x400000), None);
        let twice = [NEWPROC_FUNC1, &[0xe8, 0x14, 0x41, 0x00, 0x00]].concat();
        assert_eq!(call_site(&twice, at, 0x4458e0), None);
        // Cut anywhere, the bytes never panic, and never yield an offset
        // that is not the call's.
        for n in 0..NEWPROC_FUNC1.len() {
            let got = call_site(&NEWPROC_FUNC1[..n], at, 0x4458e0);
            assert!(got.is_none() || got == Some(0x40), "cut at {n}: {got:?}");
        }
    }

    #[test]
    fn finds_every_call_of_a_callee() {
        let at = 0x441760;
        assert_eq!(call_sites(NEWPROC_FUNC1, at, 0x4458e0), Some(vec![0x40]));
        assert_eq!(call_sites(NEWPROC_FUNC1, at, 0x400000), Some(vec![]));
        // A second call of runqput, appended: `e8` with a displacement
        // that lands on it from the end of the function.
        let end = NEWPROC_FUNC1.len() as u64;
        let rel = (0x4458e0 - (at + end + 5)) as u32;
        let twice = [NEWPROC_FUNC1, &[0xe8], &rel.to_le_bytes()].concat();
        assert_eq!(call_sites(&twice, at, 0x4458e0), Some(vec![0x40, end]));
        // Cut anywhere: never a panic; either no answer, or the calls
        // wholly within the cut.
        for n in 0..twice.len() {
            match call_sites(&twice[..n], at, 0x4458e0) {
                None => {}
                Some(v) => assert!(v.iter().all(|&o| o + 5 <= n as u64), "cut at {n}: {v:?}"),
            }
        }
    }

    /// OpenSSL 3.0's `SSL_read_ex` as Debian built it (at 0x354c0), calling
    /// `ssl_read_internal` at 0x35290: `sub rsp,8; call; xor edx,edx;
    /// test eax,eax; cmovs eax,edx; add rsp,8; xor edx,edx; xor ecx,ecx;
    /// xor esi,esi; xor edi,edi; ret`.
    const SSL_READ_EX: &[u8] = &[
        0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2, 0x85, 0xc0, 0x0f, 0x48,
        0xc2, 0x48, 0x83, 0xc4, 0x08, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff, 0xc3,
    ];

    #[test]
    fn finds_the_function_a_thin_wrapper_calls() {
        assert_eq!(wrapped(SSL_READ_EX, 0x354c0), Some(0x35290));
        // With `endbr64` and a push before the frame: the same.
        let cet = [&[0xf3, 0x0f, 0x1e, 0xfa, 0x53][..], SSL_READ_EX].concat();
        assert_eq!(wrapped(&cet, 0x354c0 - 5), Some(0x35290));
        // A frame pointer's setup (`push rbp; mov rbp,rsp`, as the libssl
        // MySQL's connector bundles): the same.
        let framed = [&[0x55, 0x48, 0x89, 0xe5][..], SSL_READ_EX].concat();
        assert_eq!(wrapped(&framed, 0x354c0 - 4), Some(0x35290));
        // An argument changed before the call (`xor ecx,ecx`, as OpenSSL
        // 3.3's `SSL_write_ex` passes a flags argument): not a wrapper.
        let moved = [&[0x31, 0xc9][..], SSL_READ_EX].concat();
        assert_eq!(wrapped(&moved, 0x354c0 - 2), None);
        // A jump before the call, or a second call after it: not one either.
        let jumps = [&[0x74, 0x00][..], SSL_READ_EX].concat();
        assert_eq!(wrapped(&jumps, 0x354c0 - 2), None);
        let mut twice = SSL_READ_EX[..SSL_READ_EX.len() - 1].to_vec();
        twice.extend_from_slice(&[0xe8, 0, 0, 0, 0, 0xc3]);
        assert_eq!(wrapped(&twice, 0x354c0), None);
        // Cut before its `ret`, or anywhere: never a panic, never a callee.
        for n in 0..SSL_READ_EX.len() {
            assert_eq!(wrapped(&SSL_READ_EX[..n], 0x354c0), None, "cut at {n}");
        }
        assert_eq!(wrapped(b"\xff\xff\xff\xff", 0), None);
    }

    /// OpenSSL 3.3's write pair, from psycopg's wheel (at 0x3c5c0):
    /// `SSL_write_ex2` wraps `ssl_write_internal` (0x3c1f0) with all five
    /// arguments; `SSL_write_ex` moves its count pointer past a new flags
    /// argument and jumps to it.
    const SSL_WRITE_EX2: &[u8] = &[
        0x48, 0x83, 0xec, 0x08, 0xe8, 0x27, 0xfc, 0xff, 0xff, 0xba, 0x00, 0x00, 0x00, 0x00, 0x85,
        0xc0, 0x0f, 0x48, 0xc2, 0x48, 0x83, 0xc4, 0x08, 0xc3,
    ];
    const SSL_WRITE_EX_3_3: &[u8] = &[0x49, 0x89, 0xc8, 0x31, 0xc9, 0xe9, 0xd6, 0xff, 0xff, 0xff];

    #[test]
    fn openssl_3_3_writes() {
        assert_eq!(wrapped(SSL_WRITE_EX2, 0x3c5c0), Some(0x3c1f0));
        assert_eq!(wrapped(SSL_WRITE_EX_3_3, 0x3c5e0), None);
    }

    #[test]
    fn finds_a_go_stack_checks_jump() {
        // go1.19's `crypto/tls.(*Conn).Read`: `cmp rsp,[r14+0x10]; jbe`.
        let read = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xc2, 0x03, 0x00, 0x00, 0x48, 0x83, 0xec, 0x68,
        ];
        assert_eq!(stack_check(&read), Some(4));
        // Its `(*Conn).Write`, a large frame: `lea r12,[rsp-0x68]; cmp
        // r12,[r14+0x10]; jbe`.
        let write = [
            0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x64, 0x07, 0x00,
            0x00, 0x48, 0x81, 0xec, 0xe8, 0x00, 0x00, 0x00,
        ];
        assert_eq!(stack_check(&write), Some(9));
        // `runtime.newproc.func1` opens the same way, with a short jump.
        assert_eq!(stack_check(NEWPROC_FUNC1), Some(4));
        // No stack check (a leaf, or not Go), a jump first, an argument
        // register written first: no site. Cut anywhere: no panic, and
        // never another offset.
        assert_eq!(stack_check(SSL_READ_EX), None);
        assert_eq!(stack_check(&[0x76, 0x00]), None);
        let writes_rax = [&[0x31, 0xc0][..], &read].concat();
        assert_eq!(stack_check(&writes_rax), None);
        for n in 0..write.len() {
            let got = stack_check(&write[..n]);
            assert!(got.is_none() || got == Some(9), "cut at {n}: {got:?}");
        }
    }

    #[test]
    fn a_push_opens_what_the_kernel_emulates() {
        // `push r13` (ssl_read_internal), `push rbx`.
        assert!(opens_with_push(&[0x41, 0x55, 0x41, 0x54]));
        assert!(opens_with_push(&[0x53]));
        // `sub rsp,0x18` (SSL_read), `endbr64`, nothing, garbage.
        assert!(!opens_with_push(&[0x48, 0x83, 0xec, 0x18]));
        assert!(!opens_with_push(&[0xf3, 0x0f, 0x1e, 0xfa]));
        assert!(!opens_with_push(&[]));
        assert!(!opens_with_push(&[0x41]));
    }
}
