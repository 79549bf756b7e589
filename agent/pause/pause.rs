//! The sandbox process of a docker instance (Kubernetes' pause): it holds the network
//! namespace the agent plumbs before the instance's own container joins it, and waits. As PID 1
//! of its container it must end on SIGTERM itself (the kernel ignores signals PID 1 does not
//! handle). Built static by agent/build.rs, so it runs in any image's place: it is the only
//! file of the sandbox image the agent imports (nothing is pulled).
extern "C" {
    fn signal(sig: i32, handler: usize) -> usize;
    fn pause() -> i32;
    fn _exit(code: i32) -> !;
}

extern "C" fn bye(_: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

fn main() {
    // SAFETY: installing a handler that only calls _exit; pause only waits.
    unsafe {
        signal(15, bye as *const () as usize);
        signal(2, bye as *const () as usize);
        loop {
            pause();
        }
    }
}
