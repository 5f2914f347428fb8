//! Copies and clears of whole records, a 64-bit word at a time.
//!
//! A struct copy or a zeroed field left to the compiler becomes a call of
//! the object's own `memmove` or `memset`, which on BPF move one byte per
//! iteration, about 8 instructions a byte: copying a decision
//! (`ConnectEvent`, 136 bytes) ran about 1,100 instructions. Here each
//! word is one load and one store. The accesses are volatile so that the
//! compiler cannot turn the loop back into one of those calls.

use core::ptr;

/// Copies `*src` to `*dst`, word by word.
///
/// # Safety
/// Both point to a valid, 8-aligned `T` (a map value, a ring entry or a
/// stack value) that lives for the call.
#[inline(always)]
pub(crate) unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() == 8) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: within the `T` both point to, as the caller promised.
        unsafe { ptr::write_volatile(d.add(i), ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Sets `*dst` to all zero bytes, word by word.
///
/// # Safety
/// As [`copy`]; all zero bytes must be a valid `T`.
#[inline(always)]
pub(crate) unsafe fn zero<T: Copy>(dst: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() == 8) };
    let d = dst.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: as in `copy`.
        unsafe { ptr::write_volatile(d.add(i), 0) };
        i += 1;
    }
}
