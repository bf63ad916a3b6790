//! The outbound observer parses what an upstream (any server, possibly hostile) sends back and
//! what the app writes: it must never panic, what it sees must not depend on how the bytes were
//! split into reads or writes, and it never reports more responses than requests were sent.
#![no_main]
use pqmesh_sidecar::outbound_observe::{RequestParser, ResponseParser};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    // The first byte: how the stream is split, and which requests (HEAD or not) were sent.
    let step = usize::from(split % 17) + 1;
    let heads: Vec<bool> = (0..split % 5).map(|i| split & (8 << i) != 0).collect();
    let mut whole = ResponseParser::expecting(&heads);
    let at_once = whole.feed(stream);
    let mut pieces = ResponseParser::expecting(&heads);
    let in_pieces: Vec<_> = stream.chunks(step).flat_map(|c| pieces.feed(c)).collect();
    assert_eq!(at_once, in_pieces, "split every {step} bytes");
    assert_eq!(whole.is_done(), pieces.is_done());
    assert!(at_once.len() <= heads.len(), "more responses than requests");

    // The same bytes as what an app writes.
    let mut whole = RequestParser::default();
    let at_once = whole.feed(stream);
    let mut pieces = RequestParser::default();
    let in_pieces: Vec<_> = stream.chunks(step).flat_map(|c| pieces.feed(c)).collect();
    assert_eq!(at_once, in_pieces, "requests split every {step} bytes");
    assert_eq!(whole.is_done(), pieces.is_done());
});
