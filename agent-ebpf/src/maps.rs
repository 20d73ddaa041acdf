//! Maps and load-time globals. Every hash map that user space cleans is LRU,
//! so an agent that misses a close can never fill it; user space also
//! removes entries on close and process exit. Per-thread state lives in
//! slot arrays (`Slot`) with a hash map for overflow; the kernel frees both
//! at every thread's exit.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sonde_common::{stat, SockInfo, Tuple, DATA_EVENT_SIZE, MAX_CAPTURE};

// Globals, set by user space before load (rodata, so the verifier sees their
// values as constants). Read through `read_volatile` so LLVM does not fold
// the defaults in.
#[unsafe(no_mangle)]
static SONDE_SELF_TGID: u32 = 0;
#[unsafe(no_mangle)]
static SONDE_CAPTURE_SIZE: u32 = sonde_common::DEFAULT_CAPTURE;
#[unsafe(no_mangle)]
static SONDE_FILTER_PIDS: u8 = 0;
#[unsafe(no_mangle)]
static SONDE_FILTER_CGROUPS: u8 = 0;
#[unsafe(no_mangle)]
static SONDE_WAKEUP_BYTES: u64 = 256 * 1024;

#[unsafe(no_mangle)]
static SONDE_INJECT: u8 = 0;
#[unsafe(no_mangle)]
static SONDE_INJECT_OMIT_UNSAMPLED: u8 = 0;
#[unsafe(no_mangle)]
static SONDE_INJECT_EXCLUSIONS: u8 = 0;
#[unsafe(no_mangle)]
static SONDE_SAMPLING: sonde_common::sampling::Sampling = sonde_common::sampling::Sampling {
    threshold: u64::MAX,
    all: 1,
    parent_based: 1,
    _pad: [0; 6],
};

/// `traceparent` injection is on (`inject.rs`). A constant to the
/// verifier: with it off, no program walks the injection code.
#[inline(always)]
pub fn inject_on() -> bool {
    unsafe { core::ptr::read_volatile(&SONDE_INJECT) != 0 }
}
/// Processes are excluded from injection: the maps are worth a lookup.
#[inline(always)]
pub fn inject_exclusions() -> bool {
    unsafe { core::ptr::read_volatile(&SONDE_INJECT_EXCLUSIONS) != 0 }
}
#[inline(always)]
pub fn inject_omit_unsampled() -> bool {
    unsafe { core::ptr::read_volatile(&SONDE_INJECT_OMIT_UNSAMPLED) != 0 }
}
#[inline(always)]
pub fn sampling() -> sonde_common::sampling::Sampling {
    unsafe { core::ptr::read_volatile(&SONDE_SAMPLING) }
}

#[inline(always)]
pub fn self_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&SONDE_SELF_TGID) }
}
#[inline(always)]
pub fn capture_size() -> u32 {
    unsafe { core::ptr::read_volatile(&SONDE_CAPTURE_SIZE) }
}
#[inline(always)]
pub fn filter_pids() -> bool {
    unsafe { core::ptr::read_volatile(&SONDE_FILTER_PIDS) != 0 }
}
#[inline(always)]
pub fn filter_cgroups() -> bool {
    unsafe { core::ptr::read_volatile(&SONDE_FILTER_CGROUPS) != 0 }
}
#[inline(always)]
pub fn wakeup_bytes() -> u64 {
    unsafe { core::ptr::read_volatile(&SONDE_WAKEUP_BYTES) }
}

/// Records to user space. Size is overridden at load (`--ringbuf-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Tracked TCP sockets: sock_key(tgid, fd) -> SockInfo. Fed by connect and
/// accept here and by user space's /proc scan; only these fds are reported.
#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65536, 0);

/// TCP listening sockets: sock_key(tgid, fd) -> local port (0 if unknown).
#[map]
pub static LISTENERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(8192, 0);

