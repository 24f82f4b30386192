//! `engagement_index._kernel`: the compiled form of the scoring core's per-contact hot path.
//!
//! The Python core (`engagement_index.core`) is the specification; this crate repeats its
//! state codec, fold, time-driven changes and crossing solves with the same float operations in
//! the same order, so that states, transitions and snapshots are identical to the byte.
//! `engagement_index.kernel` is the Python side: it hands the compiled model over once and
//! calls a `Contacts` store with whole batches of events.

mod batch;
mod decay;
mod engine;
mod model;
mod partition;
mod replay;
mod segments;
mod state;
mod stored;

use engine::{rfc3339, write_rfc3339, Buffers, Snapshot, Transition, Work};
use foldhash::{HashMap, HashMapExt};
use model::Model;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// Binds an event's fields, a tuple in the order of the core's `EventFields` (event id,
/// tenant, contact id, type, timestamp ms), to `&str`s borrowed from the tuple, the index of
/// the model's rule for its type, and the timestamp; a type the model does not score is a
/// `ValueError`. A macro, not a function: the borrowed items the strings point into have to
/// live in the caller's scope.
macro_rules! event_fields {
    ($fields:expr, $model:expr => $event_id:ident, $tenant:ident, $contact_id:ident, $rule:ident, $ts:ident) => {
        let items = (
            $fields.get_borrowed_item(0)?,
            $fields.get_borrowed_item(1)?,
            $fields.get_borrowed_item(2)?,
            $fields.get_borrowed_item(3)?,
        );
        let $event_id: &str = items.0.extract()?;
        let $tenant: &str = items.1.extract()?;
        let $contact_id: &str = items.2.extract()?;
        let event_type: &str = items.3.extract()?;
        let $ts: i64 = $fields.get_borrowed_item(4)?.extract()?;
        let $rule = *$model
            .rule_by_type
            .get(event_type)
            .ok_or_else(|| PyValueError::new_err("an event type the model does not score"))?;
    };
}

/// The fields of a decoded event as the scorers take them (event id, tenant, contact id,
/// type, timestamp ms).
fn fields_tuple<'py>(py: Python<'py>, f: &replay::Fields<'_>) -> PyResult<Bound<'py, PyTuple>> {
    let fields = (
        f.event_id.as_ref(),
        f.tenant.as_ref(),
        f.contact_id.as_ref(),
        f.event_type.as_ref(),
        f.ts,
    );
    fields.into_pyobject(py)
}

fn key_of(tenant: &str, contact_id: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + contact_id.len() + 1);
    key.push_str(tenant);
    key.push('\x1f');
    key.push_str(contact_id);
    key
}

/// A time as a JSON string (`ms_to_rfc3339`; nothing in it needs escaping).
fn write_time(out: &mut Vec<u8>, ms: i64) {
    out.push(b'"');
    write_rfc3339(out, ms);
    out.push(b'"');
}

/// The components of an output record: a JSON object of the model's component names to
/// their values.
fn write_components(cm: &Model, out: &mut Vec<u8>, values: &[f64]) {
    use replay::{write_f64, write_str};
    out.push(b'{');
    for (i, (name, &v)) in cm.names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_f64(out, v);
    }
    out.push(b'}');
}

/// `Transition.to_json_bytes()` of a transition (orjson's bytes).
fn transition_json(cm: &Model, out: &mut Vec<u8>, s: &state::State, t: &Transition) {
    use replay::{write_f64, write_opt_str, write_str};
    let lc = &cm.lifecycles[t.lifecycle];
    out.extend_from_slice(b"{\"transition_id\":");
    write_str(out, &t.transition_id);
    out.extend_from_slice(b",\"tenant\":");
    write_str(out, &s.tenant);
    out.extend_from_slice(b",\"contact_id\":");
    write_str(out, &s.contact_id);
    out.extend_from_slice(b",\"from_stage\":");
    write_opt_str(out, t.from_stage.map(|f| lc.stages[f].name.as_str()));
    out.extend_from_slice(b",\"to_stage\":");
    write_str(out, &lc.stages[t.to_stage].name);
    out.extend_from_slice(b",\"half\":");
    write_str(out, &cm.index_names[t.half]);
    out.extend_from_slice(b",\"reason\":");
    write_str(out, &t.reason);
    out.extend_from_slice(b",\"index\":");
    write_f64(out, t.index);
    out.extend_from_slice(b",\"previous_index\":");
    write_f64(out, t.previous_index);
    out.extend_from_slice(b",\"components\":");
    write_components(cm, out, &t.components);
    out.extend_from_slice(b",\"cause_event_id\":");
    write_opt_str(out, t.cause.as_deref());
    out.extend_from_slice(b",\"occurred_at\":");
    write_time(out, t.occurred_ms);
    out.extend_from_slice(b",\"model_version\":");
    write_str(out, &cm.version);
    out.extend_from_slice(b",\"lifecycle\":");
    write_str(out, &lc.name);
    out.extend_from_slice(b",\"rule_id\":");
    write_opt_str(out, t.rule_id.as_deref());
    out.extend_from_slice(b"}\n");
}

