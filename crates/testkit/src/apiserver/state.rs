//! The double's state and every operation on it, independent of HTTP.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::merge::{json_patch, leaves, merge_patch, server_side_apply};
use super::resources::{ResourceType, get_path, set_path};
use super::schema::{Cause, admit};
use super::selector::{FieldSelector, LabelSelector};

/// An API error, rendered as a `meta/v1` Status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
            details: None,
        }
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(rt)),
        )
    }

    pub fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `deployments.apps`, `configmaps`, `satellites.skylift.io`.
fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

/// The kind of a change, as a watch reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change, kept in the watch log.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub kind: ChangeKind,
    pub object: Value,
    pub previous: Option<Value>,
}

/// Which subresource a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
    Scale,
}

impl Subresource {
    pub fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        match text {
            None => Ok(Subresource::Main),
            Some("status") => Ok(Subresource::Status),
            Some("scale") => Ok(Subresource::Scale),
            Some(other) => Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({other})"),
            )),
        }
    }
}

/// Patch flavours by content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Apply,
    Merge,
    StrategicMerge,
    /// RFC 6902 (`application/json-patch+json`).
    Json,
}

type ObjectKey = (String, String, String, String); // group, plural, namespace, name

/// What kube-apiserver authorizes a request by (its RBAC attributes), and who made it:
/// the bearer token, when the client sent one (the double takes the token for the user).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestAttributes {
    pub user: Option<String>,
    /// get, list, watch, create, update, patch, delete.
    pub verb: String,
    pub group: String,
    /// The plural, with `/subresource` when there is one.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Counters of mutating requests, for tests and benchmarks ("zero writes when idle").
#[derive(Clone, Debug, Default)]
pub struct WriteStats {
    /// `VERB resource[/subresource]` → count, e.g. `PATCH deployments`, `PATCH satellites/status`.
    pub by_request: BTreeMap<String, u64>,
    /// Writes that changed nothing (no new resourceVersion).
    pub no_ops: u64,
}

impl WriteStats {
    pub fn total(&self) -> u64 {
        self.by_request.values().sum()
    }

    /// Writes excluding leader-election Lease renewals.
    pub fn total_excluding_leases(&self) -> u64 {
        self.by_request
            .iter()
            .filter(|(k, _)| !k.ends_with(" leases"))
            .map(|(_, v)| v)
            .sum()
    }
}

struct Inner {
    types: Vec<ResourceType>,
    objects: BTreeMap<ObjectKey, Value>,
    /// Last configuration each field manager applied, per object and subresource.
    applied: HashMap<(ObjectKey, String, bool), Value>,
    rv: u64,
    log: VecDeque<Arc<Change>>,
    uid_counter: u64,
    writes: WriteStats,
    /// Every resource request served, once per distinct set of attributes.
    requests: std::collections::BTreeSet<RequestAttributes>,
    /// Webhook calls that failed under `failurePolicy: Ignore`: (webhook, reason).
    webhook_failures: Vec<(String, String)>,
}

impl Inner {
    /// The stored object at `key`, or kube-apiserver's NotFound for it.
    fn existing(&self, rt: &ResourceType, key: &ObjectKey) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, &key.3))
    }
}

/// Shared state of one API-server double.
pub struct State {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    /// Bearer tokens TokenReview accepts: token → (user name, groups).
    tokens: Mutex<HashMap<String, (String, Vec<String>)>>,
}

const LOG_LIMIT: usize = 1_000_000;

impl Default for State {
    fn default() -> Self {
        let (changes, _) = broadcast::channel(65_536);
        let state = State {
            inner: Mutex::new(Inner {
                types: ResourceType::builtins(),
                objects: BTreeMap::new(),
                applied: HashMap::new(),
                rv: 1,
                log: VecDeque::new(),
                uid_counter: 0,
                writes: WriteStats::default(),
                requests: Default::default(),
                webhook_failures: Vec::new(),
            }),
            changes,
            tokens: Mutex::new(HashMap::new()),
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            state
                .create("", "namespaces", None, namespace)
                .expect("a fresh store accepts namespaces");
        }
        state.inner().writes = WriteStats::default();
        state
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The object without the fields every write rewrites, to tell real changes from no-ops.
fn comparable(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    copy
}

/// The object without metadata and status: what moves `metadata.generation`.
fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(fields) = copy.as_object_mut() {
        fields.remove("metadata");
        fields.remove("status");
    }
    copy
}

impl State {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("state lock is never poisoned")
    }

