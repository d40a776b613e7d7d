//! The `[[update]]` entries of a scenario: an update's size, files, publish time and
//! failure rate, and for a new version of a module, the version it replaces (`base`),
//! the share of its bytes that changed (`change`) and in how many places (`edits`).
//! A module's versions form one line, each listed after the one it replaces, and share
//! its size and files.

use super::{Checker, MAX_UPDATE_CHUNKS, ScenarioError, Text, Update};
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

/// Most places one new version may be changed in.
const MAX_EDITS: i64 = 1 << 24;

/// What makes an update a new version of another: the version it replaces and what
/// changed since.
#[derive(Clone, Debug, PartialEq)]
pub struct NewVersion {
    /// Index into [`super::Scenario::updates`]: always an earlier entry.
    pub base: usize,
    /// The share of the bytes rewritten.
    pub change: f64,
    /// The evenly spaced places the rewritten bytes are in.
    pub edits: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpdate {
    name: Text,
    #[serde(default)]
    size: Option<Text>,
    #[serde(default)]
    files: Option<Spanned<i64>>,
    #[serde(default)]
    at: Option<Text>,
    #[serde(default)]
    fail: Option<Text>,
    #[serde(default)]
    base: Option<Text>,
    #[serde(default)]
    change: Option<Text>,
    #[serde(default)]
    edits: Option<Spanned<i64>>,
}

/// Where the first of two optional values is, if either is given.
fn given<A, B>(a: &Option<Spanned<A>>, b: &Option<Spanned<B>>) -> Option<Range<usize>> {
    a.as_ref()
        .map(Spanned::span)
        .or(b.as_ref().map(Spanned::span))
}

impl Checker<'_> {
    /// The updates, in file order; `chunk` is the scenario's chunk size.
    pub(super) fn updates(
        &self,
        raw: &[Spanned<RawUpdate>],
        chunk: u32,
    ) -> Result<Vec<Update>, ScenarioError> {
        let mut updates: Vec<Update> = Vec::new();
        for entry in raw {
            let span = entry.span();
            let u = entry.get_ref();
            let name = u.name.get_ref().clone();
            if let Err(e) = crate::content::names::check_name("update name", &name) {
                return self.err(u.name.span(), e.to_string());
            }
            if updates.iter().any(|o| o.name == name) {
                return self.err(u.name.span(), format!("update {name:?} is listed twice"));
            }
            let version_of = self.new_version(u, &name, &updates, raw)?;
            let (size, files) = match &version_of {
                Some(v) => {
                    if let Some(given) = given(&u.size, &u.files) {
                        return self.err(
                            given,
                            "a new version has the size and files of the version it replaces: leave `size` and `files` out",
                        );
                    }
                    (updates[v.base].size, updates[v.base].files)
                }
                None => {
                    let Some(size) = &u.size else {
                        return self.err(span, "this [[update]] needs `size`");
                    };
                    let size = self.size(size, "size")?;
                    if size.div_ceil(u64::from(chunk)) > MAX_UPDATE_CHUNKS {
                        return self.err(
                            u.size.as_ref().map_or(span, Spanned::span),
                            format!("{size} bytes in chunks of {chunk} is over {MAX_UPDATE_CHUNKS} chunks: use a larger chunk"),
                        );
                    }
                    let files = match &u.files {
                        Some(v) => {
                            let most = size.min(crate::content::manifest::MAX_FILES as u64) as i64;
                            self.count(v, "files", 1..most + 1)? as u32
                        }
                        None => 1,
                    };
                    (size, files)
                }
            };
            updates.push(Update {
                name,
                size,
                files,
                at: u
                    .at
                    .as_ref()
                    .map(|v| self.duration(v, "at"))
                    .transpose()?
                    .unwrap_or(0),
                fail: u
                    .fail
                    .as_ref()
                    .map(|v| self.share(v, "fail"))
                    .transpose()?
                    .unwrap_or(0.0),
                version_of,
            });
        }
        Ok(updates)
    }

    /// What makes `u` a new version, if it is one: `base`, `change` and `edits`, checked
    /// against the updates listed before it (`earlier`) and after it.
    fn new_version(
        &self,
        u: &RawUpdate,
        name: &str,
        earlier: &[Update],
        all: &[Spanned<RawUpdate>],
    ) -> Result<Option<NewVersion>, ScenarioError> {
        let Some(base) = &u.base else {
            if let Some(given) = given(&u.change, &u.edits) {
                return self.err(
                    given,
                    "`change` and `edits` describe a new version: name the version it replaces with `base`",
                );
            }
            return Ok(None);
        };
        let wanted = base.get_ref();
        let Some(b) = earlier.iter().position(|o| &o.name == wanted) else {
            let message = if wanted == name {
                format!("update {name:?} cannot be a new version of itself")
            } else if all.iter().any(|o| o.get_ref().name.get_ref() == wanted) {
                format!(
                    "base {wanted:?} is listed after {name:?}: list each version after the one it replaces (a module's versions cannot go round in a circle)"
                )
            } else {
                format!("base {wanted:?}: no [[update]] of that name")
            };
            return self.err(base.span(), message);
        };
        if let Some(later) = earlier
            .iter()
            .find(|o| o.version_of.as_ref().is_some_and(|v| v.base == b))
        {
            return self.err(
                base.span(),
                format!(
                    "{wanted:?} is already replaced by {:?}: a module's versions form one line, so name the newest as `base`",
                    later.name
                ),
            );
        }
        let Some(change) = &u.change else {
            return self.err(
                base.span(),
                "a new version needs `change`: the share of its bytes that differ from its base, such as \"5%\"",
            );
        };
        let change = self.share(change, "change")?;
        let edits = match &u.edits {
            Some(v) => self.count(v, "edits", 1..MAX_EDITS + 1)? as u32,
            None => 1,
        };
        let changed = (earlier[b].size as f64 * change).round() as u64;
        if changed > 0 && changed < u64::from(edits) {
            return self.err(
                u.edits.as_ref().map_or(base.span(), Spanned::span),
                format!("{edits} edits cannot share {changed} changed bytes: at most one edit per changed byte"),
            );
        }
        Ok(Some(NewVersion {
            base: b,
            change,
            edits,
        }))
    }
}