/// A syscall between enter and exit (one per thread, in `THREADS`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ActiveCall {
    pub enter_ns: u64,
    /// Buffer, iovec array, msghdr, mmsghdr array or sockaddr pointer.
    pub arg0: u64,
    /// Length, iovec count, mmsg count, or addrlen pointer. For listen():
    /// the local port, filled in by inet_sock_set_state.
    pub arg1: u64,
    pub fd: i32,
    pub syscall: u8,
    /// Set by inet_sock_set_state while this call runs: the socket is TCP.
    pub tcp_seen: u8,
    /// 1 from the call's entry to its exit. A thread's entry outlives its
    /// calls (see `THREADS`): 0 marks it as between calls.
    pub live: u8,
    /// 1: the thread ran no goroutine at entry, and a thread's goroutine
    /// cannot change inside a syscall, so the record's needs no lookup.
    /// 0: look it up (calls built without that check: TLS, io_uring).
    pub no_goroutine: u8,
    /// The thread's tick at entry (see `tick.rs`).
    pub tick: u32,
    /// Python: the context the call runs in (`python.rs`); 0 elsewhere.
    pub py_task: u32,
    /// The socket as it was at entry, so that the exit needs no second
    /// lookup of `SOCKS`.
    pub sock: SockInfo,
    /// Python: where `py_task`'s context was copied from (`python.rs`);
    /// zeros elsewhere or unknown.
    pub py_origin: sonde_common::GoOrigin,
    /// Python: when that creator's context was itself created (0: unknown).
    pub py_origin_born: u64,
}

const NO_ORIGIN: sonde_common::GoOrigin = sonde_common::GoOrigin {
    creator: 0,
    _pad: 0,
    at_ns: 0,
};

impl ActiveCall {
    /// No call in progress.
    pub const NONE: ActiveCall = ActiveCall {
        enter_ns: 0,
        arg0: 0,
        arg1: 0,
        fd: -1,
        syscall: 0,
        tcp_seen: 0,
        live: 0,
        no_goroutine: 0,
        tick: 0,
        py_task: 0,
        sock: SockInfo {
            role: 0,
            flags: 0,
            _pad: [0; 6],
        },
        py_origin: NO_ORIGIN,
        py_origin_born: 0,
    };

    /// A call entered now, with nothing known of its socket or goroutine.
    #[inline(always)]
    pub fn new(enter_ns: u64, arg0: u64, arg1: u64, fd: i32, syscall: u8, tick: u32) -> Self {
        ActiveCall {
            enter_ns,
            arg0,
            arg1,
            fd,
            syscall,
            tcp_seen: 0,
            live: 1,
            no_goroutine: 0,
            tick,
            py_task: 0,
            sock: SockInfo {
                role: 0,
                flags: 0,
                _pad: [0; 6],
            },
            py_origin: NO_ORIGIN,
            py_origin_born: 0,
        }
    }
}

/// One entry per thread that made a traced call or whose tick is
/// followed: its tick (`tick.rs`) and its call in progress, in one entry so
/// that a data call looks its thread up once at entry and once at exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Thread {
    pub tick: Tick,
    pub call: ActiveCall,
}

/// A thread's entry in a slot array (`THREAD_SLOTS`, `GO_SLOTS`): most
/// per-thread state lives at the index of the tid's low bits. The verifier
/// inlines an array lookup (an index: no helper call, no hash, one cache
/// line), where a hash lookup cost about 70 ns per run on the development
/// VM, on the path of every data call, poll, sleep and goroutine switch. A
/// thread whose slot another live thread holds keeps its entry in the
/// array's overflow hash map instead.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot<T> {
    /// The thread that holds the slot; 0: free (tid 0 is the idle task,
    /// never given an entry).
    pub tid: u32,
    pub _pad: u32,
    pub value: T,
}

/// Every slot array's length: a power of two, so a tid's slot is its low
/// bits.
const SLOT_COUNT: u32 = 1 << 15;

/// `tid`'s slot in `slots`, whoever holds it (None only for tid 0).
#[inline(always)]
fn slot<T>(slots: &Array<Slot<T>>, tid: u32) -> Option<*mut Slot<T>> {
    if tid == 0 {
        return None;
    }
    slots.get_ptr_mut(tid & (SLOT_COUNT - 1))
}

/// `tid`'s value in `slots`, if it holds its slot.
#[inline(always)]
pub fn slot_get<T>(slots: &Array<Slot<T>>, tid: u32) -> Option<*mut T> {
    let s = slot(slots, tid)?;
    // SAFETY: a map value; its `tid` names the one thread that writes it.
    (unsafe { (*s).tid } == tid).then(|| unsafe { &mut (*s).value as *mut T })
}

