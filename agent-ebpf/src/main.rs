//! sonde's kernel half: syscall tracepoints that copy socket payload and
//! classify TCP connections. See ARCHITECTURE.md, "Kernel side".
//!
//! Only tracepoints are required. `kernel_io.rs` adds optional kprobes for
//! io_uring where the kernel has them. The programs of `optional.rs`
//! (kprobe, fentry, uprobe, sk_msg) exist so `sonde doctor` can test what
//! the running kernel allows.
#![no_std]
#![no_main]

mod capture;
mod conn;
mod ctx;
mod filter;
mod goroutine;
mod inject;
mod kernel_io;
mod maps;
mod optional;
mod pipe;
mod proc;
mod python;
mod tick;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in practice: the programs avoid panicking paths, and the
    // verifier would reject any reachable infinite loop.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
