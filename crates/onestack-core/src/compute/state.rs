//! The server state machine, as Nova reports it: `vm_state` (what the server is), `task_state`
//! (what is being done to it), and the API `status` derived from both. Pure functions, so the
//! table is tested exhaustively and by property tests.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Building,
    Active,
    Stopped,
    Paused,
    Suspended,
    /// Resized, waiting for the user to confirm or revert (VERIFY_RESIZE).
    Resized,
    Error,
    Deleted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    #[serde(rename = "scheduling")]
    Scheduling,
    #[serde(rename = "spawning")]
    Spawning,
    #[serde(rename = "powering-off")]
    PoweringOff,
    #[serde(rename = "powering-on")]
    PoweringOn,
    #[serde(rename = "rebooting")]
    Rebooting,
    #[serde(rename = "rebooting_hard")]
    RebootingHard,
    #[serde(rename = "pausing")]
    Pausing,
    #[serde(rename = "unpausing")]
    Unpausing,
    #[serde(rename = "suspending")]
    Suspending,
    #[serde(rename = "resuming")]
    Resuming,
    #[serde(rename = "image_snapshot")]
    ImageSnapshot,
    #[serde(rename = "rebuilding")]
    Rebuilding,
    #[serde(rename = "deleting")]
    Deleting,
    #[serde(rename = "resize_migrating")]
    ResizeMigrating,
    #[serde(rename = "resize_reverting")]
    ResizeReverting,
    #[serde(rename = "migrating")]
    Migrating,
}

/// What a user asks of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    Reboot { hard: bool },
    Pause,
    Unpause,
    Suspend,
    Resume,
    Snapshot,
    Rebuild,
    Resize,
    ConfirmResize,
    RevertResize,
    LiveMigrate,
    Delete,
}

pub const ALL_VM_STATES: &[VmState] = &[
    VmState::Building,
    VmState::Active,
    VmState::Stopped,
    VmState::Paused,
    VmState::Suspended,
    VmState::Resized,
    VmState::Error,
    VmState::Deleted,
];

pub const ALL_TASK_STATES: &[TaskState] = &[
    TaskState::Scheduling,
    TaskState::Spawning,
    TaskState::PoweringOff,
    TaskState::PoweringOn,
    TaskState::Rebooting,
    TaskState::RebootingHard,
    TaskState::Pausing,
    TaskState::Unpausing,
    TaskState::Suspending,
    TaskState::Resuming,
    TaskState::ImageSnapshot,
    TaskState::Rebuilding,
    TaskState::Deleting,
    TaskState::ResizeMigrating,
    TaskState::ResizeReverting,
    TaskState::Migrating,
];

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Building => "building",
            VmState::Active => "active",
            VmState::Stopped => "stopped",
            VmState::Paused => "paused",
            VmState::Suspended => "suspended",
            VmState::Resized => "resized",
            VmState::Error => "error",
            VmState::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        ALL_VM_STATES.iter().copied().find(|v| v.as_str() == s)
    }
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduling => "scheduling",
            TaskState::Spawning => "spawning",
            TaskState::PoweringOff => "powering-off",
            TaskState::PoweringOn => "powering-on",
            TaskState::Rebooting => "rebooting",
            TaskState::RebootingHard => "rebooting_hard",
            TaskState::Pausing => "pausing",
            TaskState::Unpausing => "unpausing",
            TaskState::Suspending => "suspending",
            TaskState::Resuming => "resuming",
            TaskState::ImageSnapshot => "image_snapshot",
            TaskState::Rebuilding => "rebuilding",
            TaskState::Deleting => "deleting",
            TaskState::ResizeMigrating => "resize_migrating",
            TaskState::ResizeReverting => "resize_reverting",
            TaskState::Migrating => "migrating",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        ALL_TASK_STATES.iter().copied().find(|t| t.as_str() == s)
    }
}