/// Gives `tid` its slot in `slots` with value `v`, if the slot is free.
/// None: held by another thread (the caller uses the overflow map).
#[inline(always)]
pub fn slot_claim<T: Copy>(slots: &Array<Slot<T>>, tid: u32, v: &T) -> Option<*mut T> {
    let s = slot(slots, tid)?;
    // SAFETY: a map value. Only threads whose tids share the low bits write
    // a slot, each at most once before it holds it: the value is written
    // before the tid that claims it, and a claimer that reads another tid
    // back after writing its own lost the slot.
    unsafe {
        if (*s).tid != 0 {
            return None;
        }
        (*s).value = *v;
        (*s).tid = tid;
        (core::ptr::read_volatile(&(*s).tid) == tid).then(|| &mut (*s).value as *mut T)
    }
}

/// Frees `tid`'s slot in `slots`. False: it held none.
#[inline(always)]
pub fn slot_free<T>(slots: &Array<Slot<T>>, tid: u32) -> bool {
    let Some(s) = slot(slots, tid) else {
        return false;
    };
    // SAFETY: a map value; the thread that holds it is this one.
    unsafe {
        if (*s).tid != tid {
            return false;
        }
        (*s).tid = 0;
    }
    true
}

/// Per-thread state: a thread's tick and its call in progress. A thread
/// keeps its entry from one call to the next, written in place: an LRU
/// map's update and delete each take a lock and move a node between lists,
/// about a sixth of the probes' kernel time under nginx load, where a
/// lookup takes neither. The entry goes with its thread
/// (`sched_process_exit`).
#[map]
pub static THREAD_SLOTS: Array<Slot<Thread>> = Array::with_max_entries(SLOT_COUNT, 0);

/// `THREAD_SLOTS`' overflow. LRU, so that the entries of threads whose
/// exit was missed age out.
#[map]
pub static THREADS: LruHashMap<u32, Thread> = LruHashMap::with_max_entries(32768, 0);

/// The thread's entry, if it has one.
#[inline(always)]
pub fn thread(tid: u32) -> Option<*mut Thread> {
    slot_get(&THREAD_SLOTS, tid).or_else(|| THREADS.get_ptr_mut(&tid))
}

/// Creates the entry of a thread that has none, with `tick`, no call in
/// progress. Returns it (None: the map refused it, counted).
#[inline(always)]
pub fn thread_new(tid: u32, tick: Tick) -> Option<*mut Thread> {
    let t = Thread {
        tick,
        call: ActiveCall::NONE,
    };
    if let Some(p) = slot_claim(&THREAD_SLOTS, tid, &t) {
        return Some(p);
    }
    if THREADS.insert(&tid, &t, 0).is_err() {
        count(stat::MAP_FULL);
        return None;
    }
    THREADS.get_ptr_mut(&tid)
}

/// Thread `tid` exited or exec'd: its entry goes.
#[inline(always)]
pub fn thread_gone(tid: u32) {
    if !slot_free(&THREAD_SLOTS, tid) {
        let _ = THREADS.remove(&tid);
    }
}

/// Notes `call` as thread `id`'s call in progress.
#[inline(always)]
pub fn active_begin(id: u64, call: &ActiveCall) {
    let tid = id as u32;
    if let Some(p) = thread(tid).or_else(|| thread_new(tid, crate::tick::NONE)) {
        // SAFETY: a map value; only this thread writes its own call
        // (inet_sock_set_state runs inside it, on its behalf).
        unsafe { (*p).call = *call };
    }
}

/// The entry of a thread with a call in progress.
#[inline(always)]
pub fn thread_live(id: u64) -> Option<*mut Thread> {
    let p = thread(id as u32)?;
    // SAFETY: a map value.
    (unsafe { (*p).call.live } != 0).then_some(p)
}

/// The thread's call in progress, if any.
#[inline(always)]
pub fn active_live(id: u64) -> Option<*mut ActiveCall> {
    let p = thread_live(id)?;
    // SAFETY: a map value.
    Some(unsafe { &mut (*p).call as *mut ActiveCall })
}

/// Ends the thread's call in progress, returning it.
#[inline(always)]
pub fn active_take(id: u64) -> Option<ActiveCall> {
    let p = active_live(id)?;
    // SAFETY: a map value, this thread's own.
    unsafe {
        (*p).live = 0;
        Some(*p)
    }
}