    /// Makes TokenReview accept `token` as `user` in `groups` (plus `system:authenticated`,
    /// as kube-apiserver adds).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        self.tokens
            .lock()
            .expect("never poisoned")
            .insert(token.into(), (user.into(), groups));
    }

    /// The user a bearer token belongs to.
    pub fn token_user(&self, token: &str) -> Option<(String, Vec<String>)> {
        self.tokens
            .lock()
            .expect("never poisoned")
            .get(token)
            .cloned()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    pub fn write_stats(&self) -> WriteStats {
        self.inner().writes.clone()
    }

    /// Remembers a request's authorization attributes.
    /// Every object of a type, across namespaces.
    pub fn list_all(&self, group: &str, plural: &str) -> Result<Vec<Value>, ApiError> {
        self.list(
            group,
            plural,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .map(|(items, _)| items)
    }

    /// A webhook call that failed and was ignored (`failurePolicy: Ignore`).
    pub fn record_webhook_failure(&self, webhook: &str, reason: &str) {
        self.inner()
            .webhook_failures
            .push((webhook.into(), reason.into()));
    }

    /// Webhook calls that failed and were ignored: (webhook, reason).
    pub fn webhook_failures(&self) -> Vec<(String, String)> {
        self.inner().webhook_failures.clone()
    }

    pub fn record_request(&self, attributes: RequestAttributes) {
        self.inner().requests.insert(attributes);
    }

    /// The distinct requests served so far.
    pub fn requests(&self) -> Vec<RequestAttributes> {
        self.inner().requests.iter().cloned().collect()
    }

    pub fn count_write(&self, request: String) {
        *self.inner().writes.by_request.entry(request).or_default() += 1;
    }

    pub fn resource_version(&self) -> u64 {
        self.inner().rv
    }

    /// Finds a served type by group, version and plural.
    pub fn resource_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.inner()
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    pub fn resource_types(&self) -> Vec<ResourceType> {
        self.inner().types.clone()
    }

    fn type_of(&self, group: &str, plural: &str) -> Result<ResourceType, ApiError> {
        self.inner()
            .types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("the server could not find the requested resource ({plural}.{group})"),
                )
            })
    }

    fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
        (
            rt.group.clone(),
            rt.plural.clone(),
            namespace.unwrap_or_default().to_string(),
            name.to_string(),
        )
    }

    pub fn get(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(group, plural)?;
        self.inner().existing(&rt, &Self::key(&rt, namespace, name))
    }

    /// Objects of a type (in a namespace or all), filtered by selectors, with the list's
    /// resourceVersion.
    pub fn list(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let rt = self.type_of(group, plural)?;
        let inner = self.inner();
        let items = inner
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                *g == rt.group && *p == rt.plural && namespace.is_none_or(|n| n == ns)
            })
            .map(|(_, v)| v)
            .filter(|v| labels.matches(v) && fields.matches(v))
            .cloned()
            .collect();
        Ok((items, inner.rv))
    }

    /// Changes after `rv` (for a watch starting there), or 410 Gone when the log no longer
    /// reaches back that far, plus a receiver for the changes that follow.
    #[allow(clippy::type_complexity)]
    pub fn watch_from(
        &self,
        rv: u64,
    ) -> Result<(Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>), ApiError> {
        let inner = self.inner();
        let receiver = self.changes.subscribe();
        if let Some(oldest) = inner.log.front()
            && rv + 1 < oldest.rv
        {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", oldest.rv - 1),
            ));
        }
        let backlog = inner.log.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((backlog, receiver))
    }

    fn namespace_exists(inner: &Inner, namespace: &str) -> bool {
        inner.objects.contains_key(&(
            String::new(),
            "namespaces".into(),
            String::new(),
            namespace.into(),
        ))
    }

    /// Validates a custom resource against its schema and CEL rules, as admission does.
    fn admit(
        rt: &ResourceType,
        name: &str,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(schema) = &rt.schema else {
            return Ok(());
        };
        let causes = admit(schema, object, old);
        if causes.is_empty() {
            return Ok(());
        }
        Err(invalid(rt, name, &causes))
    }

    /// Records a change: assigns the resourceVersion, logs it and tells the watchers.
    fn commit(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        key: ObjectKey,
        kind: ChangeKind,
        mut object: Value,
        previous: Option<Value>,
    ) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        match kind {
            ChangeKind::Deleted => {
                inner.objects.remove(&key);
                inner.applied.retain(|(k, _, _), _| *k != key);
            }
            _ => {
                inner.objects.insert(key.clone(), object.clone());
            }
        }
        let change = Arc::new(Change {
            rv,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: (!key.2.is_empty()).then(|| key.2.clone()),
            kind,
            object: object.clone(),
            previous,
        });
        inner.log.push_back(change.clone());
        if inner.log.len() > LOG_LIMIT {
            inner.log.pop_front();
        }
        let _ = self.changes.send(change);
        if rt.kind == "CustomResourceDefinition" && kind != ChangeKind::Deleted {
            for new_type in ResourceType::from_crd(&object) {
                inner
                    .types
                    .retain(|t| !(t.group == new_type.group && t.plural == new_type.plural));
                inner.types.push(new_type);
            }
        }
        object
    }

    pub fn create(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(group, plural)?;
        let mut inner = self.inner();
        let name = object["metadata"]["name"]
            .as_str()
            .map(String::from)
            .unwrap_or_default();
        if name.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    rt.kind
                ),
            ));
        }
        let namespace = if rt.namespaced {
            namespace
                .or(object["metadata"]["namespace"].as_str())
                .map(String::from)
        } else {
            None
        };
        if rt.namespaced {
            let ns = namespace.clone().unwrap_or_default();
            if !Self::namespace_exists(&inner, &ns) {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("namespaces \"{ns}\" not found"),
                ));
            }
            object["metadata"]["namespace"] = json!(ns);
        }
        let key = Self::key(&rt, namespace.as_deref(), &name);
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        inner.uid_counter += 1;
        object["metadata"]["uid"] = json!(format!(
            "00000000-0000-4000-8000-{:012x}",
            inner.uid_counter
        ));
        object["metadata"]["creationTimestamp"] = json!(now());
        if rt.has_generation {
            object["metadata"]["generation"] = json!(1);
        }
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
        }
        if rt.status_subresource
            && let Some(fields) = object.as_object_mut()
        {
            // A create never sets status where status has its own subresource.
            fields.remove("status");
        }
        // As in kube-apiserver, an invalid object is refused (422) before storage finds
        // the name taken (409).
        Self::admit(&rt, &name, &mut object, None)?;
        if inner.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(&rt)),
            ));
        }
        Ok(self.commit(&mut inner, &rt, key, ChangeKind::Added, object, None))
    }

    /// Stores `new` in place of `old`, with kube-apiserver's bookkeeping; a write that
    /// changes nothing keeps the old resourceVersion and notifies no watcher.
    fn update_locked(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        key: ObjectKey,
        old: Value,
        mut new: Value,
    ) -> Result<Value, ApiError> {
        // Identity and bookkeeping fields are the server's.
        for field in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
        ] {
            match old["metadata"].get(field) {
                Some(value) => new["metadata"][field] = value.clone(),
                None => {
                    if let Some(meta) = new["metadata"].as_object_mut() {
                        meta.remove(field);
                    }
                }
            }
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
        if rt.has_generation {
            new["metadata"]["generation"] = json!(generation);
        }
        Self::admit(rt, &key.3, &mut new, Some(&old))?;
        if rt.has_generation && spec_part(&new) != spec_part(&old) {
            new["metadata"]["generation"] = json!(generation + 1);
        }
        if comparable(&new) == comparable(&old) {
            inner.writes.no_ops += 1;
            return Ok(old);
        }
        let finalized = new["metadata"].get("deletionTimestamp").is_some()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        let kind = if finalized {
            ChangeKind::Deleted
        } else {
            ChangeKind::Modified
        };
        let committed = self.commit(inner, rt, key, kind, new, Some(old));
        if finalized {
            self.collect_dependents(inner, &committed);
        }
        Ok(committed)
    }

    /// Replaces an object (PUT). A stale `metadata.resourceVersion` is a conflict.
    pub fn replace(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        sub: Subresource,
        body: Value,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(group, plural)?;
        if sub == Subresource::Scale {
            return self.write_scale(&rt, namespace, name, |scale| *scale = body.clone());
        }
        let mut inner = self.inner();
        let key = Self::key(&rt, namespace, name);
        let old = inner.existing(&rt, &key)?;
        check_resource_version(&rt, name, &body, &old)?;
        let new = self.with_subresource_rules(&rt, sub, &old, body);
        self.update_locked(&mut inner, &rt, key, old, new)
    }

    /// Keeps status out of main-resource writes and everything but status out of status
    /// writes, for types that have a status subresource.
    fn with_subresource_rules(
        &self,
        rt: &ResourceType,
        sub: Subresource,
        old: &Value,
        new: Value,
    ) -> Value {
        if !rt.status_subresource {
            return new;
        }
        match sub {
            Subresource::Main => with_status_of(new, old),
            Subresource::Status => with_status_of(old.clone(), &new),
            Subresource::Scale => new,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        sub: Subresource,
        kind: PatchKind,
        body: Value,
        manager: Option<&str>,
        force: bool,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(group, plural)?;
        if sub == Subresource::Scale {
            return self.write_scale(&rt, namespace, name, |scale| merge_patch(scale, &body));
        }
        if kind == PatchKind::Apply {
            let Some(manager) = manager.filter(|m| !m.is_empty()) else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
                ));
            };
            return self.apply(&rt, namespace, name, sub, body, manager, force);
        }
        let mut inner = self.inner();
        let key = Self::key(&rt, namespace, name);
        let old = inner.existing(&rt, &key)?;
        let mut patched = old.clone();
        if kind == PatchKind::Json {
            json_patch(&mut patched, &body)?;
        } else {
            check_resource_version(&rt, name, &body, &old)?;
            merge_patch(&mut patched, &body);
        }
        let new = self.with_subresource_rules(&rt, sub, &old, patched);
        self.update_locked(&mut inner, &rt, key, old, new)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        sub: Subresource,
        mut body: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        body["metadata"]["name"] = json!(name);
        let status_write = sub == Subresource::Status;
        if rt.status_subresource
            && !status_write
            && let Some(fields) = body.as_object_mut()
        {
            fields.remove("status");
        }
        let key = Self::key(rt, namespace, name);
        let existing = self.inner().objects.get(&key).cloned();
        let Some(old) = existing else {
            if status_write {
                return Err(ApiError::not_found(rt, name));
            }
            let created = self.create(&rt.group, &rt.plural, namespace, body.clone())?;
            self.inner()
                .applied
                .insert((key, manager.into(), false), body);
            return Ok(created);
        };
        let mut inner = self.inner();
        if !force {
            let mut wanted = Vec::new();
            leaves(&body, "", &mut wanted);
            for ((k, other, s), theirs) in &inner.applied {
                if *k != key || other == manager || *s != status_write {
                    continue;
                }
                let mut owned = Vec::new();
                leaves(theirs, "", &mut owned);
                if let Some((path, _)) = wanted
                    .iter()
                    .find(|(p, v)| owned.iter().any(|(op, ov)| op == p && ov != v))
                {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!("Apply failed with 1 conflict: conflict with \"{other}\": {path}"),
                    ));
                }
            }
        }
        let previous = inner
            .applied
            .get(&(key.clone(), manager.to_string(), status_write))
            .cloned();
        let merged = server_side_apply(&old, previous.as_ref(), &body);
        let new = self.with_subresource_rules(rt, sub, &old, merged);
        let result = self.update_locked(&mut inner, rt, key.clone(), old, new)?;
        inner
            .applied
            .insert((key, manager.into(), status_write), body);
        Ok(result)
    }

    /// The autoscaling/v1 Scale of an object with a scale subresource.
    pub fn scale(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(group, plural)?;
        let object = self.get(group, plural, namespace, name)?;
        scale_of(&rt, &object)
    }

    fn write_scale(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let paths = rt.scale.clone().ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            )
        })?;
        let mut inner = self.inner();
        let key = Self::key(rt, namespace, name);
        let old = inner.existing(rt, &key)?;
        let mut scale = scale_of(rt, &old)?;
        change(&mut scale);
        let replicas = scale["spec"]["replicas"].as_i64().ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Required value"),
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                ),
            ));
        }
        let mut new = old.clone();
        set_path(&mut new, &paths.spec_replicas, json!(replicas));
        let updated = self.update_locked(&mut inner, rt, key, old, new)?;
        scale_of(rt, &updated)
    }

    pub fn delete(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(group, plural)?;
        let mut inner = self.inner();
        let key = Self::key(&rt, namespace, name);
        let old = inner.existing(&rt, &key)?;
        if old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            if old["metadata"].get("deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            return Ok(self.commit(
                &mut inner,
                &rt,
                key,
                ChangeKind::Modified,
                marked,
                Some(old),
            ));
        }
        let deleted = self.commit(
            &mut inner,
            &rt,
            key,
            ChangeKind::Deleted,
            old.clone(),
            Some(old),
        );
        self.collect_dependents(&mut inner, &deleted);
        Ok(deleted)
    }

    /// What kube-controller-manager's garbage collector does: objects whose owner is gone
    /// are deleted (in the background, here at once).
    fn collect_dependents(&self, inner: &mut Inner, owner: &Value) {
        let Some(uid) = owner["metadata"]["uid"].as_str().map(String::from) else {
            return;
        };
        let dependents: Vec<ObjectKey> = inner
            .objects
            .iter()
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str()))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in dependents {
            let Some(rt) = inner
                .types
                .iter()
                .find(|t| t.group == key.0 && t.plural == key.1)
                .cloned()
            else {
                continue;
            };
            if let Some(object) = inner.objects.get(&key).cloned() {
                let deleted = self.commit(
                    inner,
                    &rt,
                    key,
                    ChangeKind::Deleted,
                    object.clone(),
                    Some(object),
                );
                self.collect_dependents(inner, &deleted);
            }
        }
    }
}