impl Action {
    /// The action's name in Nova's conflict message.
    pub fn name(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Reboot { .. } => "reboot",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Snapshot => "createImage",
            Action::Rebuild => "rebuild",
            Action::Resize => "resize",
            Action::ConfirmResize => "confirmResize",
            Action::RevertResize => "revertResize",
            Action::LiveMigrate => "os-migrateLive",
            Action::Delete => "delete",
        }
    }
}

/// The API `status` (`nova/api/openstack/common.py`).
pub fn status(vm: VmState, task: Option<TaskState>) -> &'static str {
    match vm {
        VmState::Building => "BUILD",
        VmState::Active => match task {
            Some(TaskState::Rebooting) => "REBOOT",
            Some(TaskState::RebootingHard) => "HARD_REBOOT",
            Some(TaskState::Rebuilding) => "REBUILD",
            Some(TaskState::ResizeMigrating) => "RESIZE",
            Some(TaskState::Migrating) => "MIGRATING",
            _ => "ACTIVE",
        },
        VmState::Stopped => match task {
            Some(TaskState::ResizeMigrating) => "RESIZE",
            _ => "SHUTOFF",
        },
        VmState::Resized => match task {
            Some(TaskState::ResizeReverting) => "REVERT_RESIZE",
            _ => "VERIFY_RESIZE",
        },
        VmState::Paused => "PAUSED",
        VmState::Suspended => "SUSPENDED",
        VmState::Error => "ERROR",
        VmState::Deleted => "DELETED",
    }
}

/// Why an action cannot run now (HTTP 409), in Nova's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict(pub String);

/// The task an action starts, if the server's state allows it (Nova's `check_instance_state`).
pub fn request(
    vm: VmState,
    task: Option<TaskState>,
    action: Action,
) -> Result<TaskState, Conflict> {
    use VmState::*;
    let (allowed_vm, allowed_task, next): (&[VmState], &[Option<TaskState>], TaskState) =
        match action {
            Action::Stop => (&[Active, Error], &[None], TaskState::PoweringOff),
            Action::Start => (&[Stopped], &[None], TaskState::PoweringOn),
            Action::Reboot { hard: false } => (&[Active], &[None], TaskState::Rebooting),
            Action::Reboot { hard: true } => (
                &[Active, Stopped, Paused, Suspended, Error],
                &[
                    None,
                    Some(TaskState::Rebooting),
                    Some(TaskState::RebootingHard),
                ],
                TaskState::RebootingHard,
            ),
            Action::Pause => (&[Active], &[None], TaskState::Pausing),
            Action::Unpause => (&[Paused], &[None], TaskState::Unpausing),
            Action::Suspend => (&[Active], &[None], TaskState::Suspending),
            Action::Resume => (&[Suspended], &[None], TaskState::Resuming),
            Action::Snapshot => (
                &[Active, Stopped, Paused, Suspended],
                &[None],
                TaskState::ImageSnapshot,
            ),
            Action::Rebuild => (&[Active, Stopped, Error], &[None], TaskState::Rebuilding),
            Action::Resize => (&[Active, Stopped], &[None], TaskState::ResizeMigrating),
            Action::RevertResize => (&[Resized], &[None], TaskState::ResizeReverting),
            Action::LiveMigrate => (&[Active], &[None], TaskState::Migrating),
            // Confirming is the controller's alone (no agent task); checked like the others.
            Action::ConfirmResize => (&[Resized], &[None], TaskState::ResizeReverting),
            // Delete is allowed in every state but deleted, whatever runs (it wins).
            Action::Delete => {
                return if vm == Deleted {
                    Err(Conflict("Instance is already deleted.".into()))
                } else {
                    Ok(TaskState::Deleting)
                };
            }
        };
    if task == Some(TaskState::Deleting) {
        return Err(Conflict(format!(
            "Cannot '{}' instance while it is in task_state deleting",
            action.name()
        )));
    }
    if !allowed_vm.contains(&vm) {
        return Err(Conflict(format!(
            "Cannot '{}' instance while it is in vm_state {}",
            action.name(),
            vm.as_str()
        )));
    }
    if !allowed_task.contains(&task) {
        let t = task.map(TaskState::as_str).unwrap_or("None");
        return Err(Conflict(format!(
            "Cannot '{}' instance while it is in task_state {t}",
            action.name()
        )));
    }
    Ok(next)
}