/// A thread's tick (`tick.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tick {
    pub n: u32,
    /// The tracked socket whose read began the thread's current activity;
    /// -1 when something else did (a poll, a sleep, a read of another fd).
    pub read_fd: i32,
    /// Advances with `n`, except when the thread waits uninterruptibly (a
    /// page fault, a kernel lock): it is still doing the same thing.
    pub activity: u32,
    /// `TICKING`, `TICK_TLS`, `TICK_LOUD`.
    pub flags: u32,
}

/// `Tick::flags`: only a thread that has made a hooked TLS library call
/// can be inside one, so only its socket calls look for it (`tls.rs`).
pub const TICK_TLS: u32 = 1;
/// `Tick::flags`: the thread's tick is followed: it read a tracked socket,
/// or made a hooked TLS call. A thread whose entry only holds calls (it
/// wrote, connected, forked) has no tick: it reads as zeros and nothing
/// advances it.
pub const TICKING: u32 = 2;
/// `Tick::flags`: a reported read carries the thread's tick as it is now
/// (set as the record is written, cleared whenever the tick moves). User
/// space marks a request's input by its read's tick, and asks whether that
/// tick wrote anything; a write on a released socket (`QUIET`) is reported
/// only in such a tick, where the answer may matter.
pub const TICK_LOUD: u32 = 4;

/// Go (`goroutine.rs`): tid -> the goroutine running on that thread, what
/// its run was handed, and its last write (`GoThread`), in a slot (see
/// `Slot`) or, for a thread whose slot is held, in `GO_CURRENT`. Removed
/// when the thread exits or execs, so a reused tid inherits nothing.
#[map]
pub static GO_SLOTS: Array<Slot<sonde_common::GoThread>> = Array::with_max_entries(SLOT_COUNT, 0);

/// `GO_SLOTS`' overflow, and Python threads' entries (written by user
/// space with their `PY_THREADS` entry, `running` 0, so that only Python
/// threads look there). Not LRU (cheaper updates, on the runtime's hottest
/// path): a full map refuses new threads, counted as `map_full`.
#[map]
pub static GO_CURRENT: HashMap<u32, sonde_common::GoThread> = HashMap::with_max_entries(16384, 0);

/// One element: 1 once any entry went into `GO_CURRENT` (by the kernel, a
/// Go thread whose slot was held; by user space, a Python thread). Until
/// then a thread without a slot has no entry, and every data call on a
/// tracked socket, which asks whether its thread runs a goroutine or
/// Python code, skips a hash lookup that would find nothing. Never
/// cleared: a stale 1 costs only that lookup.
#[map]
pub static GO_OVERFLOW: Array<u32> = Array::with_max_entries(1, 0);

/// Whether `GO_CURRENT` may hold entries.
#[inline(always)]
pub fn go_overflow_used() -> bool {
    GO_OVERFLOW.get(0).is_some_and(|v| *v != 0)
}

/// Marks `GO_CURRENT` as holding entries, before one is inserted.
#[inline(always)]
pub fn go_overflow_mark() {
    if let Some(v) = GO_OVERFLOW.get_ptr_mut(0) {
        // SAFETY: a map value; every writer writes 1.
        unsafe { *v = 1 };
    }
}

/// Python (`python.rs`): tid -> where that thread's current contextvars
/// context is found. Written by user space; removed with the thread.
#[map]
pub static PY_THREADS: HashMap<u32, sonde_common::PyThread> = HashMap::with_max_entries(16384, 0);

/// A goroutine's key in `GOROUTINES`: its process (tgid) above its name.
/// A name folds the `g`'s address, and every Go process lays its heap out
/// from the same address, so the replicas of one binary run goroutines at
/// the same addresses: keyed by the name alone, one replica's goroutine
/// took the hand-off another's was sent, and overwrote its origin. `id` is
/// the thread's pid_tgid, whose upper half is the tgid.
#[inline(always)]
pub fn go_key(id: u64, task: u32) -> u64 {
    (id & 0xffff_ffff_0000_0000) | task as u64
}

/// A goroutine's entry in `GOROUTINES`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Goroutine {
    /// Its `go_key`; 0: a free way. Cleared first and written last by a
    /// writer that gives the way to another goroutine, and read again by a
    /// reader after its copy: see `go_origin`.
    pub key: u64,
    /// The goroutine whose `go` statement started it, and when.
    pub origin: sonde_common::GoOrigin,
}