/// `ContactSnapshot.to_json_bytes()` of a snapshot (orjson's bytes of the dict
/// `Contacts::snapshot_dict` makes, keys in the same order).
fn snapshot_json(cm: &Model, out: &mut Vec<u8>, s: &state::State, snap: &Snapshot) {
    use replay::{write_f64, write_str};
    let int = |out: &mut Vec<u8>, v: i64| out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"{\"tenant\":");
    write_str(out, &s.tenant);
    out.extend_from_slice(b",\"contact_id\":");
    write_str(out, &s.contact_id);
    out.extend_from_slice(b",\"stage\":");
    write_str(out, &cm.lifecycles[0].stages[snap.stage].name);
    out.extend_from_slice(b",\"half\":");
    write_str(out, &cm.index_names[snap.half]);
    out.extend_from_slice(b",\"index\":");
    write_f64(out, snap.index);
    out.extend_from_slice(b",\"components\":");
    write_components(cm, out, &snap.components);
    out.extend_from_slice(b",\"customer\":");
    out.extend_from_slice(if snap.customer { b"true" } else { b"false" });
    out.extend_from_slice(b",\"first_seen_at\":");
    write_time(out, snap.first_seen_ms);
    out.extend_from_slice(b",\"last_event_at\":");
    write_time(out, snap.last_event_ms);
    out.extend_from_slice(b",\"events_counted\":");
    out.extend_from_slice(snap.events_counted.to_string().as_bytes());
    for (name, days) in [
        (&b",\"active_days_7d\":"[..], snap.active[0]),
        (b",\"active_days_30d\":", snap.active[1]),
        (b",\"active_days_90d\":", snap.active[2]),
    ] {
        out.extend_from_slice(name);
        int(out, i64::from(days));
    }
    out.extend_from_slice(b",\"model_version\":");
    write_str(out, &cm.version);
    out.extend_from_slice(b",\"evaluated_at\":");
    write_time(out, snap.at);
    out.extend_from_slice(b",\"lifecycles\":{");
    for (i, (lc, &(stage, entered))) in cm.lifecycles.iter().zip(&snap.lifecycles).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &lc.name);
        out.extend_from_slice(b":{\"stage\":");
        write_str(out, &lc.stages[stage].name);
        out.extend_from_slice(b",\"entered_at\":");
        write_time(out, entered);
        out.extend_from_slice(b",\"in_stage_ms\":");
        int(out, snap.at - entered);
        out.push(b'}');
    }
    out.extend_from_slice(b"},\"markers\":{");
    for (i, &(m, at)) in snap.markers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &cm.markers[m]);
        out.push(b':');
        write_time(out, at);
    }
    out.extend_from_slice(b"}}");
}

/// A compiled model, handed over once (the JSON of `engagement_index.kernel.model_blob`).
#[pyclass(module = "engagement_index._kernel", frozen)]
struct Kernel {
    model: Arc<Model>,
}

impl Kernel {
    /// The state of a `contacts` table value of version 2 under this model's layout, and its
    /// index at its clock (`project`, `recover`); None for anything else.
    fn peek(&self, raw: &[u8]) -> Option<(state::State, f64)> {
        let model = &*self.model;
        let s = state::decode(&raw[stored::state_offset(raw)?..], "", "", model)?;
        let stage = &model.lifecycles[0].stages[s.stages[0]];
        let index = decay::index_of(&s.values, &model.weights[stage.index as usize], model);
        Some((s, index))
    }
}

#[pymethods]
impl Kernel {
    #[new]
    fn new(blob: &str) -> PyResult<Self> {
        let model = Model::from_json(blob).map_err(PyValueError::new_err)?;
        Ok(Kernel {
            model: Arc::new(model),
        })
    }

    /// An empty store of contact states of this model.
    fn contacts(&self) -> Contacts {
        Contacts::empty(self.model.clone())
    }