/// `target` with the status of `source` (or none, if `source` has none).
fn with_status_of(mut target: Value, source: &Value) -> Value {
    match source.get("status") {
        Some(status) => target["status"] = status.clone(),
        None => {
            if let Some(fields) = target.as_object_mut() {
                fields.remove("status");
            }
        }
    }
    target
}

fn check_resource_version(
    rt: &ResourceType,
    name: &str,
    body: &Value,
    old: &Value,
) -> Result<(), ApiError> {
    match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(rt)
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn scale_of(rt: &ResourceType, object: &Value) -> Result<Value, ApiError> {
    let paths = rt.scale.as_ref().ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    })?;
    let selector = match &paths.label_selector {
        Some(path) => get_path(object, path).cloned().unwrap_or(json!("")),
        None => {
            // Deployments: the selector's matchLabels as a string.
            let labels = object["spec"]["selector"]["matchLabels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            json!(
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    };
    Ok(json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"], "resourceVersion": object["metadata"]["resourceVersion"],
            "creationTimestamp": object["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": get_path(object, &paths.spec_replicas).cloned().unwrap_or(json!(0))},
        "status": {"replicas": get_path(object, &paths.status_replicas).cloned().unwrap_or(json!(0)), "selector": selector},
    }))
}

/// A 422 Invalid error in kube-apiserver's form.
fn invalid(rt: &ResourceType, name: &str, causes: &[Cause]) -> ApiError {
    let described: Vec<String> = causes.iter().map(Cause::describe).collect();
    let summary = if described.len() == 1 {
        described[0].clone()
    } else {
        format!("[{}]", described.join(", "))
    };
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{}.{} \"{name}\" is invalid: {summary}", rt.kind, rt.group),
        details: Some(json!({
            "name": name, "group": rt.group, "kind": rt.kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        })),
    }
}