/// `GOROUTINES`' shape: 2^14 sets of 4 ways.
const GO_SET_BITS: u32 = 14;
const GO_WAYS: u32 = 4;

/// Go: goroutine (`go_key`) -> its origin, in a set-associative table: a
/// goroutine's set is a hash of its key, and it holds one of the set's 4
/// ways. This was an LRU hash map, looked up at every channel send, new
/// goroutine and data call of a goroutine: the hash, the bucket walk and
/// the LRU's bookkeeping cost more than the rest of those probes' work
/// (README, "The goroutine tables"). Here a lookup is four inlined array
/// lookups in adjacent memory. A goroutine that finds its set full takes
/// the way of the one created longest ago (counted as `go_evicted`; see
/// `go_born`): if that one still runs, it loses its origin, so its calls
/// are placed by other evidence or stay roots, never under another
/// goroutine's request (a reader checks the key). 65,536 entries, as the
/// LRU map held; 1.5 MiB.
#[map]
pub static GOROUTINES: Array<Goroutine> = Array::with_max_entries(1 << (GO_SET_BITS + 2), 0);

/// `key`'s hash: Fibonacci hashing, whose top bits depend on every bit of
/// the key (its tgid and the `g` or context address alike). Also indexes
/// Python's `PY_ORIGINS`.
#[inline(always)]
pub fn go_hash(key: u64, bits: u32) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as u32
}

/// The origin of goroutine `key`, if known.
#[inline(always)]
pub fn go_origin(key: u64) -> Option<sonde_common::GoOrigin> {
    let first = go_hash(key, GO_SET_BITS) * GO_WAYS;
    for w in 0..GO_WAYS {
        let e = GOROUTINES.get_ptr(first + w)?;
        // SAFETY: a map value. A writer that gives the way to another
        // goroutine clears the key before it writes the body and sets the
        // new key after (`go_born`); with the key read again after the
        // copy, a copy torn by such a writer is refused (stores and loads
        // keep their order on x86-64, the only architecture whose runtime
        // probes attach).
        unsafe {
            if core::ptr::read_volatile(&(*e).key) == key {
                let o = core::ptr::read_volatile(&(*e).origin);
                return (core::ptr::read_volatile(&(*e).key) == key).then_some(o);
            }
        }
    }
    None
}

/// Goroutine `key` was just created by `origin.creator`: its way (its own
/// when its `g` held one, else a free one, else, counted, the way of the
/// goroutine created longest ago) gets `origin`.
///
/// Nothing removes the goroutines of a process that exited: their ways are
/// taken this way, the oldest first. A live goroutine made that long ago
/// is most often one that loops for the process's life (an accept loop, a
/// connection's reader), whose calls are placed by the request they read.
#[inline(always)]
pub fn go_born(key: u64, origin: sonde_common::GoOrigin) {
    let first = go_hash(key, GO_SET_BITS) * GO_WAYS;
    let mut own = None;
    let mut free = None;
    for w in 0..GO_WAYS {
        let Some(e) = GOROUTINES.get_ptr_mut(first + w) else {
            return;
        };
        // SAFETY: a map value.
        let k = unsafe { core::ptr::read_volatile(&(*e).key) };
        if k == key {
            own = Some(e);
            break;
        }
        if k == 0 && free.is_none() {
            free = Some(e);
        }
    }
    if let Some(e) = own {
        // SAFETY: a map value. The goroutine is not running yet, so no
        // reader of it races this write.
        unsafe { core::ptr::write_volatile(&mut (*e).origin, origin) };
        return;
    }
    let e = match free {
        Some(e) => e,
        None => {
            // A full set (rare): the way of the goroutine made longest ago.
            let mut oldest: Option<(*mut Goroutine, u64)> = None;
            for w in 0..GO_WAYS {
                let Some(e) = GOROUTINES.get_ptr_mut(first + w) else {
                    return;
                };
                // SAFETY: a map value.
                let at = unsafe { core::ptr::read_volatile(&(*e).origin.at_ns) };
                if oldest.is_none_or(|(_, t)| at < t) {
                    oldest = Some((e, at));
                }
            }
            let Some((e, _)) = oldest else {
                return;
            };
            count(sonde_common::stat::GO_EVICTED);
            e
        }
    };
    // SAFETY: a map value; the order readers rely on (`go_origin`).
    unsafe {
        core::ptr::write_volatile(&mut (*e).key, 0);
        core::ptr::write_volatile(&mut (*e).origin, origin);
        core::ptr::write_volatile(&mut (*e).key, key);
    }
}

