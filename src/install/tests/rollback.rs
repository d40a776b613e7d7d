//! Rolling a module back to its previous version, and crashes at every step of it.

use super::*;

#[test]
fn rollback_holds_the_update_rolled_back_from_until_a_new_version_is_installed() {
    let dir = tmp();
    let root = dir.path();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(root, &one, &c1).expect("v1");
    put(root, &two, &c2).expect("v2");
    assert_eq!(held(root, "acme", "plugins", "viewer").expect("held"), None);

    rollback(root, "acme", "plugins", "viewer").expect("rollback");
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(two.id)
    );
    let st = status(root, "acme", "plugins", "viewer").expect("status");
    assert_eq!(st.held, Some(two.id));
    assert_eq!(
        fs::read_to_string(module_dir(root).join(".viewer.held")).expect("hold file"),
        two.id.to_hex()
    );
    assert_eq!(
        module_entries(root),
        vec![
            ".viewer.held",
            ".viewer.previous",
            ".viewer.versions",
            "viewer"
        ],
        "no temporary file or swap link is left"
    );

    // Rolling back again (forward) holds the other one.
    rollback(root, "acme", "plugins", "viewer").expect("roll forward");
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(one.id)
    );

    let (three, c3) = update("3.0", &[("bin/viewer", 0o755, b"three")]);
    put(root, &three, &c3).expect("v3");
    assert_eq!(held(root, "acme", "plugins", "viewer").expect("held"), None);
    assert!(!module_dir(root).join(".viewer.held").exists());
}

#[test]
fn switching_back_keeps_the_hold_and_asking_for_the_held_update_ends_it() {
    let dir = tmp();
    let root = dir.path();
    let (one, c1) = v1();
    let (two, c2) = v2();
    put(root, &one, &c1).expect("v1");
    put(root, &two, &c2).expect("v2");

    // A rollback that crashed after its hold, before the links: switching to the
    // previous version finishes it, and the hold stays.
    hold(root, "acme", "plugins", "viewer", &two.id).expect("hold");
    let outcome = put(root, &one, &c1).expect("v1 again");
    assert!(
        matches!(outcome, Installed::Reactivated { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(two.id)
    );
    // The current one asked for again: nothing changes.
    put(root, &one, &c1).expect("v1 once more");
    assert_eq!(
        held(root, "acme", "plugins", "viewer").expect("held"),
        Some(two.id)
    );
    // The held update asked for by hand: the hold ends.
    let outcome = put(root, &two, &c2).expect("v2 by hand");
    assert!(
        matches!(outcome, Installed::Reactivated { .. }),
        "{outcome:?}"
    );
    assert_eq!(held(root, "acme", "plugins", "viewer").expect("held"), None);
}

/// The steps of a rollback from v2 to v1, in their order (see the module doc).
fn rollback_step(m: &Module, step: usize, from: &Hash, to: &Hash) {
    match step {
        0 => m.write_hold(from),
        1 => m.set_link(&m.swap_link(), from),
        2 => m.set_link(&m.current_link(), to),
        3 => m.set_link(&m.previous_link(), from),
        _ => remove_if_there(&m.swap_link()),
    }
    .expect("rollback step");
}

#[test]
fn a_crash_at_any_point_of_a_rollback_keeps_both_versions() {
    for crash_after in 0..=5 {
        for then in ["status", "install", "rollback"] {
            let dir = tmp();
            let root = dir.path();
            let (one, c1) = v1();
            let (two, c2) = v2();
            put(root, &one, &c1).expect("v1");
            put(root, &two, &c2).expect("v2");
            let m = viewer(root);
            for step in 0..crash_after {
                rollback_step(&m, step, &two.id, &one.id);
            }
            // `<id>` is switched by the third step: before, nothing seems done.
            let (cur, prev) = if crash_after >= 3 {
                (&one, &two)
            } else {
                (&two, &one)
            };
            let at = format!("crash after {crash_after} steps, then {then}");
            match then {
                "status" => {
                    let st = status(root, "acme", "plugins", "viewer").expect("status");
                    assert_eq!(
                        st.current.map(|c| c.update_id),
                        Some(cur.id.to_hex()),
                        "{at}"
                    );
                    assert_eq!(
                        st.previous.map(|p| p.update_id),
                        Some(prev.id.to_hex()),
                        "{at}"
                    );
                    let hold = (crash_after >= 1).then_some(two.id);
                    assert_eq!(st.held, hold, "{at}");
                    assert_eq!(
                        check(root, "acme", "plugins", "viewer").expect("check"),
                        vec![],
                        "{at}"
                    );
                    let mut both = vec![one.id.to_hex(), two.id.to_hex()];
                    both.sort();
                    assert_eq!(versions(root), both, "{at}");
                }
                "install" => {
                    let (three, c3) = update("3.0", &[("x", 0o644, b"three")]);
                    let outcome = put(root, &three, &c3).expect("v3");
                    assert!(
                        matches!(outcome, Installed::New { previous: Some(p), .. } if p == cur.id),
                        "{at}: {outcome:?}"
                    );
                    let mut kept = vec![cur.id.to_hex(), three.id.to_hex()];
                    kept.sort();
                    assert_eq!(versions(root), kept, "{at}");
                    assert!(!module_dir(root).join(".viewer.swap").exists(), "{at}");
                }
                _ => {
                    let back = rollback(root, "acme", "plugins", "viewer").expect("rollback");
                    assert_eq!(
                        back,
                        RolledBack {
                            current: prev.id,
                            previous: cur.id
                        },
                        "{at}"
                    );
                    assert_eq!(
                        held(root, "acme", "plugins", "viewer").expect("held"),
                        Some(cur.id),
                        "{at}"
                    );
                    assert_eq!(
                        module_entries(root),
                        vec![
                            ".viewer.held",
                            ".viewer.previous",
                            ".viewer.versions",
                            "viewer"
                        ],
                        "{at}"
                    );
                    assert_eq!(
                        check(root, "acme", "plugins", "viewer").expect("check"),
                        vec![],
                        "{at}"
                    );
                }
            }
        }
    }
}