    /// `parse_event_fields` of a record value where its fast path takes the value (the
    /// replay's line path, `replay::fast_fields`): (event id, tenant, contact id, type,
    /// timestamp ms). None for anything else: the Python side parses it and words the reason
    /// where it rejects it. The account id is not read, so the caller uses this only for
    /// models without accounts.
    fn event_fields<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(f) = replay::fast_fields(value) else {
            return Ok(None);
        };
        Ok(Some(fields_tuple(py, &f)?))
    }

    /// `SegmentIndex.project` of a `contacts` table value of version 2 (no account): (its
    /// stage positions, one per lifecycle; its index at its clock; its last event ms). None
    /// where the kernel does not take the value (another version, another model's layout,
    /// bytes the core rejects): the Python side projects it or finds it undecodable.
    fn project<'py>(
        &self,
        py: Python<'py>,
        raw: &[u8],
    ) -> PyResult<Option<(Bound<'py, PyTuple>, f64, i64)>> {
        let Some((s, index)) = self.peek(raw) else {
            return Ok(None);
        };
        Ok(Some((PyTuple::new(py, &s.stages)?, index, s.last)))
    }

    /// What the worker's recovery reads of a `contacts` table value of version 2 (no
    /// account) under `key`, for the due-time index, the stage counts and the segment index:
    /// (the key's canonical partition among `partitions`, the state's due ms, its stage
    /// positions, its index at its clock, its last event ms). None where the kernel does not
    /// take the value, as for `project`: the Python side reads it (and migrates it, or finds
    /// it undecodable).
    #[allow(clippy::type_complexity)]
    fn recover<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
        raw: &[u8],
        partitions: usize,
    ) -> PyResult<Option<(usize, Option<i64>, Bound<'py, PyTuple>, f64, i64)>> {
        if partitions == 0 {
            return Err(PyValueError::new_err("partitions must be at least 1"));
        }
        let Some((s, index)) = self.peek(raw) else {
            return Ok(None);
        };
        let home = partition::canonical_partition(key, partitions);
        Ok(Some((
            home,
            s.due,
            PyTuple::new(py, &s.stages)?,
            index,
            s.last,
        )))
    }

    /// The segment index's difference for a batch's `contacts` writes
    /// (`SegmentIndex.apply`): items of (partition, key, the value the batch loaded or None,
    /// the value it wrote or None), the two values not equal. Returns (the index keys to
    /// delete, the index keys to put, the stage moves as (item position, old stage positions
    /// or None, new ones or None), the positions of the items the kernel does not take). An
    /// item is not taken where a value is not one `project` takes (another layout, an
    /// account, undecodable): the Python side projects both of its values. A move is given
    /// only where the stages changed: a contact that stays in its stages leaves the counts
    /// as they are (the Python side takes it out and puts it back).
    #[allow(clippy::type_complexity)]
    fn index_changes<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyList>,
    ) -> PyResult<(
        Bound<'py, PyList>,
        Bound<'py, PyList>,
        Bound<'py, PyList>,
        Bound<'py, PyList>,
    )> {
        let model = &*self.model;
        let deletes = PyList::empty(py);
        let puts = PyList::empty(py);
        let moves = PyList::empty(py);
        let rest = PyList::empty(py);
        let lifecycles = model.lifecycles.len();
        for (position, item) in items.iter().enumerate() {
            let item = item.downcast_into::<PyTuple>()?;
            let partition: u16 = item.get_borrowed_item(0)?.extract()?;
            let key = item.get_borrowed_item(1)?;
            let key = key.downcast::<PyBytes>()?.as_bytes();
            let mut peeked = [None, None];
            let mut taken = true;
            for (side, slot) in peeked.iter_mut().enumerate() {
                let value = item.get_borrowed_item(2 + side)?;
                if value.is_none() {
                    continue;
                }
                match self.peek(value.downcast::<PyBytes>()?.as_bytes()) {
                    Some(found) if found.0.stages.len() == lifecycles => *slot = Some(found),
                    _ => taken = false,
                }
            }
            if !taken {
                rest.append(position)?;
                continue;
            }
            let projections = peeked.each_ref().map(|side| {
                side.as_ref().map(|(s, index)| segments::Projection {
                    stages: &s.stages,
                    index: *index,
                    last_event_ms: s.last,
                })
            });
            let [old, new] = &projections;
            let same = match (old, new) {
                (Some(a), Some(b)) => {
                    a.stages == b.stages && a.index == b.index && a.last_event_ms == b.last_event_ms
                }
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let old_keys = old
                .as_ref()
                .map_or_else(Vec::new, |p| segments::keys(model, partition, key, p));
            let new_keys = new
                .as_ref()
                .map_or_else(Vec::new, |p| segments::keys(model, partition, key, p));
            for k in &old_keys {
                if !new_keys.contains(k) {
                    deletes.append(PyBytes::new(py, k))?;
                }
            }
            for k in &new_keys {
                if !old_keys.contains(k) {
                    puts.append(PyBytes::new(py, k))?;
                }
            }
            let stages_of = |p: &Option<segments::Projection<'_>>| -> PyResult<PyObject> {
                Ok(match p {
                    Some(p) => PyTuple::new(py, p.stages)?.into_any().unbind(),
                    None => py.None(),
                })
            };
            let moved = match (old, new) {
                (Some(a), Some(b)) => a.stages != b.stages,
                _ => true,
            };
            if moved {
                moves.append((position, stages_of(old)?, stages_of(new)?))?;
            }
        }
        Ok((deletes, puts, moves, rest))
    }

    /// The worker's scorer of whole `contacts` table values (`StoredScorer`), with the
    /// duplicate window (ms) and the score step of its settings, and what `route` checks:
    /// (the largest record value in bytes, the oldest and the farthest future event time
    /// from now in ms, the scoring partitions).
    fn stored_scorer(
        &self,
        window_ms: i64,
        score_step: f64,
        limits: (usize, i64, i64, usize),
    ) -> PyResult<StoredScorer> {
        let (max_bytes, max_age_ms, max_future_ms, partitions) = limits;
        if partitions == 0 {
            return Err(PyValueError::new_err("partitions must be at least 1"));
        }
        Ok(StoredScorer {
            view: Contacts::empty(self.model.clone()),
            window: window_ms,
            score_step,
            limits: Limits {
                max_bytes,
                max_age_ms,
                max_future_ms,
                partitions,
            },
        })
    }

    /// Fold events into stored states, the worker's form: items (stored state bytes or None
    /// for a new contact, event fields as in `Contacts.step`, the contact's published index,
    /// the score step). Per item: None if the kernel does not take the stored state (the
    /// caller uses the Python core), an error message (a `str`), or (new state bytes, due ms,
    /// clock ms, transition dicts or None, snapshot dict or None). The snapshot (at the clock)
    /// is there when a transition happened or the index moved by more than the score step
    /// from the published one (NaN: never published).
    fn step_stored(&self, py: Python<'_>, items: &Bound<'_, PyList>) -> PyResult<Py<PyList>> {
        let model = &*self.model;
        let view = Contacts::empty(self.model.clone());
        let out = PyList::empty(py);
        for item in items.iter() {
            let item = item.downcast_into::<PyTuple>()?;
            let data = item.get_borrowed_item(0)?;
            let fields = item.get_item(1)?.downcast_into::<PyTuple>()?;
            let published: f64 = item.get_borrowed_item(2)?.extract()?;
            let score_step: f64 = item.get_borrowed_item(3)?.extract()?;
            event_fields!(fields, model => event_id, tenant, contact_id, rule, ts);
            let (s, first) = if data.is_none() {
                (Work::new_state(tenant, contact_id, ts, model), true)
            } else {
                let bytes = data.downcast::<PyBytes>()?;
                match state::decode(bytes.as_bytes(), tenant, contact_id, model) {
                    Some(s) => (s, false),
                    None => {
                        out.append(py.None())?;
                        continue;
                    }
                }
            };
            let mut work = Work::new(s, model);
            if let Err(message) = work.step(rule, ts, event_id, first) {
                out.append(message)?;
                continue;
            }
            let encoded = state::encode(&work.s, model).map_err(PyValueError::new_err)?;
            let transitions = view.outcome(py, &work.s, &work.transitions)?;
            let index_now = work.contact_index();
            let moved = published.is_nan() || (index_now - published).abs() > score_step;
            let snapshot = if moved || !work.transitions.is_empty() {
                let at = work.s.clock;
                let snap = work.evaluate(at).map_err(PyRuntimeError::new_err)?;
                view.snapshot_dict(py, &work.s, &snap)?.into_any().unbind()
            } else {
                py.None()
            };
            let result = (
                PyBytes::new(py, &encoded),
                work.s.due,
                work.s.clock,
                transitions,
                snapshot,
            );
            out.append(result)?;
        }
        Ok(out.unbind())
    }
}

/// Scores one event on a contact's whole table value (`engagement_index.stream.stored`,
/// version 2): the redelivery check on the source's offset, the duplicate window, the fold
/// and the snapshot decision, and the value written back, in one call per event.
#[pyclass(module = "engagement_index._kernel", frozen)]
struct StoredScorer {
    view: Contacts,
    window: i64,
    score_step: f64,
    limits: Limits,
}

/// What `StoredScorer.route` checks a record against (the worker's settings).
struct Limits {
    max_bytes: usize,
    max_age_ms: i64,
    max_future_ms: i64,
    partitions: usize,
}

