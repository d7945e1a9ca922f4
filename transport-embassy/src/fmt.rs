//! Log macros that go to `defmt`, to `log`, or nowhere, depending on the crate's features.
//!
//! Format strings are kept to `{}` and `{:?}` with arguments that implement both the `log` and
//! the `defmt` traits, so one call site serves both back ends.
#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("tlsro-embassy: enable at most one of the features `defmt` and `log`");

macro_rules! log_at {
    ($level:ident, $s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::$level!($s $(, $x)*);
        #[cfg(feature = "log")]
        ::log::$level!($s $(, $x)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ($( & $x ),*);
    }};
}

macro_rules! trace {
    ($($t:tt)*) => { log_at!(trace, $($t)*) };
}

macro_rules! debug {
    ($($t:tt)*) => { log_at!(debug, $($t)*) };
}

macro_rules! info {
    ($($t:tt)*) => { log_at!(info, $($t)*) };
}

macro_rules! warn {
    ($($t:tt)*) => { log_at!(warn, $($t)*) };
}

macro_rules! error {
    ($($t:tt)*) => { log_at!(error, $($t)*) };
}
