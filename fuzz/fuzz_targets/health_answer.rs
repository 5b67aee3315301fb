//! What a health-checked server answers, as bytes, whole or cut anywhere: never a panic, and
//! never more body kept than the check looks through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::health::{read_check_answer, CheckAnswer, CHECK_BODY_LIMIT};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, answer)) = data.split_first() else { return };
    let (head_request, want_body, closed) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    if let Ok(CheckAnswer::Complete { status, body }) = read_check_answer(answer, head_request, want_body, closed) {
        assert!((100..=999).contains(&status));
        assert!(body.len() <= CHECK_BODY_LIMIT);
        assert!(want_body || body.is_empty());
    }
});
