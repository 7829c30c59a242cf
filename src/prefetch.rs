//! Software prefetch: asks the CPU to bring memory into its caches ahead of use.
//!
//! Layer: uses nothing of the crate.
//!
//! A fleet's state is larger than the caches, so each event's agent is a round trip to memory.
//! The engine announces the agents of the next few events (see [`Engine::process_batch`]) and
//! the loads overlap instead of waiting one after another. A prefetch is only a hint: it never
//! faults and changes no result.
//!
//! [`Engine::process_batch`]: crate::engine::Engine::process_batch

/// Bytes per cache line.
const LINE: usize = 64;

/// Hints that the cache line holding `p` will be read soon.
#[inline(always)]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch reads nothing: it neither
        // faults nor has any effect on a bad address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints that the first `max_lines` cache lines of `v` will be read soon.
#[inline(always)]
pub fn lines<T>(v: &[T], max_lines: usize) {
    let start = v.as_ptr().cast::<u8>();
    let bytes = std::mem::size_of_val(v).min(max_lines * LINE);
    let mut off = 0;
    while off < bytes {
        line(start.wrapping_add(off));
        off += LINE;
    }
}

/// Hints that the whole of `x` (a struct held inline) will be read soon.
#[inline(always)]
pub fn value<T>(x: &T) {
    lines(std::slice::from_ref(x), usize::MAX / LINE);
}
