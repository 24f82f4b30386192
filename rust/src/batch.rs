//! `KernelBatch`: the worker's scoring of a whole batch in one call per run of records.
//!
//! `BatchScorer.process` (`stream/scoring.py`) hands the batch's records to `run`, which
//! scores, in order, every record on the kernel's fast path (`StoredScorer.route`'s checks,
//! then `StoredScorer.score` on the contact's table value, as `BatchScorer._kernel_score`
//! does) and keeps each contact's value, daily states and outputs of the batch here, in Rust.
//! It stops at the first record it does not take (another topic, a record `route` leaves, a
//! stored value `score` does not take, a re-delivered offset, a new contact whose id is an
//! alias, a contact the Python side holds): the Python side scores that one as before and
//! calls `run` again after it. Before the Python side touches a contact it `release`s it: the
//! contact's entry moves to the Python side, which keeps it for the rest of the batch. Wake-ups
//! are skipped and listed (`ticks`): they are applied after the other records, by the Python
//! side. `finish` writes the values, daily states and retention deletes of the contacts still
//! held here into the batch's table writes.
//!
//! Every output is what the per-record path gives, in the same order: the records sent
//! (transitions, then the snapshot, which replaces the contact's earlier one of the batch),
//! due times, stage moves, the history's transitions, the daily states (`_Entry.set_value`,
//! `_pass_day` and `put_days`: the state of each day the clock left, the one it closes, and
//! whether that day is new).

use crate::{EventRef, ScoreOutcome, StoredScorer};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

const MS_PER_DAY: i64 = 86_400_000;

/// `stream/daily.py`'s `closing_day`: the day whose end a state at `clock` is as of.
fn closing_day(clock: i64) -> i64 {
    (clock - 1).div_euclid(MS_PER_DAY)
}

/// `stream/daily.py`'s `day_key`: the contact key, the separator, the day + 2**31 as 4 bytes
/// big-endian.
fn day_key(contact_key: &[u8], day: i64) -> PyResult<Vec<u8>> {
    let shifted = u32::try_from(day + (1i64 << 31))
        .map_err(|_| PyValueError::new_err("a day outside the daily table's keys"))?;
    let mut key = Vec::with_capacity(contact_key.len() + 5);
    key.extend_from_slice(contact_key);
    key.push(0x1f);
    key.extend_from_slice(&shifted.to_be_bytes());
    Ok(key)
}

/// `items` as a list of `bytes` (a contact's history transitions).
fn byte_list<'py>(py: Python<'py>, items: &[Vec<u8>]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for item in items {
        list.append(PyBytes::new(py, item))?;
    }
    Ok(list)
}

/// A contact this batch holds (`_Entry` in its raw form, with its batch bookkeeping).
#[derive(Default)]
struct Slot {
    /// the table value (None: no state yet)
    value: Option<Vec<u8>>,
    /// where the state's bytes start in `value` (None: as loaded, not yet known)
    state_at: Option<usize>,
    /// the published index at full precision (None: the value's own)
    published: Option<f64>,
    /// the state's clock (once the batch changed the state)
    clock: i64,
    /// the state changed in this batch
    daily: bool,
    /// states the clock moved on from, by the day they close
    passed: Vec<(i64, Vec<u8>)>,
    /// the closing day of the stored state (None: none, or not known)
    loaded_day: Option<i64>,
    /// index of the last record that changed it (-1: none)
    last_index: i64,
    /// where in the batch's sends its latest snapshot is
    snapshot_at: Option<usize>,
    /// transitions for its score history, and the index of the record of the last
    history: Vec<Vec<u8>>,
    history_index: i64,
}

/// What `KernelBatch` is told once per batch (`BatchScorer._kernel_batch`).
struct Topics {
    /// topic -> source id, for the topics whose records the fast path may take
    sources: HashMap<String, u16>,
    ticks: String,
    stage_changes: String,
    scores: String,
}