/// The state after the agent finished `task` on a server in `vm` (`ok` = it succeeded).
/// A failed build, rebuild or hard reboot leaves the server in ERROR; other failures leave the
/// server as it was.
pub fn complete(vm: VmState, task: TaskState, ok: bool) -> VmState {
    use TaskState::*;
    if !ok {
        return match task {
            Scheduling | Spawning | Rebuilding | RebootingHard => VmState::Error,
            // A revert that failed leaves a server that is neither flavor for sure.
            ResizeReverting => VmState::Error,
            _ => vm,
        };
    }
    match task {
        Scheduling => VmState::Building,
        Spawning | PoweringOn | Rebooting | RebootingHard | Unpausing | Resuming | Rebuilding => {
            VmState::Active
        }
        PoweringOff => VmState::Stopped,
        Pausing => VmState::Paused,
        Suspending => VmState::Suspended,
        ImageSnapshot => vm,
        Deleting => VmState::Deleted,
        ResizeMigrating => VmState::Resized,
        // Back to running; a server that was off stays off (the report's power state says).
        ResizeReverting => VmState::Active,
        // Running on the target, or (it failed) still on the source: active either way.
        Migrating => VmState::Active,
    }
}

/// The power state a server in `vm` should have once its task completes (what the agent
/// enforces): running, paused, saved to disk, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredPower {
    Running,
    Paused,
    Suspended,
    Off,
}

