//! What the rewrites' tests share: models written by hand, read back, and
//! run by ONNX Runtime with tayori's operators.

use std::path::Path;

use super::proto::{Fields, Node, Value, bytes_fields, first_bytes, put_bytes_field, put_message, put_varint_field};

/// A graph's value description (`ValueInfoProto`): `name`, a tensor of
/// element type `elem`, no shape.
pub(super) fn value(name: &str, elem: u64) -> Vec<u8> {
    let mut tensor = Vec::new();
    put_varint_field(&mut tensor, 1, elem);
    let mut ty = Vec::new();
    put_bytes_field(&mut ty, 1, &tensor);
    let mut v = Vec::new();
    put_bytes_field(&mut v, 1, name.as_bytes());
    put_bytes_field(&mut v, 2, &ty);
    v
}

/// A model (IR version 8) of the graph `g` importing the default domain at
/// `opset`.
pub(super) fn model_of(g: &[u8], opset: u64) -> Vec<u8> {
    let mut m = Vec::new();
    put_varint_field(&mut m, 1, 8);
    put_message(&mut m, 8, |o| {
        put_varint_field(o, 2, opset);
        Ok(())
    })
    .expect("a model");
    put_bytes_field(&mut m, 7, g);
    m
}

/// The op of each node of `model`'s graph, in order.
pub(super) fn ops(model: &[u8]) -> Vec<String> {
    bytes_fields(bytes_fields(model, 7)[0], 1)
        .into_iter()
        .map(|n| String::from_utf8_lossy(Node::parse(n).expect("a node").op).into_owned())
        .collect()
}

/// A session of `model` on two threads, with tayori's operators.
pub(super) fn session(model: &[u8]) -> ort::Result<ort::session::Session> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let env = super::runtime(&super::runtime_path(&data)).expect("ONNX Runtime");
    let mut builder = ort::session::Session::builder(env)?.with_intra_threads(2)?.with_operators(super::operators()?)?;
    let _one_at_a_time = super::operators_lock();
    builder.commit_from_memory(model)
}

/// `model` (importing the default domain at `opset`) with `f` applied to
/// its graph's bytes.
pub(super) fn with_graph(model: &[u8], opset: u64, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut g = bytes_fields(model, 7)[0].to_vec();
    f(&mut g);
    model_of(&g, opset)
}

/// `model` (importing the default domain at `opset`) with its node named
/// `name` replaced by the nodes `node` writes.
pub(super) fn replace_node(model: &[u8], opset: u64, name: &str, node: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    with_graph(model, opset, |g| {
        let mut out = Vec::new();
        for f in Fields(g) {
            let f = f.expect("a field");
            match f.value {
                Value::Bytes(n) if f.number == 1 && first_bytes(n, 3).expect("a node") == Some(name.as_bytes()) => {
                    node(&mut out)
                }
                _ => out.extend_from_slice(f.raw),
            }
        }
        *g = out;
    })
}
