//! The frame scanner over any bytes: the verdict does not depend on how the bytes are split into reads. The same frame is refused for the same reason; what may still be handed on is everything before that frame (of the piece being scanned, as earlier pieces were handed on already).
#![no_main]

use herald::wire::scanner::FrameScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else { return };
    let whole = FrameScanner::new(1024).scan(bytes);
    let step = usize::from(split) + 1;
    let mut scanner = FrameScanner::new(1024);
    let mut offset = 0;
    let mut pieces = Ok(());
    for piece in bytes.chunks(step) {
        if let Err((good, reason)) = scanner.scan(piece) {
            pieces = Err((offset, offset + good, reason));
            break;
        }
        offset += piece.len();
    }
    match (whole, pieces) {
        (Ok(()), Ok(())) => {}
        (Err((good, reason)), Err((piece_start, split_good, split_reason))) => {
            assert_eq!(reason, split_reason, "split every {step} bytes");
            assert_eq!(split_good, good.max(piece_start), "split every {step} bytes");
        }
        (whole, pieces) => panic!("split every {step} bytes: {whole:?} vs {pieces:?}"),
    }
});
