//! The lifecycle engine of `engagement_index.core.lifecycle` (step, advance, evaluate, the due
//! time solve), statement for statement, for states of the model's own layout.

use crate::decay::{
    crossing_delay_ms, factor, index_of, late_contribution, max_delay_for, pow2, score,
    trend_crossing_ms, trend_ratio,
};
use crate::model::{
    Cond, Lifecycle, Model, Rule, ALL, ANY, CONTACT, EVENT, IN_STAGE, LEVEL, MARKER, TREND,
};
use crate::state::{State, Window, ACTIVITY_DAYS, ACTIVITY_MASK, EMPTY_WINDOW, MS_PER_DAY};
use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};

const INF: i64 = 1 << 62;
type Intervals = Vec<(i64, i64)>;

/// One transition, as the Python core's ``Transition`` holds it.
pub struct Transition {
    pub transition_id: String,
    pub lifecycle: usize,
    pub from_stage: Option<usize>,
    pub to_stage: usize,
    pub half: usize,
    pub reason: String,
    pub index: f64,
    pub previous_index: f64,
    pub components: Vec<f64>,
    pub cause: Option<String>,
    pub occurred_ms: i64,
    pub rule_id: Option<String>,
}

/// What a contact's snapshot holds (the Python core's ``ContactSnapshot``).
pub struct Snapshot {
    pub stage: usize,
    pub half: usize,
    pub index: f64,
    pub components: Vec<f64>,
    pub customer: bool,
    pub first_seen_ms: i64,
    pub last_event_ms: i64,
    pub events_counted: u64,
    pub active: [u32; 3],
    pub at: i64,
    /// per lifecycle: stage position, entered at
    pub lifecycles: Vec<(usize, i64)>,
    /// set markers: position, when
    pub markers: Vec<(usize, i64)>,
}

pub fn transition_id(parts: &[Option<&str>]) -> String {
    let mut hasher = Blake2b::<U16>::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b"\x1f");
        }
        hasher.update(p.unwrap_or("\x00").as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = hasher.finalize();
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

struct Change<'c> {
    reason: &'c str,
    cause: Option<&'c str>,
    rule_id: Option<&'c str>,
    from_null: bool,
}

struct Instant<'c> {
    event_type: Option<usize>,
    cause: Option<&'c str>,
    first_event: bool,
    reason: Option<&'c str>,
}

pub struct Work<'m> {
    pub cm: &'m Model,
    pub s: State,
    pub transitions: Vec<Transition>,
    last_reported: Vec<Option<f64>>,
    prev_values: Vec<f64>,
    prev_stages: Vec<usize>,
}

