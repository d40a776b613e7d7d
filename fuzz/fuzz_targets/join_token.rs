//! Fuzz target: join tokens (PROTOCOL.md §11), the text an admin pastes into
//! `arbor init --join`, through `JoinToken::parse`. A token that parses must print
//! back to a text that parses to the same token, and its keys read as libp2p
//! identities.
#![no_main]

use arbor::trust::member::JoinToken;
use arbor_fuzz::show_key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The command line hands over a String: text that is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = JoinToken::parse(text) else {
        return;
    };
    let printed = token.to_text();
    assert_eq!(JoinToken::parse(&printed).as_ref(), Ok(&token));
    // Printing is canonical: lowercase hex of the canonical encoding.
    assert!(
        printed.eq_ignore_ascii_case(text.trim()),
        "a token prints as other text than it was read from"
    );
    show_key(&token.parent);
});
