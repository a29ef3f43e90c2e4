//! The few process primitives std lacks. Kept tiny: the only unsafe code in OneStack.
#![allow(unsafe_code)]

/// Sends `sig` to `pid`; false if the process does not exist or cannot be signalled.
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 0 never targets a group.
    unsafe { libc::kill(pid, sig) == 0 }
}

pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGKILL: i32 = libc::SIGKILL;