fn intersect(a: &Intervals, b: &Intervals) -> Intervals {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let start = a[i].0.max(b[j].0);
        let end = a[i].1.min(b[j].1);
        if start < end {
            out.push((start, end));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn union(sets: Vec<Intervals>) -> Intervals {
    let mut items: Vec<(i64, i64)> = sets.into_iter().flatten().collect();
    items.sort();
    let mut out: Intervals = Vec::new();
    for (start, end) in items {
        if let Some(last) = out.last_mut() {
            if start <= last.1 {
                if end > last.1 {
                    last.1 = end;
                }
                continue;
            }
        }
        out.push((start, end));
    }
    out
}

/// The vectors a `Work` keeps besides its state, handed from one `Work` to the next by a loop
/// that steps many contacts (`Work::with_buffers`, `Work::into_buffers`), so that stepping an
/// event allocates none of them again.
#[derive(Default)]
pub struct Buffers {
    transitions: Vec<Transition>,
    last_reported: Vec<Option<f64>>,
    prev_values: Vec<f64>,
    prev_stages: Vec<usize>,
}

impl Buffers {
    /// The transitions of the `Work` these were taken from (`Work::into_buffers`).
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }
}

impl<'m> Work<'m> {
    pub fn new(s: State, cm: &'m Model) -> Work<'m> {
        Work::with_buffers(s, cm, Buffers::default())
    }

    /// `Work::new` in `buffers` (their contents are replaced: no transitions, nothing
    /// reported, the previous values and stages those of `s`).
    pub fn with_buffers(s: State, cm: &'m Model, buffers: Buffers) -> Work<'m> {
        let Buffers {
            mut transitions,
            mut last_reported,
            mut prev_values,
            mut prev_stages,
        } = buffers;
        transitions.clear();
        last_reported.clear();
        last_reported.resize(cm.lifecycles.len(), None);
        prev_values.clone_from(&s.values);
        prev_stages.clone_from(&s.stages);
        Work {
            cm,
            s,
            transitions,
            last_reported,
            prev_values,
            prev_stages,
        }
    }

    /// The state and the buffers (the transitions still in them) for the next `with_buffers`.
    pub fn into_buffers(self) -> (State, Buffers) {
        let buffers = Buffers {
            transitions: self.transitions,
            last_reported: self.last_reported,
            prev_values: self.prev_values,
            prev_stages: self.prev_stages,
        };
        (self.s, buffers)
    }

    /// The state before a contact's first event: nothing yet, at the event's time.
    pub fn new_state(tenant: &str, contact_id: &str, ts: i64, cm: &Model) -> State {
        let n = cm.lifecycles.len();
        State {
            tenant: tenant.to_owned(),
            contact_id: contact_id.to_owned(),
            clock: ts,
            values: vec![0.0; cm.names.len()],
            first: ts,
            last: ts,
            counted: 0,
            days: 0,
            due: None,
            stages: vec![0; n],
            entered: vec![ts; n],
            markers: 0,
            marker_ms: vec![None; cm.markers.len()],
            trend: if cm.trend.is_some() {
                vec![0.0, 0.0]
            } else {
                Vec::new()
            },
            caps: vec![[EMPTY_WINDOW, EMPTY_WINDOW]; cm.caps.len()],
        }
    }

    fn weights_of(&self, index: i64, stages: &[usize]) -> usize {
        if index == CONTACT {
            let first = &self.cm.lifecycles[0];
            return first.stages[stages[0]].index as usize;
        }
        index as usize
    }

    fn level(&self, source: i64) -> f64 {
        let source = if source == CONTACT {
            self.weights_of(CONTACT, &self.s.stages) as i64
        } else {
            source
        };
        if source == TREND {
            trend_ratio(&self.s.trend, 0, self.cm.trend.unwrap())
        } else {
            index_of(&self.s.values, &self.cm.weights[source as usize], self.cm)
        }
    }

    fn holds(&self, cond: &Cond, lc: usize, event_type: Option<usize>) -> bool {
        match cond.kind {
            LEVEL => {
                let value = self.level(cond.source);
                if cond.at_least {
                    value >= cond.level
                } else {
                    value < cond.level
                }
            }
            MARKER => (self.s.markers & cond.bit != 0) == cond.wanted,
            ALL => cond.children.iter().all(|c| self.holds(c, lc, event_type)),
            ANY => cond.children.iter().any(|c| self.holds(c, lc, event_type)),
            EVENT => event_type.is_some_and(|t| cond.types.contains(&t)),
            IN_STAGE => self.s.clock - self.s.entered[lc] >= cond.ms,
            _ => {
                // SINCE
                let at = self.s.marker_ms[cond.marker];
                self.s.markers & cond.bit != 0 && at.is_some_and(|a| self.s.clock - a >= cond.ms)
            }
        }
    }

    fn truth(&self, cond: &Cond, lc: usize) -> Intervals {
        match cond.kind {
            LEVEL => {
                let value = self.level(cond.source);
                let below_now = value < cond.level;
                if cond.at_least && below_now {
                    return Vec::new();
                }
                if !cond.at_least && below_now {
                    return vec![(0, INF)];
                }
                let crossing = self.crossing(cond.source, cond.level);
                if cond.at_least {
                    return vec![(0, crossing.unwrap_or(INF))];
                }
                match crossing {
                    None => Vec::new(),
                    Some(c) => vec![(c, INF)],
                }
            }
            MARKER => {
                if (self.s.markers & cond.bit != 0) == cond.wanted {
                    vec![(0, INF)]
                } else {
                    Vec::new()
                }
            }
            ALL => {
                let mut result: Intervals = vec![(0, INF)];
                for child in &cond.children {
                    result = intersect(&result, &self.truth(child, lc));
                    if result.is_empty() {
                        break;
                    }
                }
                result
            }
            ANY => union(cond.children.iter().map(|c| self.truth(c, lc)).collect()),
            EVENT => Vec::new(),
            IN_STAGE => vec![((self.s.entered[lc] + cond.ms - self.s.clock).max(0), INF)],
            _ => {
                let at = self.s.marker_ms[cond.marker];
                match at {
                    Some(a) if self.s.markers & cond.bit != 0 => {
                        vec![((a + cond.ms - self.s.clock).max(0), INF)]
                    }
                    _ => Vec::new(),
                }
            }
        }
    }

    fn crossing(&self, source: i64, level: f64) -> Option<i64> {
        let max_delay = max_delay_for(self.s.clock);
        let source = if source == CONTACT {
            self.weights_of(CONTACT, &self.s.stages) as i64
        } else {
            source
        };
        if source == TREND {
            return trend_crossing_ms(&self.s.trend, self.cm.trend.unwrap(), level, max_delay);
        }
        let weights = &self.cm.weights[source as usize];
        crossing_delay_ms(&self.s.values, weights, self.cm, level, max_delay)
    }

    pub fn solve_due(&mut self) {
        let mut best = INF;
        let max_delay = max_delay_for(self.s.clock);
        for lc in &self.cm.lifecycles {
            for edge in &lc.stages[self.s.stages[lc.position]].edges {
                for (start, end) in self.truth(&edge.cond, lc.position) {
                    let d = start.max(1);
                    if d < end {
                        if d < best {
                            best = d;
                        }
                        break;
                    }
                }
            }
        }
        self.s.due = if best <= max_delay {
            Some(self.s.clock + best)
        } else {
            None
        };
    }

    fn begin_instant(&mut self) {
        self.prev_values.clone_from(&self.s.values);
        self.prev_stages.clone_from(&self.s.stages);
        for r in self.last_reported.iter_mut() {
            *r = None;
        }
    }

    pub fn rebase(&mut self, delta: i64) {
        let cm = self.cm;
        for (v, &h) in self.s.values.iter_mut().zip(&cm.half_life_ms) {
            *v *= factor(delta, h);
        }
        if !self.s.trend.is_empty() {
            let (fast, slow) = cm.trend.unwrap();
            self.s.trend[0] *= factor(delta, fast);
            self.s.trend[1] *= factor(delta, slow);
        }
        for (c, windows) in self.s.caps.iter_mut().enumerate() {
            let h = cm.half_life_ms[cm.caps[c].component];
            for w in windows.iter_mut() {
                if w.1 != 0 {
                    w.2 *= factor(delta, h);
                }
            }
        }
        self.s.clock += delta;
    }

    fn emit(&mut self, lc: &'m Lifecycle, to: usize, change: &Change) -> Result<(), String> {
        let position = lc.position;
        let from_stage = if change.from_null {
            None
        } else {
            Some(self.s.stages[position])
        };
        let previous = if change.from_null {
            0.0
        } else if let Some(p) = self.last_reported[position] {
            p
        } else {
            // the index of the current stage, on the values before the instant
            let stage = self.s.stages[position];
            let weights = self.weights_of(lc.stages[stage].index, &self.prev_stages);
            index_of(&self.prev_values, &self.cm.weights[weights], self.cm)
        };
        self.s.stages[position] = to;
        self.s.entered[position] = self.s.clock;
        let stage = &lc.stages[to];
        let weights = self.weights_of(stage.index, &self.s.stages);
        let index = self.level(weights as i64);
        self.last_reported[position] = Some(index);
        let cm = self.cm;
        let clock = self.s.clock.to_string();
        let mut parts: Vec<Option<&str>> = vec![
            Some(&self.s.tenant),
            Some(&self.s.contact_id),
            Some(&cm.version),
            Some(&clock),
            from_stage.map(|s| lc.stages[s].name.as_str()),
            Some(&stage.name),
            Some(change.reason),
            change.cause,
        ];
        if !lc.id_prefix.is_empty() {
            parts.push(Some(&lc.id_prefix));
        }
        let id = transition_id(&parts);
        let components = self
            .s
            .values
            .iter()
            .zip(&cm.saturation)
            .map(|(&v, &k)| score(v, k))
            .collect();
        self.transitions.push(Transition {
            transition_id: id,
            lifecycle: position,
            from_stage,
            to_stage: to,
            half: weights,
            reason: change.reason.to_owned(),
            index,
            previous_index: previous,
            components,
            cause: change.cause.map(str::to_owned),
            occurred_ms: self.s.clock,
            rule_id: change.rule_id.map(str::to_owned),
        });
        Ok(())
    }

    fn run_chain(
        &mut self,
        lc: &'m Lifecycle,
        event_type: Option<usize>,
        context: &Instant,
    ) -> Result<(), String> {
        let position = lc.position;
        for _ in 0..(lc.stages.len() * 4 + 8) {
            let mut fired = false;
            for edge in &lc.stages[self.s.stages[position]].edges {
                if self.holds(&edge.cond, position, event_type) {
                    let reason = if let Some(r) = context.reason {
                        r
                    } else if event_type.is_none() {
                        edge.time_reason.as_str()
                    } else {
                        edge.event_reason.as_str()
                    };
                    let rule_id = if context.reason == Some("model_change") {
                        None
                    } else {
                        Some(edge.rule_id.as_str())
                    };
                    let change = Change {
                        reason,
                        cause: context.cause,
                        rule_id,
                        from_null: false,
                    };
                    self.emit(lc, edge.to, &change)?;
                    fired = true;
                    break;
                }
            }
            if !fired {
                return Ok(());
            }
        }
        Err(format!(
            "lifecycle '{}': a same-instant chain did not end",
            lc.name
        ))
    }

    fn run_instant(&mut self, context: &Instant) -> Result<(), String> {
        let cm = self.cm;
        for lc in &cm.lifecycles {
            if context.first_event {
                for entry in &lc.initial {
                    if self.holds(&entry.cond, lc.position, context.event_type) {
                        let change = Change {
                            reason: "first_seen",
                            cause: context.cause,
                            rule_id: Some(&entry.rule_id),
                            from_null: true,
                        };
                        self.emit(lc, entry.stage, &change)?;
                        break;
                    }
                }
            }
            self.run_chain(lc, context.event_type, context)?;
        }
        Ok(())
    }

    pub fn fire_due(&mut self) -> Result<(), String> {
        let due = self.s.due.unwrap();
        self.begin_instant();
        self.rebase(due - self.s.clock);
        let context = Instant {
            event_type: None,
            cause: None,
            first_event: false,
            reason: None,
        };
        self.run_instant(&context)?;
        self.solve_due();
        Ok(())
    }

    fn fold(&mut self, rule: &Rule, ts: i64) {
        let cm = self.cm;
        let comp = rule.component;
        let points = rule.points;
        let late = ts < self.s.clock;
        if !late && ts > self.s.clock {
            self.rebase(ts - self.s.clock);
        }
        let age = self.s.clock - ts;
        if rule.cap >= 0 {
            self.fold_cap(rule, ts, age);
        } else if late {
            self.s.values[comp] += late_contribution(points, age, cm.half_life_ms[comp]);
        } else {
            self.s.values[comp] += points;
        }
        if points > 0.0 && !self.s.trend.is_empty() {
            let (fast, slow) = cm.trend.unwrap();
            if late {
                self.s.trend[0] += late_contribution(points, age, fast);
                self.s.trend[1] += late_contribution(points, age, slow);
            } else {
                self.s.trend[0] += points;
                self.s.trend[1] += points;
            }
        }
        for m in 0..cm.markers.len() {
            let bit = 1u64 << m;
            let at = self.s.marker_ms[m];
            if rule.clears & bit != 0 && at.is_none_or(|a| ts >= a) {
                self.s.markers &= !bit;
                self.s.marker_ms[m] = Some(ts);
            } else if rule.sets & bit != 0 && at.is_none_or(|a| ts > a) {
                self.s.markers |= bit;
                self.s.marker_ms[m] = Some(ts);
            }
        }
        self.s.first = self.s.first.min(ts);
        if ts > self.s.last {
            let shift = ts.div_euclid(MS_PER_DAY) - self.s.last.div_euclid(MS_PER_DAY);
            self.s.days = if shift < ACTIVITY_DAYS {
                (self.s.days << shift) & ACTIVITY_MASK
            } else {
                0
            };
            self.s.last = ts;
        }
        if points > 0.0 {
            let bit = self.s.last.div_euclid(MS_PER_DAY) - ts.div_euclid(MS_PER_DAY);
            if bit < ACTIVITY_DAYS {
                self.s.days |= 1u128 << bit;
            }
        }
        self.s.counted += 1;
    }

    fn fold_cap(&mut self, rule: &Rule, ts: i64, age: i64) -> bool {
        let cm = self.cm;
        let cap = &cm.caps[rule.cap as usize];
        let windows: &mut [Window; 2] = &mut self.s.caps[rule.cap as usize];
        let window = ts.div_euclid(cap.per_ms);
        let mut slot: i64 = -1;
        for (i, &(k, n, _)) in windows.iter().enumerate() {
            if n != 0 && k == window {
                slot = i as i64;
            }
        }
        if slot < 0 {
            if let Some(i) = windows.iter().position(|w| w.1 == 0) {
                slot = i as i64;
            } else {
                slot = if windows[0].0 < windows[1].0 { 0 } else { 1 };
                if window < windows[slot as usize].0 {
                    return false;
                }
            }
            windows[slot as usize] = EMPTY_WINDOW;
        }
        let slot = slot as usize;
        let (_, n, s) = windows[slot];
        let h = cm.half_life_ms[cap.component];
        let unit = if age != 0 {
            pow2(-(age as f64) / h)
        } else {
            1.0
        };
        let points = rule.points;
        let count = cap.count;
        if n < count {
            self.s.values[cap.component] += if age != 0 {
                late_contribution(points, age, h)
            } else {
                points
            };
        } else {
            let old = if n > count {
                points * (count as f64 / n as f64) * s
            } else {
                points * s
            };
            let new = points * (count as f64 / (n + 1) as f64) * (s + unit);
            self.s.values[cap.component] += new - old;
        }
        self.s.caps[rule.cap as usize][slot] = (window, n + 1, s + unit);
        true
    }

    /// ``step`` of the Python core on a state of the model's layout (or a new contact).
    pub fn step(
        &mut self,
        rule: usize,
        ts: i64,
        event_id: &str,
        first_event: bool,
    ) -> Result<(), String> {
        if !first_event {
            while let Some(due) = self.s.due {
                if ts < due {
                    break;
                }
                self.fire_due()?;
            }
        }
        self.begin_instant();
        let cm = self.cm;
        self.fold(&cm.rules[rule], ts);
        let context = Instant {
            event_type: Some(rule),
            cause: Some(event_id),
            first_event,
            reason: None,
        };
        self.run_instant(&context)?;
        self.solve_due();
        Ok(())
    }

    /// ``advance`` of the Python core (the state must be of the model's layout).
    pub fn advance(&mut self, until: i64) -> Result<(), String> {
        while let Some(due) = self.s.due {
            if due > until {
                break;
            }
            self.fire_due()?;
        }
        Ok(())
    }

    /// ``contact_index``: the index of the first lifecycle's stage at the clock.
    pub fn contact_index(&self) -> f64 {
        let first = &self.cm.lifecycles[0];
        let stage = &first.stages[self.s.stages[0]];
        index_of(
            &self.s.values,
            &self.cm.weights[stage.index as usize],
            self.cm,
        )
    }

    /// ``evaluate`` of the Python core; changes the work's state (call it on a copy).
    pub fn evaluate(&mut self, at_ms: i64) -> Result<Snapshot, String> {
        if self.s.due.is_some_and(|d| d <= at_ms) {
            self.advance(at_ms)?;
            self.transitions.clear();
        }
        let at = at_ms.max(self.s.clock);
        let first_seen_ms = self.s.first;
        let last_event_ms = self.s.last;
        let active = [
            active_days_between(&self.s, at, 7),
            active_days_between(&self.s, at, 30),
            active_days_between(&self.s, at, 90),
        ];
        if at > self.s.clock {
            self.rebase(at - self.s.clock);
        }
        let cm = self.cm;
        let first = &cm.lifecycles[0];
        let weights = self.weights_of(first.stages[self.s.stages[0]].index, &self.s.stages);
        let lifecycles = cm
            .lifecycles
            .iter()
            .map(|lc| (self.s.stages[lc.position], self.s.entered[lc.position]))
            .collect();
        let mut markers = Vec::new();
        let mut customer = false;
        for m in 0..cm.markers.len() {
            if let Some(a) = self.s.marker_ms[m] {
                if self.s.markers >> m & 1 == 1 {
                    markers.push((m, a));
                    if cm.customer_marker == Some(m) {
                        customer = true;
                    }
                }
            }
        }
        Ok(Snapshot {
            stage: self.s.stages[0],
            half: weights,
            index: self.level(weights as i64),
            components: self
                .s
                .values
                .iter()
                .zip(&cm.saturation)
                .map(|(&v, &k)| score(v, k))
                .collect(),
            customer,
            first_seen_ms,
            last_event_ms,
            events_counted: self.s.counted,
            active,
            at,
            lifecycles,
            markers,
        })
    }
}

pub fn active_days_between(s: &State, at_ms: i64, days: i64) -> u32 {
    let anchor = s.last.div_euclid(MS_PER_DAY);
    let offset = anchor - at_ms.div_euclid(MS_PER_DAY);
    let start = offset.max(0);
    let stop = (offset + days).min(ACTIVITY_DAYS);
    if stop <= start {
        return 0;
    }
    let window = ((1u128 << (stop - start)) - 1) << start;
    (s.days & window).count_ones()
}

/// ``ms_to_rfc3339``: RFC 3339 in UTC with three fraction digits.
pub fn rfc3339(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339(&mut out, ms);
    String::from_utf8(out).expect("ASCII")
}

/// [`rfc3339`] appended to `out` (years 0 to 9999 written digit by digit, others formatted).
pub fn write_rfc3339(out: &mut Vec<u8>, ms: i64) {
    let day = ms.div_euclid(MS_PER_DAY);
    let rest = ms.rem_euclid(MS_PER_DAY);
    // days to civil (H. Hinnant's algorithm)
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let mut y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    if m <= 2 {
        y += 1;
    }
    let (seconds, millis) = (rest / 1000, rest % 1000);
    let (minutes, second) = (seconds / 60, seconds % 60);
    let (hour, minute) = (minutes / 60, minutes % 60);
    if !(0..=9999).contains(&y) {
        let text = format!("{y:04}-{m:02}-{d:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z");
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let digit = |v: i64| b'0' + v as u8;
    out.extend_from_slice(&[
        digit(y / 1000),
        digit(y / 100 % 10),
        digit(y / 10 % 10),
        digit(y % 10),
        b'-',
        digit(m / 10),
        digit(m % 10),
        b'-',
        digit(d / 10),
        digit(d % 10),
        b'T',
        digit(hour / 10),
        digit(hour % 10),
        b':',
        digit(minute / 10),
        digit(minute % 10),
        b':',
        digit(second / 10),
        digit(second % 10),
        b'.',
        digit(millis / 100),
        digit(millis / 10 % 10),
        digit(millis % 10),
        b'Z',
    ]);
}
