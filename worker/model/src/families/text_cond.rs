//! The conditioning the mel and Stable Audio families keep in a state, by name: a cross-attention
//! sequence `text_states` [2, L, D], its key mask `text_mask` [2, L] (1: attend) and a global
//! vector `global_cond` [2, G], row 0 the unconditional half of guidance, row 1 the prompt's (the
//! names `tutti-denoise-state/1` checkpoints used, so they load unchanged).

use std::collections::BTreeMap;

use tch::Tensor;

use crate::state::DenoiseState;
use crate::{ModelError, Result};

const STATES: &str = "text_states";
const MASK: &str = "text_mask";
const GLOBAL: &str = "global_cond";

/// A state's text conditioning.
pub(crate) struct TextCond<'a> {
    pub states: &'a Tensor,
    pub mask: &'a Tensor,
    pub global: &'a Tensor,
}

/// The named tensors of a state's conditioning (all f32).
pub(crate) fn named(states: Tensor, mask: Tensor, global: Tensor) -> BTreeMap<String, Tensor> {
    BTreeMap::from([
        (STATES.to_string(), states),
        (MASK.to_string(), mask),
        (GLOBAL.to_string(), global),
    ])
}

/// The state's text conditioning, its shapes checked.
pub(crate) fn get(s: &DenoiseState) -> Result<TextCond<'_>> {
    let c = TextCond {
        states: s.cond(STATES)?,
        mask: s.cond(MASK)?,
        global: s.cond(GLOBAL)?,
    };
    if c.states.dim() != 3 || c.states.size()[0] != 2 || c.mask.size() != c.states.size()[..2] {
        return Err(ModelError::Input(
            "text states and mask must be [2, L, D] and [2, L]".into(),
        ));
    }
    if c.global.dim() != 2 || c.global.size()[0] != 2 {
        return Err(ModelError::Input(
            "global conditioning must be [2, G]".into(),
        ));
    }
    Ok(c)
}

/// The state's text length `L` (0 when it has none: the forward then says why).
pub(crate) fn tokens(s: &DenoiseState) -> i64 {
    s.cond(STATES)
        .map_or(0, |t| t.size().get(1).copied().unwrap_or(0))
}
