//! What the commands print. Output to a closed pipe (`viking services | head -1`) ends the
//! command quietly, as Unix tools do, instead of panicking as `println!` would. (SIGPIPE stays
//! ignored: the HTTP and etcd clients write to sockets with writev, which would raise it.)
use std::io::Write as _;

/// Writes `text` to stdout; a closed pipe ends the process with status 0.
pub fn write(text: &str) {
    let mut out = std::io::stdout().lock();
    let done = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    match done {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("viking: writing the output: {e}");
            std::process::exit(1);
        }
    }
}

/// `print!` through `write`.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::write(&format!($($arg)*)) };
}

/// `println!` through `write`.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::out::write(&format!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {out, outln};
