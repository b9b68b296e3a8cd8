//! Exponential moving average of the weights, the copy that ships (sampling from EMA weights is
//! markedly better than from the raw weights of a short, noisy run).

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};

/// EMA shadows of a set of named variables.
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    shadows: Vec<(String, Var, Tensor)>,
}

impl Ema {
    /// Starts the average at the variables' current values.
    pub fn new(vars: &HashMap<String, Var>, decay: f64) -> Result<Self> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let shadows = names
            .into_iter()
            .map(|name| {
                let var = vars[name].clone();
                let copy = var.as_tensor().copy()?;
                Ok((name.clone(), var, copy))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, shadows })
    }

    /// Replaces the shadows (when resuming from saved EMA weights).
    pub fn load(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (name, _, shadow) in &mut self.shadows {
            if let Some(t) = saved.get(name) {
                *shadow = t.copy()?;
            }
        }
        Ok(())
    }

    /// One update after optimizer step `step` (warm-up: decay `min(d, (1 + n) / (10 + n))`).
    pub fn update(&mut self, step: usize) -> Result<()> {
        let n = step as f64;
        let decay = self.decay.min((1.0 + n) / (10.0 + n));
        for (_, var, shadow) in &mut self.shadows {
            *shadow = ((&*shadow * decay)? + (var.as_tensor().detach() * (1.0 - decay))?)?;
        }
        Ok(())
    }

    /// The averaged weights by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.shadows
            .iter()
            .map(|(name, _, shadow)| (name.clone(), shadow.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_average_follows_the_weights_slowly() -> Result<()> {
        let var = Var::new(&[0f32], &Device::Cpu)?;
        let vars = HashMap::from([("w".to_string(), var.clone())]);
        let mut ema = Ema::new(&vars, 0.9)?;
        var.set(&Tensor::new(&[1f32], &Device::Cpu)?)?;
        ema.update(1000)?;
        let v = ema.tensors()["w"].to_vec1::<f32>()?[0];
        assert!((v - 0.1).abs() < 1e-6, "{v}");
        Ok(())
    }
}
