//! `lk-list FILE...`: one JSON line per file, `{"file": F, "ok": [rows]}` with layerkit's view of
//! every member, or `{"file": F, "err": "why layerkit refuses it"}` (`"PANIC: ..."` if layerkit
//! panicked on it). Used by `differential.py`.
//!
//! `lk-list --replay TARGET FILE...`: run a fuzz target's body on files outside libFuzzer's driver
//! (plain stderr, gdb-friendly).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--replay") {
        let target = args.get(1).expect("--replay TARGET FILE...");
        let fds = layerkit_fuzz::open_fds;
        for f in &args[2..] {
            let before = fds();
            let data = std::fs::read(f).expect("read input");
            assert!(
                layerkit_fuzz::run_target(target, &data),
                "unknown target {target}"
            );
            // Descriptors still open after the input: a leak shows as a steady climb.
            eprintln!("{target}: {f} (open fds {before} -> {})", fds());
        }
        return;
    }
    std::panic::set_hook(Box::new(|_| {}));
    for f in &args {
        let line = match catch_unwind(AssertUnwindSafe(|| layerkit_fuzz::list(Path::new(f)))) {
            Ok(Ok(rows)) => serde_json::json!({"file": f, "ok": rows}),
            Ok(Err(e)) => serde_json::json!({"file": f, "err": e}),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                serde_json::json!({"file": f, "err": format!("PANIC: {msg}"), "panic": true})
            }
        };
        println!("{line}");
    }
}

// Built with the targets' instrumentation flags by build.sh, so it shares their compiled
// dependencies (one build, not two); libFuzzer's driver and its `main` are not used.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
