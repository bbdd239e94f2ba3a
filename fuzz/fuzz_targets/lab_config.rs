//! The lab's config file (`testdata/lab.toml`, `lab/src/config.rs`): load, check and plan,
//! through the `cdn` library.
#![no_main]

use cdn_lab::config as lab_config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `LabFile::load` reads a file: one scratch file per fuzzing process.
    let path = std::env::temp_dir().join(format!("cdn-fuzz-lab-{}.toml", std::process::id()));
    if std::fs::write(&path, text).is_err() {
        return;
    }
    if let Ok(lab) = lab_config::LabFile::load(&path) {
        if let Ok(plan) = lab.plan(lab_config::PortMode::Auto) {
            let _ = format!("{plan:?}");
        }
    }
});
