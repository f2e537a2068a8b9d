//! Weights as safetensors bytes (a name -> tensor map): what the R object keeps,
//! so that saveRDS()/readRDS() carry the model and the native one is rebuilt.

use crate::error::{try_collect, Error, Result};
use crate::model::config::{ModelConfig, Prior};
use crate::model::MrviModel;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// A fitted model rebuilt on `device` from its configuration JSON and weights.
/// A configuration field or a weight this version does not know means a fit
/// made by a newer version: an `Error::Version`, never a model that silently
/// leaves that part out.
pub fn model_from_bytes(config_json: &str, weights: &[u8], device: Device) -> Result<MrviModel> {
    let config: ModelConfig = serde_json::from_str(config_json).map_err(|e| match e.classify() {
        // well-formed JSON that is not a configuration of this version
        serde_json::error::Category::Data => {
            // serde's text goes on to list every field this version knows
            let what = e.to_string();
            let what = what.split(", expected").next().unwrap_or(&what).to_string();
            Error::Version(format!("its model configuration has {what}"))
        }
        _ => Error::from(e),
    })?;
    if let Some(problem) = config.problem() {
        return Err(Error::Io(format!("its model configuration has {problem}")));
    }
    if let Some(problem) = size_beyond_weights(&config, &SafeTensors::deserialize(weights)?) {
        return Err(Error::Io(format!("its model configuration has {problem}")));
    }
    let mut model = MrviModel::new(config, device);
    load_bytes_into(&mut model.vs, weights)?;
    Ok(model)
}

/// A size of `config` that no dimension of the weights reaches, or None. Every
/// size is the length of some parameter's axis, so a larger one is damage; it
/// is refused before the model is built, whose tensors (products of two sizes)
/// would otherwise be allocated at that size first.
fn size_beyond_weights(config: &ModelConfig, weights: &SafeTensors) -> Option<String> {
    let widest = weights.tensors().iter().flat_map(|(_, view)| view.shape().to_vec()).max().unwrap_or(0) as i64;
    // (the continuous covariates and the mixture's components are axes too, where the model has them)
    let optional = [
        ("n_continuous", config.n_continuous),
        ("mixture components", if config.prior == Prior::Mog { config.n_components() } else { 0 }),
    ];
    let (name, v) = config.sizes().into_iter().chain(optional).find(|&(_, v)| v > widest)?;
    Some(format!("{name} = {v}, beyond every dimension of its weights (the widest is {widest})"))
}

pub fn varstore_to_bytes(vs: &VarStore) -> Result<Vec<u8>> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tensors_to_bytes(vars.iter().map(|(n, t)| (n.clone(), t)), None)
}

/// Named float tensors (any device) as safetensors bytes, with optional metadata.
pub fn tensors_to_bytes<'a>(
    tensors: impl Iterator<Item = (String, &'a Tensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    named_to_bytes(&tensors_to_named(tensors)?, metadata)
}

/// Named float tensors as (name, shape, float32 little-endian bytes), on the CPU.
pub fn tensors_to_named<'a>(tensors: impl Iterator<Item = (String, &'a Tensor)>) -> Result<Vec<Named>> {
    let mut named: Vec<Named> = Vec::new();
    for (name, t) in tensors {
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let n = t.numel();
        let mut data = vec![0f32; n];
        t.f_copy_data(&mut data, n)?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        named.push((name, shape, bytes));
    }
    Ok(named)
}

/// A tensor as (name, shape, float32 little-endian bytes).
pub type Named = (String, Vec<usize>, Vec<u8>);

/// [tensors_to_named]'s tensors as safetensors bytes, with optional metadata.
pub fn named_to_bytes(named: &[Named], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = named
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, &metadata)?)
}

/// Copy weights into an existing VarStore of the same architecture; every
/// variable must be present with the same shape, and a tensor the VarStore does
/// not have is an `Error::Version` (weights of a newer model).
pub fn load_bytes_into(vs: &mut VarStore, bytes: &[u8]) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)?;
    let mut vars = vs.variables();
    if let Some(name) = st.names().into_iter().find(|n| !vars.contains_key(n.as_str())) {
        return Err(Error::Version(format!("its weights hold the tensor '{name}', which this version's model does not have")));
    }
    for (name, var) in vars.iter_mut() {
        copy_tensor_into(&st, name, var)?;
    }
    Ok(())
}