/// A set of 2 hand-offs on their way: the goroutines they were sent to,
/// and their senders. The keys sit together, so the check at a goroutine
/// switch, which mostly finds neither, reads one cache line.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HandOffs {
    /// The receivers' `go_key`s; 0: a free way. Cleared first and written
    /// last by a writer that gives the way to another receiver (see
    /// `go_origin`).
    pub keys: [u64; 2],
    pub handed: [sonde_common::Lineage; 2],
}

/// `GO_HANDOFFS`' length: 2^13 sets.
const HANDOFF_SET_BITS: u32 = 13;

/// Go: the hand-offs sent and not yet taken, in sets of 2 ways by a hash of
/// the receiver's key. A hand-off lives from the send that readies its
/// receiver to that receiver's next run, microseconds, so few are in
/// flight at a time and a small table holds them (640 KiB). The check at
/// every goroutine switch is then one set's keys, where a lookup in the
/// goroutine table cost about 40 ns per switch on the development VM. A
/// send that finds both ways of its set held by others' hand-offs takes
/// the first way (counted as `go_handoff_lost`): that one is lost, and its
/// receiver's writes are placed by other evidence or stay roots. A
/// receiver never takes another's hand-off (the key), and takes its own at
/// its next run.
#[map]
pub static GO_HANDOFFS: Array<HandOffs> = Array::with_max_entries(1 << HANDOFF_SET_BITS, 0);

/// Goroutine `key`, waiting on a channel, was sent a value: `handed` names
/// the sender, kept for the receiver's next run.
#[inline(always)]
pub fn go_hand(key: u64, handed: sonde_common::Lineage) {
    let Some(set) = GO_HANDOFFS.get_ptr_mut(go_hash(key, HANDOFF_SET_BITS)) else {
        return;
    };
    // SAFETY: a map value.
    let (k0, k1) = unsafe {
        (
            core::ptr::read_volatile(&(*set).keys[0]),
            core::ptr::read_volatile(&(*set).keys[1]),
        )
    };
    // Its own way first (a way per key), then a free one.
    let w = if k0 == key {
        0
    } else if k1 == key {
        1
    } else if k0 == 0 {
        0
    } else if k1 == 0 {
        1
    } else {
        count(sonde_common::stat::GO_HANDOFF_LOST);
        0
    };
    // SAFETY: a map value; the order readers rely on (`go_origin`).
    unsafe {
        core::ptr::write_volatile(&mut (*set).keys[w], 0);
        core::ptr::write_volatile(&mut (*set).handed[w], handed);
        core::ptr::write_volatile(&mut (*set).keys[w], key);
    }
}

/// Takes goroutine `key`'s hand-off, if one waits for it: it holds for
/// this run only.
#[inline(always)]
pub fn go_take_handed(key: u64) -> Option<sonde_common::Lineage> {
    let set = GO_HANDOFFS.get_ptr_mut(go_hash(key, HANDOFF_SET_BITS))?;
    // SAFETY: a map value; see `go_origin`. The clear writes only a 0, which
    // at worst loses a hand-off written there since by another send.
    unsafe {
        let w = if core::ptr::read_volatile(&(*set).keys[0]) == key {
            0
        } else if core::ptr::read_volatile(&(*set).keys[1]) == key {
            1
        } else {
            return None;
        };
        let h = core::ptr::read_volatile(&(*set).handed[w]);
        if core::ptr::read_volatile(&(*set).keys[w]) != key {
            return None;
        }
        core::ptr::write_volatile(&mut (*set).keys[w], 0);
        Some(h)
    }
}

/// A goroutine's last client write (`goroutine::wrote`), kept past its run.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoWrite {
    /// Its writer's `go_key`; 0: a free way.
    pub key: u64,
    pub fd: i32,
    pub _pad: u32,
    /// The write's entry.
    pub wrote_ns: u64,
}

/// `GO_WRITES`' length: 2^13 sets of 2 ways.
const WRITE_SET_BITS: u32 = 13;