/// `StoredScorer.score`'s answer for an applied event: (1 for an event id the window holds,
/// 2 for an applied event; the new table value; its published index; due ms; clock ms; the
/// clock of the state it started from, None for a new contact; where the core-state bytes
/// start in the value; transitions or None; the snapshot's JSON bytes or None).
type Scored<'py> = (
    u8,
    Bound<'py, PyBytes>,
    f64,
    Option<i64>,
    i64,
    Option<i64>,
    usize,
    PyObject,
    PyObject,
);

#[pymethods]
impl StoredScorer {
    /// The event fields of a record the worker scores as it stands (the tuple `score`
    /// takes), or None for any other: `value` on the decode's fast path (`event_fields`) and
    /// no longer than the limit, a type the model scores, an event time within the window
    /// around `now_ms`, `key` the contact's key and `partition` its canonical partition. The
    /// Python side decides every record this does not take (it rejects, re-keys or forwards
    /// it, or scores it as well).
    #[pyo3(signature = (value, key, partition, now_ms))]
    fn route<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
        key: Option<&[u8]>,
        partition: usize,
        now_ms: i64,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(key) = key else {
            return Ok(None);
        };
        match self.routed(value, key, partition, now_ms) {
            Some(f) => Ok(Some(fields_tuple(py, &f)?)),
            None => Ok(None),
        }
    }

    /// One event: `stored` the contact's table value (None: a new contact); `published` its
    /// published index where the caller holds it (None: the value's own); `fields` the event
    /// as `Kernel.step_stored` takes it; `record` (source id, offset, arrival ms).
    ///
    /// Returns None where the value or its state is not one the kernel takes (the caller
    /// uses the Python side), 0 for a redelivered record (its offset is at or below the
    /// stored one: nothing changed), an error message (`str`), or a `Scored` tuple; a
    /// transition is (its JSON bytes, lifecycle, from stage or None, to stage, reason), the
    /// snapshot its JSON bytes (`ContactSnapshot.to_json_bytes()`).
    #[pyo3(signature = (stored, published, fields, record))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        stored: Option<&[u8]>,
        published: Option<f64>,
        fields: &Bound<'py, PyTuple>,
        record: (u16, u64, i64),
    ) -> PyResult<PyObject> {
        let model = &*self.view.model;
        event_fields!(fields, model => event_id, tenant, contact_id, rule, ts);
        let event = EventRef {
            event_id,
            tenant,
            contact_id,
            rule,
            ts,
        };
        Ok(match self.score_event(stored, published, &event, record)? {
            ScoreOutcome::NotTaken => py.None(),
            ScoreOutcome::Redelivered => 0u8.into_pyobject(py)?.into_any().unbind(),
            ScoreOutcome::Failed(message) => message.into_pyobject(py)?.into_any().unbind(),
            ScoreOutcome::Applied(a) => {
                let transitions = if a.transitions.is_empty() {
                    py.None()
                } else {
                    let list = PyList::empty(py);
                    for t in &a.transitions {
                        let lc = &model.lifecycles[t.lifecycle];
                        list.append((
                            PyBytes::new(py, &t.payload),
                            &lc.name,
                            t.from_stage.map(|f| lc.stages[f].name.as_str()),
                            &lc.stages[t.to_stage].name,
                            &t.reason,
                        ))?;
                    }
                    list.into_any().unbind()
                };
                let snapshot = match &a.snapshot {
                    Some(s) => PyBytes::new(py, s).into_any().unbind(),
                    None => py.None(),
                };
                let result: Scored<'py> = (
                    a.code,
                    PyBytes::new(py, &a.data),
                    a.published,
                    a.due,
                    a.clock,
                    a.before,
                    a.state_at,
                    transitions,
                    snapshot,
                );
                result.into_pyobject(py)?.into_any().unbind()
            }
        })
    }
}

/// An event's fields as the scorers take them (borrowed).
struct EventRef<'a> {
    event_id: &'a str,
    tenant: &'a str,
    contact_id: &'a str,
    rule: usize,
    ts: i64,
}

/// A transition of `StoredScorer::score_event`: its JSON bytes and its labels.
struct ScoredTransition {
    payload: Vec<u8>,
    lifecycle: usize,
    from_stage: Option<usize>,
    to_stage: usize,
    reason: String,
}

/// An event `StoredScorer::score_event` applied (`Scored`'s fields, as Rust values).
struct Applied {
    code: u8,
    data: Vec<u8>,
    published: f64,
    due: Option<i64>,
    clock: i64,
    before: Option<i64>,
    state_at: usize,
    transitions: Vec<ScoredTransition>,
    snapshot: Option<Vec<u8>>,
}

/// What `StoredScorer::score_event` did with one event (see `StoredScorer.score`).
enum ScoreOutcome {
    NotTaken,
    Redelivered,
    Failed(String),
    Applied(Applied),
}

