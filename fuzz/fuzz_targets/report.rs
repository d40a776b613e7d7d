//! Fuzz target: reports (PROTOCOL.md §15), received by the root node from its child
//! (the vector's reporter) through `Rollup::receive`, which opens them with
//! `SignedReport::open`. Each input is tried as the envelope bytes and as a body the
//! child signed (so that the body's decoding and `Report::validate` are reached past the
//! signature). What is received must re-encode to its bytes and sign again to the same
//! bytes, show as JSON, and roll up into the root node's own report, which must itself
//! be a report that validates and signs.
#![no_main]

use arbor::report::{NodeDetail, Own, Received, Rollup, SignedReport, TAG_REPORT};
use arbor::trust::Envelope;
use arbor::wire;
use arbor_fuzz::{NOW, assert_canonical, child, root_node};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};

fuzz_target!(|data: &[u8]| {
    let child = child();
    let path = || vec![root_node().public()];
    let mut rollup = Rollup::new(path());
    if rollup.receive(&child.public(), false, data, NOW).is_ok() {
        roll_up(&rollup);
    }
    let envelope = Envelope::sign(&child, TAG_REPORT, 7, None, data.to_vec());
    let bytes = wire::encode(&envelope);
    let mut rollup = Rollup::new(path());
    let Ok(received) = rollup.receive(&child.public(), false, &bytes, NOW) else {
        return;
    };
    assert_eq!(received, Received::Applied);
    let Some(held) = rollup.get(&child.public()).cloned() else {
        panic!("a received report is not held");
    };
    assert_canonical(&held.report, data);
    let again = match SignedReport::sign(&child, 7, held.report.clone()) {
        Ok(again) => again,
        Err(e) => panic!("a received report cannot be signed again: {e}"),
    };
    assert_eq!(again, held, "signing a received report gives other bytes");
    assert_eq!(
        rollup.receive(&child.public(), false, &bytes, NOW),
        Ok(Received::Duplicate)
    );
    let _ = arbor::report::ReportView::from(&held);
    roll_up(&rollup);
});

/// The root node's report over what it received: it must be one the root node can
/// sign, so that its parent (or the admin API) accepts it.
fn roll_up(rollup: &Rollup) {
    let me = root_node();
    let detail = NodeDetail {
        lost: None,
        node: me.public(),
        depth: 0,
        issued: NOW,
        parent: None,
        updates: Vec::new(),
    };
    let groups = BTreeMap::from([("lab".to_string(), BTreeSet::from([child().public()]))]);
    let lost = BTreeMap::new();
    let report = rollup.report(Own {
        me: detail,
        groups: &groups,
        refusals: &[],
        cert: None,
        failures: &[],
        lost: &lost,
    });
    if let Err(e) = SignedReport::sign(&me, 1, report.clone()) {
        panic!("the roll-up of a valid report is refused: {e}\n{report:?}");
    }
}