/// Go: per goroutine, its last client write made in a run handed nothing,
/// until its hand-off is reported or it writes on another socket
/// (`goroutine.rs`, "the reply"). Sets of 2 ways by a hash of the writer's
/// key; a write that finds both ways held by others takes the one written
/// longest ago, counted as `go_write_evicted` (the other goroutine's write
/// is then not followed past its run: its call is placed by other evidence
/// or stays a root, never under another's request, since a reader checks
/// the key).
/// Nothing else removes the writes of goroutines that are gone: their ways
/// are taken this way. 384 KiB.
#[map]
pub static GO_WRITES: Array<[GoWrite; 2]> = Array::with_max_entries(1 << WRITE_SET_BITS, 0);

/// Keeps goroutine `key`'s client write on `fd`, entered at `wrote_ns`.
#[inline(always)]
pub fn go_write_keep(key: u64, fd: i32, wrote_ns: u64) {
    let Some(set) = GO_WRITES.get_ptr_mut(go_hash(key, WRITE_SET_BITS)) else {
        return;
    };
    // SAFETY: a map value. Only the goroutine itself writes its way (from
    // its own calls, one at a time); a way given to another goroutine has
    // its key cleared first and set last, and a reader reads the key again
    // after its copy (`go_origin`).
    unsafe {
        let k0 = core::ptr::read_volatile(&(*set)[0].key);
        let k1 = core::ptr::read_volatile(&(*set)[1].key);
        // Its own way, else a free one, else the one written longest ago
        // (counted): most often a goroutine's that got its reply long since.
        let w = if k0 == key {
            0
        } else if k1 == key || (k0 != 0 && k1 == 0) {
            1
        } else if k0 == 0 {
            0
        } else {
            count(sonde_common::stat::GO_WRITE_EVICTED);
            let older0 = core::ptr::read_volatile(&(*set)[0].wrote_ns)
                <= core::ptr::read_volatile(&(*set)[1].wrote_ns);
            if older0 {
                0
            } else {
                1
            }
        };
        let e = &mut (*set)[w];
        core::ptr::write_volatile(&mut e.key, 0);
        core::ptr::write_volatile(&mut e.fd, fd);
        core::ptr::write_volatile(&mut e.wrote_ns, wrote_ns);
        core::ptr::write_volatile(&mut e.key, key);
    }
}

/// The entry of goroutine `key`'s kept client write, if it was on `fd`.
#[inline(always)]
pub fn go_write_on(key: u64, fd: i32) -> Option<u64> {
    let set = GO_WRITES.get_ptr(go_hash(key, WRITE_SET_BITS))?;
    // SAFETY: a map value; see `go_write_keep`.
    unsafe {
        for w in 0..2 {
            let e = &(*set)[w];
            if core::ptr::read_volatile(&e.key) == key {
                let (f, ns) = (
                    core::ptr::read_volatile(&e.fd),
                    core::ptr::read_volatile(&e.wrote_ns),
                );
                return (core::ptr::read_volatile(&e.key) == key && f == fd).then_some(ns);
            }
        }
    }
    None
}

/// Forgets goroutine `key`'s kept client write, if any.
#[inline(always)]
pub fn go_write_forget(key: u64) {
    let Some(set) = GO_WRITES.get_ptr_mut(go_hash(key, WRITE_SET_BITS)) else {
        return;
    };
    // SAFETY: a map value; clearing a key only frees its way.
    unsafe {
        for w in 0..2 {
            let e = &mut (*set)[w];
            if core::ptr::read_volatile(&e.key) == key {
                core::ptr::write_volatile(&mut e.key, 0);
            }
        }
    }
}

