//! The daemon's answers, one type per kind of request: the daemon builds them, the admin
//! API sends them as JSON (the web UI and `openapi.json` read that JSON), and the
//! command line reads them back into the same types. A field renamed here is renamed
//! for all three.

use crate::content::Hash;
use crate::install::Problem;
use crate::net::Withdrawn;
use crate::publish::PublishOutcome;
use crate::report::{ReportView, State};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the daemon replies: its answer, or why it refused.
pub type Reply = Result<Answer, super::Refusal>;

/// `status`: the node, its neighbours, its updates and its problems.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub root: bool,
    /// The addresses it listens on.
    pub listen: Vec<String>,
    /// Where its admin API answers; none while no admin API serves it.
    pub admin: Option<String>,
    pub parent: Option<ParentStatus>,
    pub site: Option<String>,
    pub siblings: Vec<SiblingStatus>,
    pub children: Vec<ChildStatus>,
    pub redirects: u64,
    pub updates: Vec<UpdateStatus>,
    pub bad_chunks: u64,
    pub fetch_timeouts: u64,
    /// Peers or requests refused.
    pub refused: u64,
    /// The rule sets in force on its path from the root, the root's first.
    pub rules: Vec<RuleSetStatus>,
    /// Its own approvals that halted.
    pub halted: Vec<HaltedApproval>,
    pub rules_refused: u64,
    /// The bans in force.
    pub bans: Vec<BanStatus>,
    /// A client's install directory and modules.
    pub installed: Option<InstalledModules>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParentStatus {
    pub node_id: String,
    pub addr: Option<String>,
    pub connected: bool,
    /// Unix seconds since it was given up for silence, and not heard since.
    pub unresponsive_since: Option<u64>,
    pub bytes_received: u64,
    /// How far the parent's clock is ahead of this node's.
    pub clock_offset_ms: Option<i64>,
    /// What that offset means, when it matters.
    pub clock_note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiblingStatus {
    pub node_id: String,
    pub connected: bool,
    pub banned: bool,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildStatus {
    pub node_id: String,
    pub connected: bool,
    pub client: bool,
    pub groups: Vec<String>,
    pub revoked: bool,
    pub site: Option<String>,
    pub bytes_sent: u64,
}

/// One update this node took up, and how far it has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub update_id: Hash,
    pub available: bool,
    /// `tenant/category/id version`; empty while its manifest is unknown.
    pub module: String,
    pub bytes: u64,
    pub bytes_held: u64,
    pub chunks: u32,
    pub chunks_held: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes a second.
    pub rate_in: u64,
    pub rate_out: u64,
}

/// A rule set in force on the path from the root.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleSetStatus {
    pub issuer: String,
    /// This node's own.
    pub own: bool,
    pub version: u64,
    pub issued: u64,
    pub expires: u64,
    /// How many approvals it holds.
    pub approvals: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HaltedApproval {
    pub update_id: Hash,
    pub group: String,
    /// Unix seconds.
    pub at: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BanStatus {
    pub node_id: String,
    /// Unix seconds.
    pub until: u64,
    pub seconds_left: u64,
    pub offences: u64,
    /// Why, the last offence.
    pub reason: String,
}

/// `installed`, and a client's part of `status`: its install directory and modules.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstalledModules {
    pub install_dir: PathBuf,
    /// Post-install hooks run.
    pub hooks: bool,
    pub withdrawn: Withdrawn,
    pub modules: Vec<InstalledModule>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstalledModule {
    /// `tenant/category/id`.
    pub module: String,
    pub current: Option<InstalledVersion>,
    pub previous: Option<InstalledVersion>,
    /// The update rolled back from, held back until a newer version comes.
    pub held: Option<Hash>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstalledVersion {
    pub version: String,
    pub update_id: String,
    /// Unix seconds.
    pub installed_at: u64,
}

/// `token`: a one-time join token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
    /// The address in it.
    pub addr: String,
    /// Unix seconds.
    pub expires: u64,
}

/// `revoke`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokedChild {
    pub revoked: String,
}

/// `wait`: whether the update is complete on the node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaitOutcome {
    pub update_id: String,
    pub complete: bool,
}

/// `group list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupList {
    pub groups: Vec<GroupListing>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupListing {
    pub name: String,
    /// The group every child is in.
    pub built_in: bool,
    /// Unix seconds; none for the built-in group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    pub members: Vec<String>,
}

/// `group create`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupCreated {
    pub created: String,
}

/// `group delete`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupDeleted {
    pub deleted: String,
}

/// `group assign` and `group unassign`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembershipChange {
    pub group: String,
    pub node_id: String,
    /// In the group now.
    pub member: bool,
    /// It was not so before.
    pub changed: bool,
}

/// `approve`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Approved {
    pub update_id: Hash,
    pub group: String,
    pub wave_percent: f64,
    /// Unix seconds.
    pub deadline: Option<u64>,
    pub subtree: bool,
    pub rules_version: u64,
}

/// `decline`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Declined {
    pub update_id: Hash,
    pub group: String,
    pub declined: bool,
    pub rules_version: u64,
}

/// `approvals`: this node's approvals; no version while it has signed no rules.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalList {
    pub rules_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_expires: Option<u64>,
    pub approvals: Vec<ApprovalStatus>,
}

