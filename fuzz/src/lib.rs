//! Shared by the fuzz targets: an allocator that tracks the peak of live bytes, and a driver that feeds bytes to a connection in the pieces the input asks for.

use herald::Config;
use herald::conn::{Conn, Ctx};
use herald::testing::MemorySocket;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting live bytes and their peak.
pub struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Starts measuring: the peak is reset to what is live now.
pub fn measure_from_here() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// Bytes allocated at the peak since `measure_from_here` returned `base`.
pub fn peak_above(base: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// A context for the fuzz targets: the dev configuration with small limits,
/// so that inputs reach them.
pub fn context() -> Ctx {
    let mut config = Config::dev();
    config.max_message_bytes = 4096;
    config.max_echo_message_bytes = 8192;
    config.max_api_body_bytes = 4096;
    config.max_outbound_bytes = 64 * 1024;
    herald::testing::context(config)
}

/// Feeds `input` to a fresh connection: the first byte says how big the
/// pieces are (1..=256), as a peer's writes would split it. Returns the
/// connection for checks.
pub fn drive(ctx: &mut Ctx, input: &[u8]) -> Conn<MemorySocket> {
    let (step, rest) = match input.split_first() {
        Some((step, rest)) => (usize::from(*step) + 1, rest),
        None => (1, input),
    };
    let mut conn = Conn::new(MemorySocket::default(), ctx);
    for piece in rest.chunks(step) {
        conn.socket_mut().input.extend_from_slice(piece);
        let _ = conn.ready(true, true, ctx);
    }
    conn
}

/// Most bytes a connection may hold queued for output under [`context`]:
/// the outbound bound, plus one answer of the largest kind.
pub const OUTPUT_BOUND: usize = 64 * 1024 + 16 * 1024;

/// Most bytes processing one input may allocate under [`context`], beyond
/// the input itself: the shard's 64 KiB scratch buffer, a 4-8 KiB message
/// and its copies, tungstenite's buffers, the output bound.
pub const ALLOCATION_BOUND: usize = 1024 * 1024;