/// Copy the float32 tensor `name` of `st` into `var` (same shape, any device).
pub fn copy_tensor_into(st: &SafeTensors, name: &str, var: &mut Tensor) -> Result<()> {
    let view = st.tensor(name).map_err(|_| Error::Io(format!("weights lack the tensor '{name}'")))?;
    if view.dtype() != Dtype::F32 {
        return Err(Error::Io(format!("tensor '{name}' is not float32")));
    }
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    if shape != var.size() {
        return Err(Error::Io(format!("tensor '{name}' has shape {shape:?}, the model expects {:?}", var.size())));
    }
    let raw = view.data();
    let data = try_collect(raw.len() / 4, raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])), "the weights")?;
    // (training never leaves them: NaN or infinite weights are damage, which
    // would turn every result of the model into NaN)
    if let Some(k) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Io(format!("tensor '{name}' holds a non-finite value (at position {k})")));
    }
    let src = Tensor::from_slice(&data).reshape(&shape).to_device(var.device());
    tch::no_grad(|| var.copy_(&src));
    Ok(())
}

/// A 128-bit checksum of the weights' bytes, as 32 hex digits: stored in the fit
/// when it is made, compared when a model is rebuilt (damaged bytes), and the key
/// of the R-side model cache (copies of a fit with other weights never share a
/// model). Two lanes of xor-multiply-rotate over 8-byte words: each step is a
/// bijection of the state, so a change in any one word always changes the result.
/// Not cryptographic; about 2 GB/s.
pub fn weights_hash(bytes: &[u8]) -> String {
    let mut h = Hash128::new(bytes.len() as u64);
    feed_words(&mut h, bytes);
    h.finish()
}

/// Feed `bytes` to `h`: their length, then 8-byte words (the last zero-padded),
/// so that a sequence of byte strings has one reading only.
pub fn hash_bytes(h: &mut Hash128, bytes: &[u8]) {
    h.word(bytes.len() as u64);
    feed_words(h, bytes);
}

/// `bytes` as 8-byte little-endian words, the last zero-padded.
fn feed_words(h: &mut Hash128, bytes: &[u8]) {
    let mut words = bytes.chunks_exact(8);
    for c in &mut words {
        h.word(u64::from_le_bytes(c.try_into().unwrap()));
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h.word(u64::from_le_bytes(tail));
}

/// The state of [weights_hash], fed one 8-byte word at a time: also used to
/// fingerprint data that is never in one slice (a checkpoint's counts).
pub struct Hash128 {
    a: u64,
    b: u64,
}

impl Hash128 {
    pub fn new(seed: u64) -> Self {
        Self { a: 0x243F_6A88_85A3_08D3u64 ^ seed, b: 0x1319_8A2E_0370_7344u64 }
    }

    pub fn word(&mut self, w: u64) {
        const P1: u64 = 0x9E37_79B9_7F4A_7C15;
        const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
        self.a = (self.a ^ w).wrapping_mul(P1).rotate_left(31);
        self.b = (self.b.rotate_left(17) ^ w).wrapping_mul(P2);
    }

    /// 32 hex digits.
    pub fn finish(self) -> String {
        let fmix = |mut h: u64| {
            h ^= h >> 33;
            h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            h ^= h >> 33;
            h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
            h ^ (h >> 33)
        };
        let (a, b) = (self.a, self.b);
        format!("{:016x}{:016x}", fmix(a ^ b.rotate_left(32)), fmix(b ^ a))
    }
}

#[cfg(test)]
mod tests {
    use super::weights_hash;

    #[test]
    fn the_hash_sees_every_flipped_byte() {
        let bytes: Vec<u8> = (0..1003u32).map(|i| (i * 7 % 251) as u8).collect();
        let h = weights_hash(&bytes);
        assert_eq!(h.len(), 32);
        assert_eq!(h, weights_hash(&bytes.clone()));
        for k in [0, 1, 500, 999, 1002] {
            let mut d = bytes.clone();
            d[k] ^= 0x10;
            assert_ne!(weights_hash(&d), h, "byte {k}");
        }
        assert_ne!(weights_hash(&bytes[..1002]), h);
        assert_ne!(weights_hash(&[]), weights_hash(&[0]));
    }
}