impl StoredScorer {
    /// The checks of `route` on one record: its event fields if it is scored as it stands.
    fn routed<'v>(
        &self,
        value: &'v [u8],
        key: &[u8],
        partition: usize,
        now_ms: i64,
    ) -> Option<replay::Fields<'v>> {
        let limits = &self.limits;
        if value.len() > limits.max_bytes {
            return None;
        }
        let f = replay::fast_fields(value)?;
        if !self
            .view
            .model
            .rule_by_type
            .contains_key(f.event_type.as_ref())
        {
            return None;
        }
        let (now, ts) = (i128::from(now_ms), i128::from(f.ts));
        if ts < now - i128::from(limits.max_age_ms) || ts > now + i128::from(limits.max_future_ms) {
            return None;
        }
        let (tenant, contact_id) = (f.tenant.as_bytes(), f.contact_id.as_bytes());
        if key.len() != tenant.len() + 1 + contact_id.len()
            || &key[..tenant.len()] != tenant
            || key[tenant.len()] != 0x1f
            || &key[tenant.len() + 1..] != contact_id
            || partition::canonical_partition(key, limits.partitions) != partition
        {
            return None;
        }
        Some(f)
    }

    /// `score` on Rust values.
    fn score_event(
        &self,
        stored: Option<&[u8]>,
        published: Option<f64>,
        event: &EventRef<'_>,
        record: (u16, u64, i64),
    ) -> PyResult<ScoreOutcome> {
        let model = &*self.view.model;
        let (source, offset, arrival) = record;
        let EventRef {
            event_id,
            tenant,
            contact_id,
            rule,
            ts,
        } = *event;
        let (mut value, state_bytes) = match stored {
            None => (
                stored::Stored {
                    published: f32::NAN,
                    offsets: Vec::new(),
                    seen: replay::Seen::default(),
                    state: 0,
                },
                None,
            ),
            Some(data) => match stored::decode(data) {
                Some(v) => {
                    let at = v.state;
                    (v, Some(&data[at..]))
                }
                None => return Ok(ScoreOutcome::NotTaken),
            },
        };
        if let Some(&(_, last)) = value.offsets.iter().find(|(s, _)| *s == source) {
            if last >= offset {
                return Ok(ScoreOutcome::Redelivered);
            }
        }
        let mut published = published.unwrap_or(f64::from(value.published));
        let state = match state_bytes {
            None => None,
            Some(bytes) => match state::decode(bytes, tenant, contact_id, model) {
                Some(s) => Some(s),
                None => return Ok(ScoreOutcome::NotTaken),
            },
        };
        match value.offsets.iter_mut().find(|(s, _)| *s == source) {
            Some(slot) => slot.1 = offset,
            None => value.offsets.push((source, offset)),
        }
        if !value
            .seen
            .admit(replay::digest(event_id), arrival, self.window)
        {
            let bytes = state_bytes.unwrap_or_default();
            let (data, at) = stored::encode(published, &mut value.offsets, &value.seen, bytes)
                .map_err(PyValueError::new_err)?;
            let clock = state.as_ref().map_or(0, |s| s.clock);
            return Ok(ScoreOutcome::Applied(Applied {
                code: 1,
                data,
                published,
                due: state.as_ref().and_then(|s| s.due),
                clock,
                before: state.as_ref().map(|s| s.clock),
                state_at: at,
                transitions: Vec::new(),
                snapshot: None,
            }));
        }
        let before = state.as_ref().map(|s| s.clock);
        let (s, first) = match state {
            None => (Work::new_state(tenant, contact_id, ts, model), true),
            Some(s) => (s, false),
        };
        let mut work = Work::new(s, model);
        if let Err(message) = work.step(rule, ts, event_id, first) {
            return Ok(ScoreOutcome::Failed(message));
        }
        let encoded = state::encode(&work.s, model).map_err(PyValueError::new_err)?;
        let mut transitions = Vec::with_capacity(work.transitions.len());
        for t in &work.transitions {
            let mut payload = Vec::with_capacity(512);
            transition_json(model, &mut payload, &work.s, t);
            payload.pop(); // the line's newline
            transitions.push(ScoredTransition {
                payload,
                lifecycle: t.lifecycle,
                from_stage: t.from_stage,
                to_stage: t.to_stage,
                reason: t.reason.clone(),
            });
        }
        let index_now = work.contact_index();
        let moved = published.is_nan() || (index_now - published).abs() > self.score_step;
        let snapshot = if moved || !work.transitions.is_empty() {
            let at = work.s.clock;
            let snap = work.evaluate(at).map_err(PyRuntimeError::new_err)?;
            published = snap.index;
            let mut payload = Vec::with_capacity(1024);
            snapshot_json(model, &mut payload, &work.s, &snap);
            Some(payload)
        } else {
            None
        };
        let (data, at) = stored::encode(published, &mut value.offsets, &value.seen, &encoded)
            .map_err(PyValueError::new_err)?;
        Ok(ScoreOutcome::Applied(Applied {
            code: 2,
            data,
            published,
            due: work.s.due,
            clock: work.s.clock,
            before,
            state_at: at,
            transitions,
            snapshot,
        }))
    }
}

/// What the replay of `engagement_index.replay` decides by its own settings.
struct ReplayRules {
    /// the duplicate window (ms)
    window: i64,
    /// events after it go to the Python side (which rejects them)
    until: Option<i64>,
    /// longer lines go to the Python side (which rejects them)
    max_bytes: Option<usize>,
}

/// How the replay took one line or event.
enum Taken {
    /// not taken: the Python side decides
    No,
    Duplicate,
    /// applied, with this many transitions
    Applied(u64),
}

/// Decoded contact states of one model, keyed by (tenant, contact id); for the replay also
/// each contact's duplicate window, the order of first applied events and the file's clock.
#[pyclass(module = "engagement_index._kernel")]
struct Contacts {
    model: Arc<Model>,
    states: HashMap<String, state::State>,
    seen: HashMap<String, replay::Seen>,
    /// keys in the order of their first applied events (the replay's)
    order: Vec<String>,
    /// the replay's: a contact's key is made in `key_buffer` (no allocation but for a new
    /// contact) and its event stepped in `buffers`
    key_buffer: String,
    buffers: Buffers,
    rules: ReplayRules,
    /// the largest event timestamp read: the default arrival time
    arrival_clock: i64,
    /// the largest timestamp of an applied event
    max_event: Option<i64>,
}

/// A contact's duplicate window as the Python side gets it: tenant, contact id, digests,
/// arrivals.
type SeenWindow<'py> = (String, String, Bound<'py, PyBytes>, Vec<i64>);

/// What one `replay_chunk` call did (returned to the Python side as a tuple).
type ChunkResult = (
    usize,
    bool,
    Py<PyBytes>,
    u64,
    u64,
    u64,
    u64,
    Option<i64>,
    i64,
);

impl Contacts {
    fn empty(model: Arc<Model>) -> Contacts {
        Contacts {
            model,
            states: HashMap::new(),
            seen: HashMap::new(),
            order: Vec::new(),
            key_buffer: String::new(),
            buffers: Buffers::default(),
            rules: ReplayRules {
                window: 72 * 3_600_000,
                until: None,
                max_bytes: None,
            },
            arrival_clock: state::MIN_MS,
            max_event: None,
        }
    }

    /// One line of the replay: taken if the fast path parses it, the model scores its type
    /// and the rules allow it; then admitted by the duplicate window and applied.
    fn replay_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<Taken, String> {
        if self.rules.max_bytes.is_some_and(|m| line.len() > m) {
            return Ok(Taken::No);
        }
        let Some(f) = replay::fast_fields(line) else {
            return Ok(Taken::No);
        };
        let Some(&rule) = self.model.rule_by_type.get(f.event_type.as_ref()) else {
            return Ok(Taken::No);
        };
        if self.rules.until.is_some_and(|u| f.ts > u) {
            return Ok(Taken::No);
        }
        let event = (
            f.event_id.as_ref(),
            f.tenant.as_ref(),
            f.contact_id.as_ref(),
        );
        self.replay_event(event, (rule, f.ts, None), out)
    }