/// One approval, with how far it reaches now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalStatus {
    pub update_id: Hash,
    /// `tenant/category/id version`, when the manifest is known.
    pub module: Option<String>,
    pub group: String,
    pub wave_percent: f64,
    /// The wave in force now (the whole group once the deadline passed).
    pub effective_wave_percent: f64,
    pub deadline: Option<u64>,
    pub subtree: bool,
    pub halt: Option<HaltTerms>,
    pub halted: Option<HaltNote>,
    /// Members of the group.
    pub members: usize,
    /// Members it reaches now.
    pub reached: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HaltTerms {
    pub failures: Option<u64>,
    pub fraction_percent: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HaltNote {
    /// Unix seconds.
    pub at: u64,
    pub reason: String,
}

/// `reports`: this node's roll-up of its subtree, and each child's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubtreeReports {
    pub rollup: ReportView,
    pub children: Vec<ReportView>,
}

/// `status --tree`: the subtree, each node with its state per update.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TreeView {
    /// Reports carried too many nodes in detail: some are left out.
    pub truncated: bool,
    pub tree: TreeNode,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TreeNode {
    pub node_id: String,
    pub depth: u32,
    /// Unix seconds when its report was made.
    pub issued: u64,
    pub age_secs: u64,
    /// Unix seconds since its parent lost the connection to it.
    pub lost_since: Option<u64>,
    /// Why what it shows may no longer hold.
    pub stale: Option<String>,
    pub updates: Vec<TreeUpdate>,
    pub children: Vec<TreeNode>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TreeUpdate {
    pub update_id: Hash,
    pub state: State,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub from_parent: u64,
    pub from_siblings: u64,
    /// Why it failed, or an installer's note.
    pub reason: Option<String>,
    /// Of a failure: whether its node signed it through this part of the tree (only a
    /// proven failure counts towards a halt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven: Option<bool>,
}

/// `updates`: every update this node took up, with its rollout per group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutList {
    pub updates: Vec<UpdateRollout>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateRollout {
    pub update_id: Hash,
    pub module: Option<String>,
    pub bytes: u64,
    pub bytes_held: u64,
    pub available: bool,
    pub rollout: Vec<GroupRollout>,
}

/// One group's nodes (each member with its whole subtree) per state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRollout {
    pub group: String,
    pub members: usize,
    pub total: u64,
    pub failed_proven: u64,
    /// Downloaded or installed, of the total.
    pub done_percent: u64,
    pub available: u64,
    pub downloading: u64,
    pub downloaded: u64,
    pub installed: u64,
    pub failed: u64,
}

/// `check`: each installed module's check (and repair).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub modules: Vec<ModuleCheck>,
    /// Modules found damaged.
    pub damaged: usize,
}

/// One module's check (and repair), as `arbor check` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModuleCheck {
    pub module: String,
    pub version: String,
    pub update_id: String,
    pub problems: Vec<Problem>,
    /// The problems were repaired.
    pub repaired: bool,
    /// Some chunks were missing here: they are being fetched from the parent, and the
    /// repair completes when they arrive.
    pub waiting_for_parent: bool,
    /// Why it could not be checked.
    pub error: Option<String>,
    /// Which chunks of its update the store holds, when the repair waits for some
    /// (for the engine's installer, which fetches the rest).
    #[serde(skip)]
    pub have: Vec<bool>,
}

/// `rollback`: the version now current, and the one held back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RollbackOutcome {
    pub module: String,
    pub current: VersionRef,
    pub held: VersionRef,
    /// What became of the post-install hook.
    pub hook: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionRef {
    pub update_id: Hash,
    pub version: String,
}

/// [`Answer`], and each answer type taken out of it with `try_from` (what
/// [`crate::net::Handle::ask`] does): any other answer is the daemon's fault.
macro_rules! answers {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// The daemon's answer to a [`super::Request`]: as JSON, the answer alone (the
        /// request says which it is), or Prometheus text for
        /// [`super::Request::Metrics`].
        #[derive(Clone, Debug, Serialize)]
        #[serde(untagged)]
        pub enum Answer {
            $($variant($ty)),*
        }

        $(impl TryFrom<Answer> for $ty {
            type Error = super::Refusal;
            fn try_from(answer: Answer) -> Result<$ty, super::Refusal> {
                match answer {
                    Answer::$variant(v) => Ok(v),
                    _ => Err(super::Refusal::internal(concat!(
                        "the daemon answered with something other than ",
                        stringify!($variant)
                    ))),
                }
            }
        })*
    };
}

answers! {
    Status(Box<NodeStatus>),
    Token(IssuedToken),
    Revoked(RevokedChild),
    Published(PublishOutcome),
    Wait(WaitOutcome),
    Groups(GroupList),
    GroupCreated(GroupCreated),
    GroupDeleted(GroupDeleted),
    Membership(MembershipChange),
    Approved(Approved),
    Declined(Declined),
    Approvals(ApprovalList),
    Reports(SubtreeReports),
    Tree(TreeView),
    Updates(RolloutList),
    Metrics(String),
    Installed(InstalledModules),
    Checked(CheckOutcome),
    RolledBack(RollbackOutcome),
}
