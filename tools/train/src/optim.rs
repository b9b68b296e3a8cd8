//! The optimizers of a run: AdamW for the network, and one each for the direct input paths
//! that start at zero behind a trained network (the layout map, the known-frames input), at
//! their own learning rates.

use std::collections::HashMap;

use candle_core::Var;
use candle_core::backprop::GradStore;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::trainer::TrainConfig;

/// Parameters trained at `TrainConfig::layout_lr_scale` times the learning rate.
pub(crate) const LAYOUT_PREFIX: &str = "layout.";
/// Parameters trained at `TrainConfig::context_lr_scale` times the learning rate.
pub(crate) const CONTEXT_PREFIX: &str = "context_in.";

/// AdamW for the network, and one each for the layout map and the known-frames input at
/// their own learning rates.
pub(crate) struct Optimizers {
    network: AdamW,
    layout: AdamW,
    context: AdamW,
}

impl Optimizers {
    /// Splits the variables into the layout map's (`layout.*`), the known-frames input's
    /// (`context_in.*`) and the rest.
    pub(crate) fn new(
        vars_by_name: &HashMap<String, Var>,
        config: &TrainConfig,
    ) -> anyhow::Result<Self> {
        let (mut layout_vars, mut context_vars, mut network_vars) =
            (Vec::new(), Vec::new(), Vec::new());
        for (name, var) in vars_by_name {
            if name.starts_with(LAYOUT_PREFIX) {
                layout_vars.push(var.clone());
            } else if name.starts_with(CONTEXT_PREFIX) {
                context_vars.push(var.clone());
            } else {
                network_vars.push(var.clone());
            }
        }
        let adamw = |group: Vec<Var>| {
            AdamW::new(
                group,
                ParamsAdamW {
                    lr: config.lr,
                    weight_decay: config.weight_decay,
                    ..Default::default()
                },
            )
        };
        Ok(Self {
            network: adamw(network_vars)?,
            layout: adamw(layout_vars)?,
            context: adamw(context_vars)?,
        })
    }

    /// Sets the network's rate to `lr`, the layout map's to `lr * config.layout_lr_scale` and
    /// the known-frames input's to `lr * config.context_lr_scale`.
    pub(crate) fn set_learning_rate(&mut self, lr: f64, config: &TrainConfig) {
        self.network.set_learning_rate(lr);
        self.layout.set_learning_rate(lr * config.layout_lr_scale);
        self.context.set_learning_rate(lr * config.context_lr_scale);
    }

    pub(crate) fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.network.step(grads)?;
        self.layout.step(grads)?;
        self.context.step(grads)
    }
}