/// A record's fields from its tuple's items (None: not the types an `InboundRecord` has).
fn record_ref<'a>(
    t: &Bound<'_, PyTuple>,
    topic: &'a Borrowed<'a, '_, PyAny>,
    key: &'a Borrowed<'a, '_, PyAny>,
    value: &'a Borrowed<'a, '_, PyAny>,
) -> Option<RecordRef<'a>> {
    let bytes = |item: &'a Borrowed<'a, '_, PyAny>| -> Option<Option<&'a [u8]>> {
        if item.is_none() {
            Some(None)
        } else {
            item.extract().ok().map(Some)
        }
    };
    Some(RecordRef {
        topic: topic.extract().ok()?,
        partition: t.get_borrowed_item(1).ok()?.extract().ok()?,
        offset: t.get_borrowed_item(2).ok()?.extract().ok()?,
        key: bytes(key)?,
        value: bytes(value)?,
        timestamp: t.get_borrowed_item(5).ok()?.extract().ok()?,
    })
}

/// One record of the batch, read from an `InboundRecord`.
struct RecordRef<'a> {
    topic: &'a str,
    partition: usize,
    offset: u64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    timestamp: i64,
}

#[pyclass(module = "engagement_index._kernel", unsendable)]
pub struct KernelBatch {
    scorer: Py<StoredScorer>,
    topics: Topics,
    now_ms: i64,
    /// `load_contact(key, index)`: the contact's stored value or None
    load: PyObject,
    /// `absorbed(key, index)`: whether a key without a value is an alias
    absorbed: PyObject,
    /// `tuple.__new__` bound to `OutboundRecord`, and the batch's replaced-snapshot marker
    make_record: PyObject,
    replaced_marker: PyObject,
    slots: HashMap<Vec<u8>, Slot>,
    /// the slots' keys in the order they were first read
    order: Vec<Vec<u8>>,
    released: HashSet<Vec<u8>>,
    ticks: Vec<usize>,
}

/// An output record (`OutboundRecord(topic, key, value)`), made by `make`.
fn send<'py>(
    make: &Bound<'py, PyAny>,
    topic: &str,
    key: &Bound<'py, PyBytes>,
    value: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let py = make.py();
    let fields = (
        topic,
        key,
        PyBytes::new(py, value),
        PyTuple::empty(py),
        py.None(),
        py.None(),
    );
    make.call1((fields,))
}

#[pymethods]
impl KernelBatch {
    /// A batch of `scorer`: `topics` (topic -> source id of the fast path's topics, the
    /// wake-up topic, the stage-change topic, the score topic), the batch's clock, the
    /// table read and alias check, and how to make an output record.
    #[new]
    #[pyo3(signature = (scorer, topics, now_ms, readers, records))]
    fn new(
        scorer: Py<StoredScorer>,
        topics: (HashMap<String, u16>, String, String, String),
        now_ms: i64,
        readers: (PyObject, PyObject),
        records: (PyObject, PyObject),
    ) -> KernelBatch {
        let (sources, ticks, stage_changes, scores) = topics;
        KernelBatch {
            scorer,
            topics: Topics {
                sources,
                ticks,
                stage_changes,
                scores,
            },
            now_ms,
            load: readers.0,
            absorbed: readers.1,
            make_record: records.0,
            replaced_marker: records.1,
            slots: HashMap::new(),
            order: Vec::new(),
            released: HashSet::new(),
            ticks: Vec::new(),
        }
    }

