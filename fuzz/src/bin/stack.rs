//! Stack files (viking, fig, compose): parsing never panics, and every job a stack holds
//! survives its own job record (what a deploy writes, what the agents read back).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use viking::{deploy::folder, stack::Stack};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let file = ["viking.yml", "fig.yml", "docker-compose.yml"][usize::from(pick % 3)];
    let Ok(stack) = Stack::from_text(Path::new(file), text, "fuzz") else { return };
    let _ = stack.order();
    for pj in &stack.jobs {
        let key = folder::job_key(&stack.name, &pj.job.name);
        let back = folder::parse_record(&key, &folder::record_value(&pj.job)).unwrap_or_else(|e| {
            panic!("job {} does not read back from its record: {e}", pj.job.name)
        });
        assert_eq!(back.job, pj.job, "job {} changed through its record", pj.job.name);
    }
});
