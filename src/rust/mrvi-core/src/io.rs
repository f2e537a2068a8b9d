//! Weights as safetensors bytes (a name -> tensor map): what the R object keeps,
//! so that saveRDS()/readRDS() carry the model and the native one is rebuilt.

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub fn varstore_to_bytes(vs: &VarStore) -> Result<Vec<u8>> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let n = t.numel();
        let mut data = vec![0f32; n];
        t.f_copy_data(&mut data, n)?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        named.push((name, shape, bytes));
    }
    let views: Vec<(String, TensorView)> = named
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, &None)?)
}

/// Copy weights into an existing VarStore of the same architecture; every
/// variable must be present with the same shape.
pub fn load_bytes_into(vs: &mut VarStore, bytes: &[u8]) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)?;
    let mut vars = vs.variables();
    for (name, var) in vars.iter_mut() {
        let view = st.tensor(name).map_err(|_| Error::Io(format!("weights lack the tensor '{name}'")))?;
        if view.dtype() != Dtype::F32 {
            return Err(Error::Io(format!("tensor '{name}' is not float32")));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != var.size() {
            return Err(Error::Io(format!("tensor '{name}' has shape {shape:?}, the model expects {:?}", var.size())));
        }
        let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let src = Tensor::from_slice(&data).reshape(&shape).to_device(var.device());
        tch::no_grad(|| var.copy_(&src));
    }
    Ok(())
}