pub fn desired_power(vm: VmState) -> DesiredPower {
    match vm {
        VmState::Active | VmState::Building | VmState::Resized => DesiredPower::Running,
        VmState::Paused => DesiredPower::Paused,
        VmState::Suspended => DesiredPower::Suspended,
        VmState::Stopped | VmState::Error | VmState::Deleted => DesiredPower::Off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_matches_nova_state_map() {
        assert_eq!(
            status(VmState::Building, Some(TaskState::Spawning)),
            "BUILD"
        );
        assert_eq!(status(VmState::Active, None), "ACTIVE");
        assert_eq!(
            status(VmState::Active, Some(TaskState::Rebooting)),
            "REBOOT"
        );
        assert_eq!(
            status(VmState::Active, Some(TaskState::RebootingHard)),
            "HARD_REBOOT"
        );
        assert_eq!(
            status(VmState::Active, Some(TaskState::Rebuilding)),
            "REBUILD"
        );
        assert_eq!(
            status(VmState::Active, Some(TaskState::PoweringOff)),
            "ACTIVE"
        );
        assert_eq!(status(VmState::Stopped, None), "SHUTOFF");
        assert_eq!(status(VmState::Paused, None), "PAUSED");
        assert_eq!(status(VmState::Suspended, None), "SUSPENDED");
        assert_eq!(status(VmState::Error, None), "ERROR");
        assert_eq!(status(VmState::Deleted, None), "DELETED");
    }

    #[test]
    fn names_round_trip() {
        for v in ALL_VM_STATES {
            assert_eq!(VmState::parse(v.as_str()), Some(*v));
        }
        for t in ALL_TASK_STATES {
            assert_eq!(TaskState::parse(t.as_str()), Some(*t));
            let json = serde_json::to_string(t).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }

    #[test]
    fn conflicting_actions_are_refused() {
        assert!(request(VmState::Stopped, None, Action::Stop).is_err());
        assert!(request(VmState::Active, None, Action::Start).is_err());
        assert!(request(VmState::Active, Some(TaskState::Pausing), Action::Stop).is_err());
        assert!(request(VmState::Paused, None, Action::Reboot { hard: false }).is_err());
        assert_eq!(
            request(VmState::Paused, None, Action::Reboot { hard: true }),
            Ok(TaskState::RebootingHard)
        );
        assert_eq!(
            request(VmState::Building, Some(TaskState::Spawning), Action::Delete),
            Ok(TaskState::Deleting)
        );
        let e = request(VmState::Stopped, None, Action::Pause).err();
        assert_eq!(
            e,
            Some(Conflict(
                "Cannot 'pause' instance while it is in vm_state stopped".into()
            ))
        );
    }

    fn arb_action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Stop),
            Just(Action::Start),
            any::<bool>().prop_map(|hard| Action::Reboot { hard }),
            Just(Action::Pause),
            Just(Action::Unpause),
            Just(Action::Suspend),
            Just(Action::Resume),
            Just(Action::Snapshot),
            Just(Action::Rebuild),
            Just(Action::Resize),
            Just(Action::RevertResize),
            Just(Action::LiveMigrate),
            Just(Action::Delete),
        ]
    }

    /// One step of a random history: a user action, or the agent finishing the current task.
    #[derive(Clone, Debug)]
    enum Step {
        Ask(Action),
        Finish(bool),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            arb_action().prop_map(Step::Ask),
            any::<bool>().prop_map(Step::Finish)
        ]
    }

    proptest! {
        /// Whatever happens, a server has at most one task, a task is only started from a state
        /// that allows it, status is always one Terraform accepts, and deleted is terminal.
        #[test]
        fn random_histories_keep_the_invariants(steps in prop::collection::vec(arb_step(), 0..60)) {
            let mut vm = VmState::Building;
            let mut task = Some(TaskState::Spawning);
            for step in steps {
                let before = (vm, task);
                match step {
                    Step::Ask(a) => match request(vm, task, a) {
                        Ok(t) => {
                            // Only delete and hard reboot may replace a running task.
                            if task.is_some() {
                                let may_replace = matches!(a, Action::Delete | Action::Reboot { hard: true });
                                prop_assert!(may_replace, "{:?} replaced a running task", a);
                            }
                            task = Some(t);
                        }
                        Err(_) => prop_assert_eq!((vm, task), before),
                    },
                    Step::Finish(ok) => {
                        if let Some(t) = task {
                            vm = complete(vm, t, ok);
                            task = None;
                        }
                    }
                }
                prop_assert!(["BUILD", "ACTIVE", "REBOOT", "HARD_REBOOT", "REBUILD", "SHUTOFF",
                    "PAUSED", "SUSPENDED", "ERROR", "DELETED", "RESIZE", "VERIFY_RESIZE",
                    "REVERT_RESIZE", "MIGRATING"].contains(&status(vm, task)));
                if before.0 == VmState::Deleted {
                    prop_assert_eq!(vm, VmState::Deleted);
                }
                if vm == VmState::Deleted {
                    prop_assert!(task.is_none());
                    prop_assert!(request(vm, task, Action::Delete).is_err());
                }
            }
        }

        /// A successful task lands in the state its action names.
        #[test]
        fn successful_actions_reach_their_target(vm_i in 0usize..7, a in arb_action()) {
            let vm = ALL_VM_STATES[vm_i];
            if let Ok(t) = request(vm, None, a) {
                let after = complete(vm, t, true);
                let want = match a {
                    Action::Stop => VmState::Stopped,
                    Action::Pause => VmState::Paused,
                    Action::Suspend => VmState::Suspended,
                    Action::Snapshot => vm,
                    Action::Delete => VmState::Deleted,
                    Action::Resize => VmState::Resized,
                    _ => VmState::Active,
                };
                prop_assert_eq!(after, want);
            }
        }
    }
}
