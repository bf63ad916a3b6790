//! The outbound observer parses what an upstream (any server, possibly hostile) sends back: it
//! must never panic, and what it sees must not depend on how the bytes were split into reads.
#![no_main]
use pqmesh_sidecar::outbound_observe::ResponseParser;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut whole = ResponseParser::default();
    let at_once = whole.feed(stream);
    let mut pieces = ResponseParser::default();
    let step = usize::from(split % 17) + 1;
    let in_pieces: Vec<_> = stream.chunks(step).flat_map(|c| pieces.feed(c)).collect();
    assert_eq!(at_once, in_pieces, "split every {step} bytes");
    assert_eq!(whole.is_done(), pieces.is_done());
});
