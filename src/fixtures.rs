//! Builders of views for tests and benchmarks: `pod("ns", "p").claim("c")`,
//! `slice("s", "driver", "pool").device("gpu-0").taint(..)`. Not part of the product's API.

use crate::view::{
    AllocatedDevice, ClaimView, DeviceId, DeviceView, Effect, Operator, PodClaim, PodView, PoolId, RuleView,
    Selector, SliceView, Taint, Time, Toleration,
};

/// A time `secs` seconds after the Unix epoch: the tests' virtual clock.
#[must_use]
pub fn t(secs: i64) -> Time {
    Time::from_second(secs).unwrap_or(Time::UNIX_EPOCH)
}

/// A taint.
#[must_use]
pub fn taint(key: &str, value: &str, effect: &str, added: Option<Time>) -> Taint {
    Taint {
        key: key.into(),
        value: value.into(),
        effect: Effect::parse(effect),
        time_added: added,
    }
}

/// A toleration; `op` is `Exists` or `Equal`, `effect` empty matches all effects.
#[must_use]
pub fn toleration(key: &str, op: &str, value: &str, effect: &str, seconds: Option<i64>) -> Toleration {
    Toleration {
        key: key.into(),
        operator: match op {
            "Exists" => Operator::Exists,
            "" | "Equal" => Operator::Equal,
            other => Operator::Unknown(other.into()),
        },
        value: value.into(),
        effect: (!effect.is_empty()).then(|| Effect::parse(effect)),
        toleration_seconds: seconds,
    }
}

/// A scheduled pod without claims; uid `uid-<name>`.
#[must_use]
pub fn pod(namespace: &str, name: &str) -> PodView {
    PodView {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        scheduled: true,
        terminal: false,
        terminating: false,
        priority: 0,
        disruption_target: false,
        pod_group: None,
        claims: Vec::new(),
    }
}

impl PodView {
    /// With this `spec.priority`.
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// With this UID.
    #[must_use]
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.uid = uid.into();
        self
    }

    /// Using a claim by name.
    #[must_use]
    pub fn with_claim(mut self, claim: &str) -> Self {
        self.claims.push(PodClaim {
            claim: claim.into(),
            generated: false,
        });
        self
    }

    /// Using a claim generated for it (template or extended resource).
    #[must_use]
    pub fn with_generated_claim(mut self, claim: &str) -> Self {
        self.claims.push(PodClaim {
            claim: claim.into(),
            generated: true,
        });
        self
    }

    /// Not scheduled.
    #[must_use]
    pub fn unscheduled(mut self) -> Self {
        self.scheduled = false;
        self
    }

    /// Succeeded or failed.
    #[must_use]
    pub fn finished(mut self) -> Self {
        self.terminal = true;
        self
    }

    /// Being deleted.
    #[must_use]
    pub fn terminating(mut self) -> Self {
        self.terminating = true;
        self
    }

    /// A member of this PodGroup.
    #[must_use]
    pub fn in_pod_group(mut self, group: &str) -> Self {
        self.pod_group = Some(group.into());
        self
    }
}

/// An unallocated claim; uid `uid-<name>`.
#[must_use]
pub fn claim(namespace: &str, name: &str) -> ClaimView {
    ClaimView {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller_uid: None,
        controller_pod_group: None,
        allocation: None,
        reserved_for: Vec::new(),
        reserved_for_groups: Vec::new(),
    }
}

