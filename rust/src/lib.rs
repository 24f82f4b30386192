//! `engagement_index._kernel`: the compiled form of the scoring core's per-contact hot path.
//!
//! The Python core (`engagement_index.core`) is the specification; this crate repeats its
//! state codec, fold, time-driven changes and crossing solves with the same float operations in
//! the same order, so that states, transitions and snapshots are identical to the byte.
//! `engagement_index.kernel` is the Python side: it hands the compiled model over once and
//! calls a `Contacts` store with whole batches of events.

mod decay;
mod engine;
mod model;
mod state;

use engine::{rfc3339, Snapshot, Transition, Work};
use model::Model;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

fn key_of(tenant: &str, contact_id: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + contact_id.len() + 1);
    key.push_str(tenant);
    key.push('\x1f');
    key.push_str(contact_id);
    key
}

/// A compiled model, handed over once (the JSON of `engagement_index.kernel.model_blob`).
#[pyclass(module = "engagement_index._kernel", frozen)]
struct Kernel {
    model: Arc<Model>,
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
        Contacts {
            model: self.model.clone(),
            states: HashMap::new(),
        }
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
        let view = Contacts {
            model: self.model.clone(),
            states: HashMap::new(),
        };
        let out = PyList::empty(py);
        for item in items.iter() {
            let item = item.downcast_into::<PyTuple>()?;
            let data = item.get_borrowed_item(0)?;
            let fields = item.get_item(1)?.downcast_into::<PyTuple>()?;
            let published: f64 = item.get_borrowed_item(2)?.extract()?;
            let score_step: f64 = item.get_borrowed_item(3)?.extract()?;
            let (a, b, c, d) = (
                fields.get_borrowed_item(0)?,
                fields.get_borrowed_item(1)?,
                fields.get_borrowed_item(2)?,
                fields.get_borrowed_item(3)?,
            );
            let event_id: &str = a.extract()?;
            let tenant: &str = b.extract()?;
            let contact_id: &str = c.extract()?;
            let event_type: &str = d.extract()?;
            let ts: i64 = fields.get_borrowed_item(4)?.extract()?;
            let rule = *model
                .rule_by_type
                .get(event_type)
                .ok_or_else(|| PyValueError::new_err("an event type the model does not score"))?;
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

/// Decoded contact states of one model, keyed by (tenant, contact id).
#[pyclass(module = "engagement_index._kernel")]
struct Contacts {
    model: Arc<Model>,
    states: HashMap<String, state::State>,
}

impl Contacts {
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
            let (a, b, c, d) = (
                item.get_borrowed_item(0)?,
                item.get_borrowed_item(1)?,
                item.get_borrowed_item(2)?,
                item.get_borrowed_item(3)?,
            );
            let event_id: &str = a.extract()?;
            let tenant: &str = b.extract()?;
            let contact_id: &str = c.extract()?;
            let event_type: &str = d.extract()?;
            let ts: i64 = item.get_borrowed_item(4)?.extract()?;
            let rule = *model
                .rule_by_type
                .get(event_type)
                .ok_or_else(|| PyValueError::new_err("an event type the model does not score"))?;
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
        let out = PyList::empty(py);
        while let Some(Reverse((due, _, _, key))) = queue.pop() {
            let s = self.states.get(&key).unwrap();
            let mut work = Work::new(s.clone(), &model);
            work.advance(due).map_err(PyRuntimeError::new_err)?;
            for t in &work.transitions {
                out.append(self.transition_dict(py, &work.s, t)?)?;
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
        Ok(out.unbind())
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
    Ok(())
}
