//! Memory the allocator keeps after a peak, given back.
//!
//! Loading the GeoIP tables builds tens of MB of temporary tables on a
//! blocking thread (flattening the database, laying out the IPv4 index).
//! glibc keeps what is freed in the arena of the thread that allocated it,
//! so without a trim the daemon's resident memory stays at that peak for
//! its whole life; and once large blocks have been freed, glibc raises its
//! own trim threshold (up to 64 MB), so later frees are not given back
//! either. Measured with the full CC0 database, idle, release build, the
//! API up: 80.5 MB resident, 54 MB of it anonymous, before; 49.9 MB with
//! [`release`] after the load alone; 31.7 MB (5.6 MB anonymous) with the
//! threshold fixed as well ([`configure`]), the same with a threshold of
//! 128 KiB, 1 MiB or 4 MiB.

/// The trim threshold: free memory above it at the top of an arena goes
/// back to the kernel.
const TRIM_THRESHOLD: i32 = 4 << 20;

/// Fixes glibc's trim threshold at [`TRIM_THRESHOLD`], at the daemon's
/// start. (This also fixes the size above which a block is its own mapping
/// at the default 128 KiB, instead of letting it grow.)
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and sets glibc's own parameters
    // under its lock (MT-safe).
    unsafe {
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Gives the memory freed since the last peak back to the kernel (glibc's
/// `malloc_trim`, over every arena). A no-op with other C libraries.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own
    // arenas, under their locks; any thread may call it at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