impl ClaimView {
    /// With this UID.
    #[must_use]
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.uid = uid.into();
        self
    }

    /// Allocated a device (adds to the allocation).
    #[must_use]
    pub fn with_device(mut self, driver: &str, pool: &str, device: &str) -> Self {
        self.allocation
            .get_or_insert_with(Vec::new)
            .push(AllocatedDevice {
                device: DeviceId::new(driver, pool, device),
                tolerations: Vec::new(),
            });
        self
    }

    /// A toleration on the last allocated device.
    #[must_use]
    pub fn with_toleration(mut self, toleration: Toleration) -> Self {
        if let Some(last) = self.allocation.as_mut().and_then(|a| a.last_mut()) {
            last.tolerations.push(toleration);
        }
        self
    }

    /// Reserved for a pod.
    #[must_use]
    pub fn reserved_for(mut self, pod: &PodView) -> Self {
        self.reserved_for.push((pod.name.clone(), pod.uid.clone()));
        self
    }

    /// Reserved for a PodGroup.
    #[must_use]
    pub fn reserved_for_pod_group(mut self, group: &str) -> Self {
        self.reserved_for_groups.push(group.into());
        self
    }

    /// Controlled by a PodGroup (a claim generated for the group).
    #[must_use]
    pub fn owned_by_pod_group(mut self, group: &str) -> Self {
        self.controller_pod_group = Some(group.into());
        self.controller_uid = Some(format!("uid-{group}"));
        self
    }

    /// Controlled by a pod (a generated claim).
    #[must_use]
    pub fn owned_by(mut self, pod: &PodView) -> Self {
        self.controller_uid = Some(pod.uid.clone());
        self
    }

    /// Allocation removed.
    #[must_use]
    pub fn deallocated(mut self) -> Self {
        self.allocation = None;
        self
    }
}

/// An empty slice of generation 1.
#[must_use]
pub fn slice(name: &str, driver: &str, pool: &str) -> SliceView {
    SliceView {
        name: name.into(),
        pool: PoolId {
            driver: driver.into(),
            pool: pool.into(),
        },
        generation: 1,
        devices: Vec::new(),
    }
}

impl SliceView {
    /// With this pool generation.
    #[must_use]
    pub fn with_generation(mut self, generation: i64) -> Self {
        self.generation = generation;
        self
    }

    /// With an untainted device.
    #[must_use]
    pub fn with_device(mut self, name: &str) -> Self {
        self.devices.push(DeviceView {
            name: name.into(),
            taints: Vec::new(),
        });
        self
    }

    /// A taint on the last device.
    #[must_use]
    pub fn with_taint(mut self, taint: Taint) -> Self {
        if let Some(last) = self.devices.last_mut() {
            last.taints.push(taint);
        }
        self
    }
}

/// A rule without selector (selects nothing) and a `NoExecute` taint `k=v` added at `t(0)`;
/// uid `uid-<name>`, generation 1.
#[must_use]
pub fn rule(name: &str) -> RuleView {
    RuleView {
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: 1,
        selector: None,
        taint: taint("k", "v", "NoExecute", Some(t(0))),
        condition: None,
        unknown_selector_fields: Vec::new(),
        accept: None,
    }
}

impl RuleView {
    /// With this UID.
    #[must_use]
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.uid = uid.into();
        self
    }

    /// Selecting by driver, pool and device (`None` is a wildcard).
    #[must_use]
    pub fn selecting(mut self, driver: Option<&str>, pool: Option<&str>, device: Option<&str>) -> Self {
        self.selector = Some(Selector {
            driver: driver.map(Into::into),
            pool: pool.map(Into::into),
            device: device.map(Into::into),
        });
        self
    }

    /// With the acceptance annotation (SPEC D11); an annotation change keeps the generation.
    #[must_use]
    pub fn accepting(mut self, accept: Option<usize>) -> Self {
        self.accept = accept;
        self
    }

    /// With this taint; bumps the generation as the API server would.
    #[must_use]
    pub fn with_taint(mut self, taint: Taint) -> Self {
        self.taint = taint;
        self.generation += 1;
        self
    }
}

/// The `events.k8s.io/v1` Event a new Event about `reference` is (k8s-openapi's type, every
/// field copied): what [`crate::actuator::event_body`] must write, and what it is measured against.
#[must_use]
pub fn openapi_event(
    reporter: &kube::runtime::events::Reporter,
    event: &kube::runtime::events::Event,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    now: Time,
) -> k8s_openapi::api::events::v1::Event {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    k8s_openapi::api::events::v1::Event {
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        note: event.note.clone(),
        metadata: ObjectMeta {
            namespace: Some(reference.namespace.clone().unwrap_or_else(|| "default".into())),
            name: Some(format!(
                "{}.{:x}",
                reference.name.as_deref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..ObjectMeta::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match event.type_ {
                kube::runtime::events::EventType::Normal => "Normal",
                kube::runtime::events::EventType::Warning => "Warning",
            }
            .into(),
        ),
        related: event.secondary.clone(),
        ..k8s_openapi::api::events::v1::Event::default()
    }
}
