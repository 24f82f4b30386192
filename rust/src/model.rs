//! The compiled model as the kernel holds it: the JSON that
//! `engagement_index.kernel.model_blob` writes from a `CompiledModel`, read once.

use foldhash::HashMap;
use serde::Deserialize;

pub const LEVEL: u8 = 0;
pub const EVENT: u8 = 1;
pub const MARKER: u8 = 2;
pub const IN_STAGE: u8 = 3;
// 4: SINCE (the last kind: the engine's `_` arms)
pub const ALL: u8 = 5;
pub const ANY: u8 = 6;
/// Sources of a LEVEL condition besides a weighting (>= 0).
pub const CONTACT: i64 = -1;
pub const TREND: i64 = -2;

#[derive(Deserialize, Debug)]
pub struct Cond {
    pub kind: u8,
    pub source: i64,
    pub at_least: bool,
    pub level: f64,
    /// positions of the event types (in `Model::rule_types`)
    pub types: Vec<usize>,
    pub marker: usize,
    pub bit: u64,
    pub wanted: bool,
    pub ms: i64,
    pub children: Vec<Cond>,
}

#[derive(Deserialize, Debug)]
pub struct Edge {
    pub rule_id: String,
    pub to: usize,
    pub cond: Cond,
    pub event_reason: String,
    pub time_reason: String,
}

#[derive(Deserialize, Debug)]
pub struct Stage {
    pub name: String,
    pub stage_id: u32,
    pub index: i64,
    pub edges: Vec<Edge>,
}

#[derive(Deserialize, Debug)]
pub struct Initial {
    pub rule_id: String,
    pub stage: usize,
    pub cond: Cond,
}

#[derive(Deserialize, Debug)]
pub struct Lifecycle {
    pub name: String,
    pub position: usize,
    pub stages: Vec<Stage>,
    pub initial: Vec<Initial>,
    pub id_prefix: String,
}

#[derive(Deserialize, Debug)]
pub struct Cap {
    pub count: i64,
    pub per_ms: i64,
    pub component: usize,
}

#[derive(Deserialize, Debug)]
pub struct Rule {
    pub component: usize,
    pub points: f64,
    pub sets: u64,
    pub clears: u64,
    pub cap: i64,
}

#[derive(Deserialize, Debug)]
pub struct Model {
    pub version: String,
    /// `engagement_index.core.state.layout_bytes` of the model's layout
    pub layout: Vec<u8>,
    pub names: Vec<String>,
    pub half_life_ms: Vec<f64>,
    pub saturation: Vec<f64>,
    /// event types, in the order of `rules`
    pub rule_types: Vec<String>,
    pub rules: Vec<Rule>,
    pub weights: Vec<Vec<f64>>,
    pub index_names: Vec<String>,
    pub markers: Vec<String>,
    pub caps: Vec<Cap>,
    pub trend: Option<(f64, f64)>,
    pub lifecycles: Vec<Lifecycle>,
    #[serde(skip)]
    pub rule_by_type: HashMap<String, usize>,
    #[serde(skip)]
    pub stage_by_id: HashMap<u32, (usize, usize)>,
    #[serde(skip)]
    pub customer_marker: Option<usize>,
    #[serde(skip)]
    pub min_half_life: f64,
}

impl Model {
    pub fn from_json(text: &str) -> Result<Model, String> {
        let mut model: Model = serde_json::from_str(text).map_err(|e| e.to_string())?;
        model.rule_by_type = model
            .rule_types
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        for lc in &model.lifecycles {
            for (s, stage) in lc.stages.iter().enumerate() {
                model.stage_by_id.insert(stage.stage_id, (lc.position, s));
            }
        }
        model.customer_marker = model.markers.iter().position(|m| m == "customer");
        // Python's min() over the half-lives: the first of the smallest
        let mut min = f64::INFINITY;
        for &h in &model.half_life_ms {
            if h < min {
                min = h;
            }
        }
        model.min_half_life = min;
        Ok(model)
    }
}
