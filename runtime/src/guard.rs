//! Third-party parsers run behind [`catching`]: tract and the image decoders are fed untrusted
//! files, and some malformed ones make them panic instead of returning an error (fuzzing found a
//! `ReduceMean` axis beyond the input's rank, which panics in tract's shape inference). A panic
//! inside becomes an error carrying its message, and the message is kept off stderr (it is in the
//! error instead) by a panic hook that stays silent only on a thread inside `catching` and defers
//! to the previous hook everywhere else.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info)
            }
        }));
    });
}

/// Runs `f`; a panic inside it becomes `Err("<what> panicked: <message>")`.
pub(crate) fn catching<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(outer));
    result.map_err(|payload| {
        let message = (payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        // An unwrapped tract (anyhow) error's Debug text carries a backtrace when RUST_BACKTRACE
        // is set: keep the message.
        let message = message.split("Stack backtrace:").next().unwrap_or_default();
        format!("{what} panicked: {}", message.trim_end())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_the_hook_is_restored_for_others() {
        assert_eq!(catching("x", || 3), Ok(3));
        let e = catching("tract", || -> u8 { panic!("boom {}", 7) }).unwrap_err();
        assert_eq!(e, "tract panicked: boom 7");
        assert!(!QUIET.with(Cell::get));
        // Nested: the inner call leaves the outer one quiet.
        let r = catching("outer", || catching("inner", || panic!("x")).is_err());
        assert_eq!(r, Ok(true));
    }
}