/// Client sockets between SYN_SENT and ESTABLISHED: struct sock address ->
/// sock_key. ESTABLISHED fires in softirq, where `current` is unrelated.
#[map]
pub static SK_OWNER: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Remote end of a freshly established server-side socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerKey {
    pub family: u16,
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// Server sockets that reached ESTABLISHED but were not accepted yet, keyed
/// by their remote end, which accept() reports through its sockaddr.
#[map]
pub static PEER_ESTAB: LruHashMap<PeerKey, Tuple> = LruHashMap::with_max_entries(16384, 0);

/// The same sockets by their `struct sock *`, when the kernel's
/// `FdLayout` is known (`conn.rs`): accept() finds the socket behind the
/// fd it returns, with or without a sockaddr. Used instead of
/// `PEER_ESTAB` then; an entry goes at accept, or when its socket closes.
#[map]
pub static ESTAB_SK: LruHashMap<u64, Tuple> = LruHashMap::with_max_entries(16384, 0);

/// Optional filters: when enabled, only these tgids / cgroup v2 ids are traced.
#[map]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);
#[map]
pub static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-CPU staging area for one data record: header + payload. Three times
/// MAX_CAPTURE so that a segment's "offset (< MAX) + length (< 2 MAX)", as
/// the verifier bounds them by masks (`capture::copy_iov`), is provably in
/// bounds whatever the iovec split. 8-aligned: a record's header is written
/// in place (`capture::emit`).
#[repr(C, align(8))]
pub struct Scratch {
    pub buf: [u8; DATA_EVENT_SIZE + 3 * MAX_CAPTURE],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = STATS.get_ptr_mut(idx) {
        // Per-CPU value: no other CPU writes it, a plain add is race-free.
        unsafe { *c += 1 };
    }
}

/// TLS (`tls.rs`): a library call between its entry and return probes, of
/// a thread (`TLS_SLOTS`) or, for Go, of a goroutine (`TLS_ACTIVE`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The library's connection object (`SSL *`).
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `_ex` forms: where the library writes the byte count; 0 otherwise.
    pub out_len: u64,
    /// A write: the plaintext's length.
    pub len: u64,
    pub enter_ns: u64,
    /// The socket a syscall inside this call used; -1 until one does.
    pub fd: i32,
    /// `tls::op` value.
    pub op: u8,
    /// A write's plaintext was reported (at its first socket syscall).
    pub sent: u8,
    /// The call returned without reaching any socket, its object's socket
    /// unknown (a memory BIO): kept for the thread's next socket write in
    /// the same tick (`tls::inside_call`).
    pub held: u8,
    pub _pad: u8,
    /// The thread's tick at entry (see `tick.rs`); once held, its
    /// activity at return.
    pub tick: u32,
    /// A read's candidate socket: the tracked socket whose read started
    /// the thread's current tick, at entry; -1 if none.
    pub guess: i32,
}

/// Threads' calls in progress, one slot per thread for its life (`op` 0
/// between calls): an entry and a return probe then write and read it in
/// place, where an LRU map's insert and delete each took a lock and moved
/// a node, at every `SSL_read` and `SSL_write`. 2 MiB.
#[map]
pub static TLS_SLOTS: Array<Slot<TlsCall>> = Array::with_max_entries(SLOT_COUNT, 0);

/// `TLS_SLOTS`' overflow, and goroutines' calls (Go's crypto/tls) by
/// (tgid, goroutine). LRU, so that the calls of threads whose exit was
/// missed age out.
#[map]
pub static TLS_ACTIVE: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// A TLS connection object of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// TLS: (tgid, `SSL *`) -> the socket its records last went through. A call
/// that returns buffered plaintext makes no syscall; this names its socket.
/// Removed at `SSL_free`; LRU, and rewritten by every call that does reach
/// the socket, so a reused object address never keeps a stale fd.
#[map]
pub static TLS_FD: LruHashMap<TlsKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// Processes whose pipes user space follows (`pipe.rs`): their forks are
/// reported, so a pre-fork pool's workers share the followed pipes. Set and
/// removed by user space (at activation, and at the process's exit).
#[map]
pub static PIPE_PROCS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Processes that exec'd while the agent ran and have not yet connected,
/// accepted or listened. Their first such record wakes the reader at once
/// (`conn.rs`): user space reads the process's identity from /proc at its
/// first network act, and a short-lived process (a CLI run, a cron job)
/// may be gone by the next timed drain, taking its `OTEL_SERVICE_NAME`
/// with it. Set at exec, removed at the first network act or at exit; an
/// LRU, so a node that execs many processes that never touch the network
/// forgets the oldest (their first record then waits for the timer).
#[map]
pub static NEW_PROCS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

/// Whether `tgid`'s record is its first network act since its exec (and
/// so must wake the reader); forgets the process either way.
#[inline(always)]
pub fn first_network_act(tgid: u32) -> bool {
    unsafe { NEW_PROCS.get(&tgid) }.is_some() && NEW_PROCS.remove(&tgid).is_ok()
}