    /// Score `records[start:]` until one the kernel does not take; `base` is the number of
    /// records the batch has sent so far. Returns (the index it stopped at, or the length;
    /// the run's sends; positions of earlier sends its snapshots replaced; how many of all
    /// its sends and earlier ones were replaced; due times (key -> (partition, due));
    /// stage moves; transition labels; arrival times; (topic, outcome) -> count;
    /// topic -> newest event time).
    #[allow(clippy::type_complexity)]
    fn run<'py>(
        &mut self,
        py: Python<'py>,
        records: &Bound<'py, PyList>,
        start: usize,
        base: usize,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let scorer = self.scorer.get();
        let model = scorer.view.model.clone();
        let sends = PyList::empty(py);
        let mut replaced_earlier: Vec<usize> = Vec::new();
        let mut replaced = 0usize;
        let due = PyDict::new(py);
        let moves = PyList::empty(py);
        let labels = PyList::empty(py);
        let mut arrivals: Vec<i64> = Vec::new();
        let mut outcomes: HashMap<(String, &'static str), u64> = HashMap::new();
        let mut newest: HashMap<String, i64> = HashMap::new();
        let n = records.len();
        let mut index = start;
        while index < n {
            let item = records.get_item(index)?;
            // an InboundRecord: topic, partition, offset, key, value, timestamp ms
            let t = item.downcast::<PyTuple>()?;
            let (topic, key, value) = (
                t.get_borrowed_item(0)?,
                t.get_borrowed_item(3)?,
                t.get_borrowed_item(4)?,
            );
            let Some(r) = record_ref(t, &topic, &key, &value) else {
                break; // not the types the Python side makes: it decides
            };
            if r.topic == self.topics.ticks {
                self.ticks.push(index);
                index += 1;
                continue;
            }
            let Some(&source) = self.topics.sources.get(r.topic) else {
                break;
            };
            let (Some(key), Some(value)) = (r.key, r.value) else {
                break;
            };
            let Some(fields) = scorer.routed(value, key, r.partition, self.now_ms) else {
                break;
            };
            if self.released.contains(key) {
                break;
            }
            let py_key = PyBytes::new(py, key);
            if !self.slots.contains_key(key) {
                // a read that fails is left to the Python side, which reads again and
                // dead-letters the record if that fails too (as for every record it scores)
                let Ok(loaded) = self.load.bind(py).call1((&py_key, index)) else {
                    break;
                };
                let mut slot = Slot {
                    last_index: -1,
                    history_index: -1,
                    ..Slot::default()
                };
                if loaded.is_none() {
                    let absorbed = self
                        .absorbed
                        .bind(py)
                        .call1((&py_key, index))
                        .and_then(|alias| alias.is_truthy());
                    self.slots.insert(key.to_vec(), slot);
                    self.order.push(key.to_vec());
                    if absorbed.unwrap_or(true) {
                        break; // an absorbed id (or a failed read): the Python side decides
                    }
                } else {
                    let Ok(bytes) = loaded.downcast::<PyBytes>() else {
                        break;
                    };
                    slot.value = Some(bytes.as_bytes().to_vec());
                    self.slots.insert(key.to_vec(), slot);
                    self.order.push(key.to_vec());
                }
            }
            let slot = self.slots.get_mut(key).expect("read above");
            let Some(&rule) = model.rule_by_type.get(fields.event_type.as_ref()) else {
                break;
            };
            let event = EventRef {
                event_id: &fields.event_id,
                tenant: &fields.tenant,
                contact_id: &fields.contact_id,
                rule,
                ts: fields.ts,
            };
            let record = (source, r.offset, r.timestamp);
            let outcome = scorer.score_event(slot.value.as_deref(), slot.published, &event, record);
            let applied = match outcome {
                Ok(ScoreOutcome::Applied(a)) => a,
                // the Python side decides: it scores the record one by one (and dead-letters
                // it if that fails: never a failed batch for one record's sake)
                _ => break,
            };
            let topic_outcome;
            if applied.code == 2 {
                topic_outcome = "scored";
                due.set_item(&py_key, (r.partition, applied.due))?;
                for t in &applied.transitions {
                    let make = self.make_record.bind(py);
                    sends.append(send(make, &self.topics.stage_changes, &py_key, &t.payload)?)?;
                    let lc = &model.lifecycles[t.lifecycle];
                    let from = t.from_stage.map(|f| lc.stages[f].name.as_str());
                    let to = lc.stages[t.to_stage].name.as_str();
                    moves.append((lc.name.as_str(), from, to))?;
                    labels.append((lc.name.as_str(), from, to, t.reason.as_str()))?;
                    slot.history.push(t.payload.clone());
                    slot.history_index = index as i64;
                }
                if let Some(snapshot) = &applied.snapshot {
                    if let Some(earlier) = slot.snapshot_at {
                        if earlier >= base {
                            sends.set_item(earlier - base, self.replaced_marker.bind(py))?;
                        } else {
                            replaced_earlier.push(earlier);
                        }
                        replaced += 1;
                    }
                    slot.snapshot_at = Some(base + sends.len());
                    sends.append(send(
                        self.make_record.bind(py),
                        &self.topics.scores,
                        &py_key,
                        snapshot,
                    )?)?;
                }
                // _Entry.set_value: the stored state's day, the day the clock leaves
                if !slot.daily {
                    if let Some(before) = applied.before {
                        slot.loaded_day = Some(closing_day(before));
                    }
                } else {
                    let day = closing_day(slot.clock);
                    if day != closing_day(applied.clock) {
                        let value = slot.value.as_deref().unwrap_or_default();
                        let at = slot.state_at.unwrap_or(0).min(value.len());
                        let state = value[at..].to_vec();
                        match slot.passed.iter_mut().find(|(d, _)| *d == day) {
                            Some(p) => p.1 = state,
                            None => slot.passed.push((day, state)),
                        }
                    }
                }
                slot.clock = applied.clock;
                slot.daily = true;
            } else {
                topic_outcome = "duplicate";
            }
            slot.value = Some(applied.data);
            slot.state_at = Some(applied.state_at);
            slot.published = Some(applied.published);
            slot.last_index = index as i64;
            arrivals.push(r.timestamp);
            let newest_ts = newest.entry(r.topic.to_owned()).or_insert(i64::MIN);
            if fields.ts > *newest_ts {
                *newest_ts = fields.ts;
            }
            *outcomes
                .entry((r.topic.to_owned(), topic_outcome))
                .or_insert(0) += 1;
            index += 1;
        }
        let counts = PyDict::new(py);
        for ((topic, outcome), count) in outcomes {
            counts.set_item((topic, outcome), count)?;
        }
        let newest_dict = PyDict::new(py);
        for (topic, ts) in newest {
            newest_dict.set_item(topic, ts)?;
        }
        PyTuple::new(
            py,
            [
                index.into_pyobject(py)?.into_any(),
                sends.into_any(),
                replaced_earlier.into_pyobject(py)?.into_any(),
                replaced.into_pyobject(py)?.into_any(),
                due.into_any(),
                moves.into_any(),
                labels.into_any(),
                arrivals.into_pyobject(py)?.into_any(),
                counts.into_any(),
                newest_dict.into_any(),
            ],
        )
    }