    /// An event of the replay ((event id, tenant, contact id), (rule, timestamp, arrival)):
    /// the duplicate window of `Replayer._admit`, then `step`; its transitions go to `out`
    /// as JSON lines.
    fn replay_event(
        &mut self,
        (event_id, tenant, contact_id): (&str, &str, &str),
        (rule, ts, arrival): (usize, i64, Option<i64>),
        out: &mut Vec<u8>,
    ) -> Result<Taken, String> {
        if ts > self.arrival_clock {
            self.arrival_clock = ts;
        }
        let arrival = arrival.unwrap_or(self.arrival_clock);
        let key = &mut self.key_buffer;
        key.clear();
        key.push_str(tenant);
        key.push('\x1f');
        key.push_str(contact_id);
        let digest = replay::digest(event_id);
        let window = self.rules.window;
        match self.seen.get_mut(key.as_str()) {
            Some(seen) => {
                if !seen.admit(digest, arrival, window) {
                    return Ok(Taken::Duplicate);
                }
            }
            None => {
                let mut seen = replay::Seen::default();
                seen.admit(digest, arrival, window);
                self.seen.insert(key.clone(), seen);
                self.order.push(key.clone());
            }
        }
        if self.max_event.is_none_or(|m| ts > m) {
            self.max_event = Some(ts);
        }
        // the state is taken out of its slot, stepped and put back
        let model = &*self.model;
        let (slot, first) = match self.states.get_mut(key.as_str()) {
            Some(slot) => (slot, false),
            None => {
                let new = Work::new_state(tenant, contact_id, ts, model);
                (self.states.entry(key.clone()).or_insert(new), true)
            }
        };
        let buffers = std::mem::take(&mut self.buffers);
        let mut work = Work::with_buffers(std::mem::take(slot), model, buffers);
        let stepped = work.step(rule, ts, event_id, first);
        let (state, buffers) = work.into_buffers();
        *slot = state;
        let applied = stepped.map(|()| {
            for t in buffers.transitions() {
                transition_json(model, out, slot, t);
            }
            buffers.transitions().len() as u64
        });
        self.buffers = buffers;
        Ok(Taken::Applied(applied?)) // an error: the replay stops there (a bug)
    }

    /// The time-driven changes due by `horizon`, ordered by time then contact; `emit` gets
    /// each transition with its contact's state.
    fn finish_with<F: FnMut(&state::State, &Transition) -> PyResult<()>>(
        &mut self,
        horizon: i64,
        mut emit: F,
    ) -> PyResult<()> {
        let model = self.model.clone();
        let mut queue: BinaryHeap<Reverse<(i64, String, String, String)>> = self
            .states
            .iter()
            .filter_map(|(key, s)| match s.due {
                Some(d) if d <= horizon => Some(Reverse((
                    d,
                    s.tenant.clone(),
                    s.contact_id.clone(),
                    key.clone(),
                ))),
                _ => None,
            })
            .collect();
        while let Some(Reverse((due, _, _, key))) = queue.pop() {
            let s = self.states.remove(&key).unwrap();
            let mut work = Work::new(s, &model);
            work.advance(due).map_err(PyRuntimeError::new_err)?;
            for t in &work.transitions {
                emit(&work.s, t)?;
            }
            if let Some(d) = work.s.due {
                if d <= horizon {
                    queue.push(Reverse((
                        d,
                        work.s.tenant.clone(),
                        work.s.contact_id.clone(),
                        key.clone(),
                    )));
                }
            }
            self.states.insert(key, work.s);
        }
        Ok(())
    }
    fn transition_dict<'py>(
        &self,
        py: Python<'py>,
        s: &state::State,
        t: &Transition,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cm = &*self.model;
        let lc = &cm.lifecycles[t.lifecycle];
        let d = PyDict::new(py);
        d.set_item(intern!(py, "transition_id"), &t.transition_id)?;
        d.set_item(intern!(py, "tenant"), &s.tenant)?;
        d.set_item(intern!(py, "contact_id"), &s.contact_id)?;
        d.set_item(
            intern!(py, "from_stage"),
            t.from_stage.map(|f| lc.stages[f].name.as_str()),
        )?;
        d.set_item(intern!(py, "to_stage"), &lc.stages[t.to_stage].name)?;
        d.set_item(intern!(py, "half"), &cm.index_names[t.half])?;
        d.set_item(intern!(py, "reason"), &t.reason)?;
        d.set_item(intern!(py, "index"), t.index)?;
        d.set_item(intern!(py, "previous_index"), t.previous_index)?;
        d.set_item(
            intern!(py, "components"),
            self.components(py, &t.components)?,
        )?;
        d.set_item(intern!(py, "cause_event_id"), t.cause.as_deref())?;
        d.set_item(intern!(py, "occurred_at"), rfc3339(t.occurred_ms))?;
        d.set_item(intern!(py, "model_version"), &cm.version)?;
        d.set_item(intern!(py, "lifecycle"), &lc.name)?;
        d.set_item(intern!(py, "rule_id"), t.rule_id.as_deref())?;
        Ok(d)
    }

    fn components<'py>(&self, py: Python<'py>, scores: &[f64]) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, &v) in self.model.names.iter().zip(scores) {
            d.set_item(name, v)?;
        }
        Ok(d)
    }

    fn snapshot_dict<'py>(
        &self,
        py: Python<'py>,
        s: &state::State,
        snap: &Snapshot,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cm = &*self.model;
        let d = PyDict::new(py);
        d.set_item(intern!(py, "tenant"), &s.tenant)?;
        d.set_item(intern!(py, "contact_id"), &s.contact_id)?;
        d.set_item(
            intern!(py, "stage"),
            &cm.lifecycles[0].stages[snap.stage].name,
        )?;
        d.set_item(intern!(py, "half"), &cm.index_names[snap.half])?;
        d.set_item(intern!(py, "index"), snap.index)?;
        d.set_item(
            intern!(py, "components"),
            self.components(py, &snap.components)?,
        )?;
        d.set_item(intern!(py, "customer"), snap.customer)?;
        d.set_item(intern!(py, "first_seen_at"), rfc3339(snap.first_seen_ms))?;
        d.set_item(intern!(py, "last_event_at"), rfc3339(snap.last_event_ms))?;
        d.set_item(intern!(py, "events_counted"), snap.events_counted)?;
        d.set_item(intern!(py, "active_days_7d"), snap.active[0])?;
        d.set_item(intern!(py, "active_days_30d"), snap.active[1])?;
        d.set_item(intern!(py, "active_days_90d"), snap.active[2])?;
        d.set_item(intern!(py, "model_version"), &cm.version)?;
        d.set_item(intern!(py, "evaluated_at"), rfc3339(snap.at))?;
        let lifecycles = PyDict::new(py);
        for (lc, &(stage, entered)) in cm.lifecycles.iter().zip(&snap.lifecycles) {
            let status = PyDict::new(py);
            status.set_item(intern!(py, "stage"), &lc.stages[stage].name)?;
            status.set_item(intern!(py, "entered_at"), rfc3339(entered))?;
            status.set_item(intern!(py, "in_stage_ms"), snap.at - entered)?;
            lifecycles.set_item(&lc.name, status)?;
        }
        d.set_item(intern!(py, "lifecycles"), lifecycles)?;
        let markers = PyDict::new(py);
        for &(m, at) in &snap.markers {
            markers.set_item(&cm.markers[m], rfc3339(at))?;
        }
        d.set_item(intern!(py, "markers"), markers)?;
        Ok(d)
    }

    /// The result of one change: None (no transitions), else the list of transition dicts.
    fn outcome(
        &self,
        py: Python<'_>,
        s: &state::State,
        transitions: &[Transition],
    ) -> PyResult<PyObject> {
        if transitions.is_empty() {
            return Ok(py.None());
        }
        let list = PyList::empty(py);
        for t in transitions {
            list.append(self.transition_dict(py, s, t)?)?;
        }
        Ok(list.into_any().unbind())
    }

    fn get(&self, tenant: &str, contact_id: &str) -> PyResult<&state::State> {
        self.states
            .get(&key_of(tenant, contact_id))
            .ok_or_else(|| PyValueError::new_err("no such contact in the kernel"))
    }
}

