//! The frame scanner over any bytes, without and with permessage-deflate: the verdict does not depend on how the bytes are split into reads (the same frame is refused for the same reason; what may still be handed on is everything before that frame, of the piece being scanned, as earlier pieces were handed on already), and neither does what it hands on: tungstenite's bytes, compressed payloads and message ends, in the same order.
#![no_main]

use herald::wire::scanner::{FrameScanner, Sink};
use libfuzzer_sys::fuzz_target;
use std::ops::ControlFlow;

/// What a scan handed on, adjacent pieces of one kind joined.
#[derive(Debug, Default, PartialEq)]
struct Record(Vec<(u8, Vec<u8>)>);

impl Record {
    fn add(&mut self, kind: u8, bytes: &[u8]) {
        match self.0.last_mut() {
            _ if bytes.is_empty() && kind != b'e' => {}
            Some((last, run)) if *last == kind && kind != b'e' => run.extend_from_slice(bytes),
            _ => self.0.push((kind, bytes.to_vec())),
        }
    }
}

impl Sink for Record {
    fn frames(&mut self, bytes: &[u8]) -> ControlFlow<()> {
        self.add(b'f', bytes);
        ControlFlow::Continue(())
    }

    fn compressed(&mut self, payload: &[u8]) {
        self.add(b'c', payload);
    }

    fn compressed_end(&mut self, text: bool) -> ControlFlow<()> {
        self.add(b'e', &[u8::from(text)]);
        ControlFlow::Continue(())
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else { return };
    let step = usize::from(split) + 1;
    for compression in [false, true] {
        let mut whole_record = Record::default();
        let whole = FrameScanner::new(1024, compression).scan(bytes, &mut whole_record);
        let mut scanner = FrameScanner::new(1024, compression);
        let mut record = Record::default();
        let mut offset = 0;
        let mut pieces = Ok(());
        for piece in bytes.chunks(step) {
            if let Err((good, reason)) = scanner.scan(piece, &mut record) {
                pieces = Err((offset, offset + good, reason));
                break;
            }
            offset += piece.len();
        }
        match (whole, pieces) {
            (Ok(()), Ok(())) => assert_eq!(record, whole_record, "split every {step} bytes"),
            (Err((good, reason)), Err((piece_start, split_good, split_reason))) => {
                assert_eq!(reason, split_reason, "split every {step} bytes");
                assert_eq!(split_good, good.max(piece_start), "split every {step} bytes");
            }
            (whole, pieces) => panic!("split every {step} bytes: {whole:?} vs {pieces:?}"),
        }
    }
});