    /// Hand a contact to the Python side for the rest of the batch (later records of it stop
    /// `run`). None if this batch never read it; else (value or None, where its state
    /// starts or None, published index or None, whether its state changed, states passed
    /// by day or None, the stored state's day or None, last index, where its snapshot is in
    /// the batch's sends or None, its history transitions, the index of the last).
    #[allow(clippy::type_complexity)]
    fn release<'py>(
        &mut self,
        py: Python<'py>,
        key: &[u8],
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if !self.released.insert(key.to_vec()) {
            return Ok(None);
        }
        let Some(slot) = self.slots.remove(key) else {
            return Ok(None);
        };
        let passed = if slot.passed.is_empty() {
            py.None().into_bound(py)
        } else {
            let d = PyDict::new(py);
            for (day, state) in &slot.passed {
                d.set_item(day, PyBytes::new(py, state))?;
            }
            d.into_any()
        };
        let history = byte_list(py, &slot.history)?;
        PyTuple::new(
            py,
            [
                slot.value
                    .as_deref()
                    .map(|v| PyBytes::new(py, v))
                    .into_pyobject(py)?
                    .into_any(),
                slot.state_at.into_pyobject(py)?.into_any(),
                slot.published.into_pyobject(py)?.into_any(),
                slot.daily.into_pyobject(py)?.to_owned().into_any(),
                passed,
                slot.loaded_day.into_pyobject(py)?.into_any(),
                slot.last_index.into_pyobject(py)?.into_any(),
                slot.snapshot_at.into_pyobject(py)?.into_any(),
                history.into_any(),
                slot.history_index.into_pyobject(py)?.into_any(),
            ],
        )
        .map(Some)
    }

    /// The wake-ups `run` skipped, by index.
    #[getter]
    fn ticks(&self) -> Vec<usize> {
        self.ticks.clone()
    }

    /// The table writes of the contacts still held that a record changed, in the order they
    /// were read: their values into `writes` (key -> (index, value)), their daily states and
    /// the retention's deletes into `daily_writes` (`DailyBatch.writes`; `list_days` lists a
    /// contact's stored days before a day, None: there are none). Returns, per contact with
    /// transitions, (key, their JSON bytes, the index of the last), and how many contacts
    /// have a snapshot in the batch.
    #[pyo3(signature = (writes, daily_writes, list_days, history_days))]
    fn finish<'py>(
        &mut self,
        py: Python<'py>,
        writes: &Bound<'py, PyDict>,
        daily_writes: &Bound<'py, PyDict>,
        list_days: &Bound<'py, PyAny>,
        history_days: i64,
    ) -> PyResult<(Bound<'py, PyList>, usize)> {
        let histories = PyList::empty(py);
        let mut snapshots = 0;
        for key in std::mem::take(&mut self.order) {
            let Some(slot) = self.slots.remove(&key) else {
                continue; // released
            };
            if slot.last_index < 0 {
                continue;
            }
            let Some(value) = slot.value.as_deref() else {
                return Err(PyValueError::new_err("a changed contact without a value"));
            };
            let py_key = PyBytes::new(py, &key);
            writes.set_item(&py_key, (slot.last_index, PyBytes::new(py, value)))?;
            if slot.daily {
                let at = slot.state_at.unwrap_or(0).min(value.len());
                let day = closing_day(slot.clock);
                let mut days: Vec<(i64, &[u8])> = slot
                    .passed
                    .iter()
                    .map(|(d, v)| (*d, v.as_slice()))
                    .collect();
                days.push((day, &value[at..]));
                for (d, state) in &days {
                    let k = day_key(&key, *d)?;
                    daily_writes.set_item(k, (slot.last_index, PyBytes::new(py, state)))?;
                }
                if Some(day) != slot.loaded_day {
                    // a day it did not have at the batch start: retention may delete some
                    let newest = days.iter().map(|(d, _)| *d).max().unwrap_or(day);
                    let cutoff = newest - history_days;
                    let stored: Vec<i64> = if list_days.is_none() {
                        Vec::new()
                    } else {
                        list_days
                            .call1((&py_key, slot.last_index, cutoff))?
                            .extract()?
                    };
                    let mut below: Vec<i64> = stored.clone();
                    below.extend(days.iter().map(|(d, _)| *d).filter(|d| *d < cutoff));
                    below.sort_unstable();
                    below.dedup();
                    let older = below.iter().filter(|d| **d < cutoff).count();
                    for d in &below[..older.saturating_sub(1)] {
                        let k = day_key(&key, *d)?;
                        if days.iter().any(|(x, _)| x == d) && !stored.contains(d) {
                            daily_writes.del_item(k)?; // put by this batch only
                        } else {
                            daily_writes.set_item(k, (slot.last_index, py.None()))?;
                        }
                    }
                }
            }
            if !slot.history.is_empty() {
                let payloads = byte_list(py, &slot.history)?;
                histories.append((py_key, payloads, slot.history_index))?;
            }
            snapshots += usize::from(slot.snapshot_at.is_some());
        }
        Ok((histories, snapshots))
    }
}