#[pymethods]
impl Contacts {
    /// Take a stored state (the bytes of `encode_state`); False if the kernel does not handle
    /// it (not a version 3 state of this model's layout, or one the Python core rejects).
    fn load(&mut self, tenant: &str, contact_id: &str, data: &[u8]) -> bool {
        match state::decode(data, tenant, contact_id, &self.model) {
            Some(s) => {
                self.states.insert(key_of(tenant, contact_id), s);
                true
            }
            None => false,
        }
    }

    /// Fold events in order: each a tuple (event id, tenant, contact id, type, timestamp ms),
    /// the order of the core's `EventFields`, of a type the model scores. A contact not in the store is a new contact. Per event:
    /// None (no transitions), a list of transition dicts, or an error message (a `str`; the
    /// contact's state is then left as it was before the event).
    fn step(&mut self, py: Python<'_>, events: &Bound<'_, PyList>) -> PyResult<Py<PyList>> {
        let out = PyList::empty(py);
        let model = self.model.clone();
        for item in events.iter() {
            let item = item.downcast_into::<PyTuple>()?;
            event_fields!(item, model => event_id, tenant, contact_id, rule, ts);
            let key = key_of(tenant, contact_id);
            let (mut work, first) = match self.states.get(&key) {
                Some(s) => (Work::new(s.clone(), &model), false),
                None => (
                    Work::new(Work::new_state(tenant, contact_id, ts, &model), &model),
                    true,
                ),
            };
            match work.step(rule, ts, event_id, first) {
                Ok(()) => {
                    out.append(self.outcome(py, &work.s, &work.transitions)?)?;
                    self.states.insert(key, work.s);
                }
                Err(message) => out.append(message)?,
            }
        }
        Ok(out.unbind())
    }

    /// The time-driven changes due up to each `until` (items: (tenant, contact id, until ms));
    /// per item the same as `step`.
    fn advance(
        &mut self,
        py: Python<'_>,
        items: Vec<(String, String, i64)>,
    ) -> PyResult<Py<PyList>> {
        let out = PyList::empty(py);
        let model = self.model.clone();
        for (tenant, contact_id, until) in items {
            let key = key_of(&tenant, &contact_id);
            let Some(s) = self.states.get(&key) else {
                return Err(PyValueError::new_err("no such contact in the kernel"));
            };
            if s.due.is_none_or(|d| d > until) {
                out.append(py.None())?;
                continue;
            }
            let mut work = Work::new(s.clone(), &model);
            match work.advance(until) {
                Ok(()) => {
                    out.append(self.outcome(py, &work.s, &work.transitions)?)?;
                    self.states.insert(key, work.s);
                }
                Err(message) => out.append(message)?,
            }
        }
        Ok(out.unbind())
    }

    /// Every time-driven change due by `horizon`, ordered by time then contact, as the replay
    /// emits them (a list of transition dicts).
    fn finish(&mut self, py: Python<'_>, horizon: i64) -> PyResult<Py<PyList>> {
        let out = PyList::empty(py);
        let view = Contacts::empty(self.model.clone());
        self.finish_with(horizon, |s, t| out.append(view.transition_dict(py, s, t)?))?;
        Ok(out.unbind())
    }

