//! Time of one attention block in a training step on 256 cells, forward and
//! backward: through libtorch's autograd against on the host
//! ([mrvi_core::model::attention_step]), for the sample block (u: 10 -> 30, with
//! the direct path and the hidden term) and the decoder's (z: 30 -> 30); then the
//! host step's phases.
//!   THREADS=2 cargo run --release --example attention_step_probe -p mrvi-core
use mrvi_core::model::attention::{AttentionBlock, HIDDEN, TOKENS};
use mrvi_core::model::attention_step::BlockStep;
use mrvi_core::model::host_gradients::HostGradients;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    let threads: i32 = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    println!("{threads} thread(s), ms per step (forward + backward)");
    for (name, d_in, d_out, extras) in [("sample block", 10, 30, true), ("decoder block", 30, 30, false)] {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut block = AttentionBlock::new(vs.root() / "a", d_in, d_out);
        if extras {
            block.direct = Some(AttentionBlock::direct_path(vs.root() / "a"));
        }
        for (_, mut v) in vs.variables() {
            let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.5)));
        }
        let n = 256;
        let x = Tensor::randn([n, d_in], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let table = Tensor::randn([64, TOKENS], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let terms = Tensor::randn([64, HIDDEN], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let rows = Tensor::randint(64, [n], (Kind::Int64, Device::Cpu));
        let weights = Tensor::randn([n, d_out], (Kind::Float, Device::Cpu));
        let reps = 300;
        let time = |f: &dyn Fn()| {
            for _ in 0..20 {
                f();
            }
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64 * 1e3
        };
        let term = |extras: bool| extras.then(|| terms.index_select(0, &rows));
        let autograd = time(&|| {
            let y = block.forward_with(&x, &table.index_select(0, &rows), term(extras).as_ref());
            (y * &weights).sum(Kind::Float).backward();
        });
        let host = time(&|| {
            let step = BlockStep::new(&block);
            let (_, tape) = step.forward(&x.detach(), &table.index_select(0, &rows), term(extras).as_ref());
            let g = step.backward(&tape, &weights);
            let mut sink = HostGradients::default();
            step.add_gradients(&tape, &g, &mut sink);
            sink.add_term(x.reshape([-1]).dot(&g.input.reshape([-1])));
            sink.into_surrogate().expect("gradients").backward();
        });
        // the host step's phases (the context a leaf, so that its surrogate can run again)
        let context = table.index_select(0, &rows).detach().set_requires_grad(true);
        let step = BlockStep::new(&block);
        let (_, tape) = step.forward(&x.detach(), &context, None);
        let g = step.backward(&tape, &weights);
        let t_new = time(&|| drop(BlockStep::new(&block)));
        let t_forward = time(&|| drop(step.forward(&x.detach(), &context, None)));
        let t_backward = time(&|| drop(step.backward(&tape, &weights)));
        let t_gradients = time(&|| {
            let mut sink = HostGradients::default();
            step.add_gradients(&tape, &g, &mut sink);
            sink.into_surrogate().expect("gradients").backward();
        });
        println!("  host phases: closed form {t_new:.3}, forward {t_forward:.3}, backward {t_backward:.3}, parameter gradients {t_gradients:.3} ms");
        println!("{name}: autograd {autograd:.3} ms, host {host:.3} ms ({:.2}x)", autograd / host);
    }
}