    /// `finish` with the transitions as JSON lines (`Transition.to_json_bytes()` each).
    fn finish_json<'py>(&mut self, py: Python<'py>, horizon: i64) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        let model = self.model.clone();
        self.finish_with(horizon, |s, t| {
            transition_json(&model, &mut out, s, t);
            Ok(())
        })?;
        Ok(PyBytes::new(py, &out))
    }

    /// Set the replay's rules: the duplicate window, the `--until` time and the line limit
    /// (lines they leave out go to the Python side).
    #[pyo3(signature = (window_ms, until_ms=None, max_bytes=None))]
    fn replay_setup(&mut self, window_ms: i64, until_ms: Option<i64>, max_bytes: Option<usize>) {
        self.rules = ReplayRules {
            window: window_ms,
            until: until_ms,
            max_bytes,
        };
    }

    /// Replay the lines of `data` from byte `start` (each up to and including its `\n`; the
    /// rest after the last one only if `last`). Stops at the first line it does not take.
    /// Returns (position, stopped, transitions as JSON lines, lines, applied, duplicates,
    /// transitions, largest applied timestamp, arrival clock): `stopped` True: the line at
    /// `position` is the Python side's; False: every whole line is done and `position` is
    /// where the partial line left over starts (`len(data)` if none).
    fn replay_chunk(
        &mut self,
        py: Python<'_>,
        data: &[u8],
        start: usize,
        last: bool,
    ) -> PyResult<ChunkResult> {
        let mut out = Vec::with_capacity(1 << 16);
        let (mut lines, mut applied, mut duplicates, mut transitions) = (0, 0, 0, 0);
        let mut pos = start.min(data.len());
        let mut stopped = false;
        while pos < data.len() {
            let end = match memchr::memchr(b'\n', &data[pos..]) {
                Some(i) => pos + i + 1,
                None if last => data.len(),
                None => break,
            };
            match self.replay_line(&data[pos..end], &mut out) {
                Ok(Taken::No) => {
                    stopped = true;
                    break;
                }
                Ok(Taken::Duplicate) => duplicates += 1,
                Ok(Taken::Applied(n)) => {
                    applied += 1;
                    transitions += n;
                }
                Err(message) => return Err(PyRuntimeError::new_err(message)),
            }
            lines += 1;
            pos = end;
        }
        let result = (
            pos,
            stopped,
            PyBytes::new(py, &out).unbind(),
            lines,
            applied,
            duplicates,
            transitions,
            self.max_event,
            self.arrival_clock,
        );
        Ok(result)
    }

    /// An event the Python side parsed (a tuple as in `step`), with its arrival time (None:
    /// the file's clock): admitted and applied as `replay_chunk` does. Returns (None for a
    /// duplicate, else its transitions as JSON lines, largest applied timestamp, arrival clock).
    #[pyo3(signature = (fields, arrival_ms=None))]
    fn replay_fields<'py>(
        &mut self,
        py: Python<'py>,
        fields: &Bound<'py, PyTuple>,
        arrival_ms: Option<i64>,
    ) -> PyResult<(Option<Bound<'py, PyBytes>>, Option<i64>, i64)> {
        event_fields!(fields, self.model => event_id, tenant, contact_id, rule, ts);
        let mut out = Vec::new();
        let event = (event_id, tenant, contact_id);
        let taken = self
            .replay_event(event, (rule, ts, arrival_ms), &mut out)
            .map_err(PyRuntimeError::new_err)?;
        let result = match taken {
            Taken::Duplicate => None,
            _ => Some(PyBytes::new(py, &out)),
        };
        Ok((result, self.max_event, self.arrival_clock))
    }

    /// Every contact with an applied event, in the order of their first: (tenant, contact id,
    /// its duplicate window's digests, their arrivals), as `SeenIds` holds them.
    fn seen_windows<'py>(&self, py: Python<'py>) -> PyResult<Vec<SeenWindow<'py>>> {
        let mut out = Vec::with_capacity(self.order.len());
        for key in &self.order {
            let (tenant, contact_id) = key.split_once('\x1f').unwrap();
            let seen = &self.seen[key];
            let digests: Vec<u8> = seen.digests.concat();
            out.push((
                tenant.to_owned(),
                contact_id.to_owned(),
                PyBytes::new(py, &digests),
                seen.arrivals.clone(),
            ));
        }
        Ok(out)
    }

    /// Every contact with an applied event (tenant, contact id), in the order of their first.
    fn applied_keys(&self) -> Vec<(String, String)> {
        self.order
            .iter()
            .map(|key| {
                let (tenant, contact_id) = key.split_once('\x1f').unwrap();
                (tenant.to_owned(), contact_id.to_owned())
            })
            .collect()
    }

    /// The contact's snapshot as of `at_ms` (a dict of `ContactSnapshot` fields); the stored
    /// state does not change.
    fn snapshot<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        contact_id: &str,
        at_ms: i64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let s = self.get(tenant, contact_id)?;
        let mut work = Work::new(s.clone(), &self.model);
        let snap = work.evaluate(at_ms).map_err(PyRuntimeError::new_err)?;
        self.snapshot_dict(py, &work.s, &snap)
    }

    /// The contact's state, encoded as `encode_state` does.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        contact_id: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let s = self.get(tenant, contact_id)?;
        let data = state::encode(s, &self.model).map_err(PyValueError::new_err)?;
        Ok(PyBytes::new(py, &data))
    }

    /// The contact's due time (None: no time-driven change is due).
    fn due(&self, tenant: &str, contact_id: &str) -> PyResult<Option<i64>> {
        Ok(self.get(tenant, contact_id)?.due)
    }

    /// The contact's clock (ms).
    fn clock(&self, tenant: &str, contact_id: &str) -> PyResult<i64> {
        Ok(self.get(tenant, contact_id)?.clock)
    }

    /// `contact_index`: the contact's index at its clock.
    fn index(&self, tenant: &str, contact_id: &str) -> PyResult<f64> {
        let s = self.get(tenant, contact_id)?;
        Ok(Work::new(s.clone(), &self.model).contact_index())
    }

    /// Every contact: (tenant, contact id), in no particular order.
    fn list_keys(&self) -> Vec<(String, String)> {
        self.states
            .values()
            .map(|s| (s.tenant.clone(), s.contact_id.clone()))
            .collect()
    }

    fn remove(&mut self, tenant: &str, contact_id: &str) -> bool {
        self.states.remove(&key_of(tenant, contact_id)).is_some()
    }

    fn __contains__(&self, key: (String, String)) -> bool {
        self.states.contains_key(&key_of(&key.0, &key.1))
    }

    fn __len__(&self) -> usize {
        self.states.len()
    }
}

#[pymodule]
fn _kernel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Kernel>()?;
    m.add_class::<Contacts>()?;
    m.add_class::<StoredScorer>()?;
    m.add_class::<batch::KernelBatch>()?;
    Ok(())
}
